"""moonlet.redis against a real redis-server started by the test."""

from __future__ import annotations

from pathlib import Path

from conftest import run_script


def test_commands_pipelines_errors_and_pubsub(tmp_path: Path, redis_server: int) -> None:
    proc = run_script(
        tmp_path,
        """
        local redis = require "moonlet.redis"
        local r = redis.new { port = tonumber(arg[1]) }
        print(r:call("SET", "greeting", "hello\\0world"), #r:call("GET", "greeting"))
        print(r:call("GET", "missing") == redis.null, r:call("INCRBY", "n", 41), r:call("INCR", "n"))
        print(r:call("NOSUCH"))
        local replies = r:pipeline {
          { "INCR", "p" }, { "INCR", "p" }, { "LPUSH", "greeting", "x" }, { "GET", "p" },
        }
        print(replies[1], replies[2], replies[3].err:match("^WRONGTYPE") ~= nil, replies[4])
        local sub = assert(r:subscribe({ "room", "other" }))
        print(r:call("PUBLISH", "room", "hi there"))
        local msg = sub:get(2)
        print(msg.channel, msg.data)
        print(sub:get(0.05))
        sub:close()
        -- many tasks at once share a bounded pool
        local task = require "moonlet.task"
        local tasks = {}
        for i = 1, 50 do tasks[i] = spawn(function() return r:call("INCR", "shared") end) end
        local ok, results = task.wait_all(tasks)
        print(ok, r:call("GET", "shared"))
        print(redis.new({ port = 1 }):call("PING"))
        """,
        str(redis_server),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [
        "OK\t11",
        "true\t41\t42",
        "nil\tERR unknown command 'NOSUCH', with args beginning with: ",
        "1\t2\ttrue\t2",
        "1",
        "room\thi there",
        "nil\ttimeout",
        "true\t50",
        "nil\tconnection refused",
    ]
