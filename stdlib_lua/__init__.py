"""The moonlet Lua standard library (``moonlet/*.lua``); a Python package only so that it installs."""
