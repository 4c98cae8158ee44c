"""The Lua side of the bridge: the sandboxed state, the stdlib on disk. The only package that imports lupa."""
