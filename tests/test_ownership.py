"""Connections belong to the task that opened them; idle pooled connections close when they should."""

from __future__ import annotations

from pathlib import Path

from conftest import run_script

SCRIPT = """
local net, task = require "moonlet.net", require "moonlet.task"
local closed = 0
local upstream = assert(net.listen { port = 0, handler = function(conn)
  local line = conn:readline()
  if line == "half" then conn:shutdown() end  -- a peer that closes its side while we keep the connection
  while conn:read() do end
  closed = closed + 1
end })
local port = upstream.port
local function settle(want)
  for _ = 1, 100 do if closed >= want then return end sleep(0.01) end
end

-- 1. fifty tasks wait in readline on connections they opened; cancelling them closes those connections
local tasks = {}
for i = 1, 50 do
  tasks[i] = task.spawn(function()
    local c = assert(net.connect("127.0.0.1", port))
    c:write("hello\\n")
    return c:readline()
  end)
end
sleep(0.1)
for _, t in ipairs(tasks) do t:cancel() end
settle(50)
print("cancelled", closed)

-- 2. a task that returns without closing its connection: closed with it
task.spawn(function() local c = assert(net.connect("127.0.0.1", port)) c:write("x\\n") end):wait()
settle(51)
print("returned", closed)

-- 3. handed to another task: it lives as long as that one
local keeper = task.spawn(function() sleep(0.3) end)
task.spawn(function()
  local c = assert(net.connect("127.0.0.1", port))
  c:write("y\\n")
  assert(c:transfer(keeper))
end):wait()
sleep(0.1)
print("transferred, keeper alive", closed)
keeper:wait()
settle(52)
print("keeper ended", closed)

-- 4. an idle pooled connection whose peer closes is closed at once, not at its next use
task.spawn(function()
  local c = assert(net.connect("127.0.0.1", port))
  c:write("half\\n")
  sleep(0.05)
  assert(c:setkeepalive(60))
end):wait()
settle(53)
print("peer closed the pooled one", closed)

-- 5. and one idle past its idle timeout is closed by then
task.spawn(function()
  local c = assert(net.connect("127.0.0.1", port))
  c:write("z\\n")
  assert(c:setkeepalive(0.2))
end):wait()
sleep(0.1)
print("pooled, not yet expired", closed)
settle(54)
print("pooled, expired", closed)

-- 6. a bounded pool gets back the room of connections closed with their tasks
local done = 0
for _ = 1, 3 do
  local t = task.spawn(function()
    local c = assert(net.connect("127.0.0.1", port, { pool_size = 2, pool_timeout = 0.5 }))
    c:write("w\\n")
    sleep(10)
  end)
  sleep(0.05)
  t:cancel()
  done = done + 1
end
print("bounded pool reused", done)
upstream:close()
"""


def test_connections_close_with_their_task_and_idle_pooled_ones_when_they_should(tmp_path: Path) -> None:
    done = run_script(tmp_path, SCRIPT, timeout=30)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert done.stdout.decode().splitlines() == [
        "cancelled\t50",
        "returned\t51",
        "transferred, keeper alive\t51",
        "keeper ended\t52",
        "peer closed the pooled one\t53",
        "pooled, not yet expired\t53",
        "pooled, expired\t54",
        "bounded pool reused\t3",
    ]
