"""What a parked coroutine costs by how deep it waits, on each engine: the number behind idle connections.

    python bench/coroutine_depth.py

10,000 coroutines each suspended in `coroutine.yield` under DEPTH Lua frames of ten slots, in a bare state of
each engine; bytes of Lua heap per coroutine after two full collections. The steps are the stack doubling:
a C function (the yield) reserves 20 slots above its caller, so a coroutine grows past its first stack (40
slots and 45 on Lua 5.4, 47 on LuaJIT) as soon as a couple of frames sit under its wait, and Lua never
shrinks a stack that is a third or more in use. Lua 5.4 adds a call record per frame; LuaJIT keeps its
frames in the stack.
"""

from __future__ import annotations

import importlib

PROBE = """function(depth)
  local yield = coroutine.yield
  local function nest(d)
    if d == 0 then return yield() end
    local a, b, c, e, f, g, h, i = 1, 2, 3, 4, 5, 6, 7, 8  -- a frame of ten slots
    local r = nest(d - 1)
    return r, a, b, c, e, f, g, h, i
  end
  local cos = {}
  collectgarbage() collectgarbage()
  local before = collectgarbage("count")
  for k = 1, 10000 do
    local co = coroutine.create(nest)
    coroutine.resume(co, depth)
    cos[k] = co
  end
  collectgarbage() collectgarbage()
  return (collectgarbage("count") - before) * 1024 / #cos
end"""


def main() -> None:
    depths = range(9)
    print("frames under the wait: " + " ".join(f"{d:>6}" for d in depths))
    for name in ("lua54", "luajit21"):
        lua = importlib.import_module(f"lupa.{name}").LuaRuntime(encoding=None)
        probe = lua.eval(PROBE)
        print(f"{name:<8} bytes each:     " + " ".join(f"{round(probe(d)):>6,}" for d in depths))


if __name__ == "__main__":
    main()
