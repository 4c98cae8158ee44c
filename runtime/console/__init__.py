"""The live console: the server side (``server``: a Lua REPL inside the running server, its commands), the
client (``client``: ``moonlet repl``), and where their sockets live (``files``)."""
