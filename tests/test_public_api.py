"""The Python package's public surface is small and pinned (runtime/__init__.py): people program moonlet in
Lua; Python code embeds it through Host, and host functions come from runtime.hostfn."""

from __future__ import annotations

import runtime
from runtime import hostfn


def test_the_public_surface_is_pinned() -> None:
    assert sorted(runtime.__all__) == ["AppLoadError", "Host", "Limits", "MoonletError", "__version__"]
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None
    assert issubclass(runtime.AppLoadError, runtime.MoonletError)
    assert callable(hostfn.host_function)
    assert (runtime.__file__ or "").endswith("__init__.py")
    assert (runtime.__doc__ or "").count("tests/test_public_api.py") == 1
