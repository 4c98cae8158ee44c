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


def test_chat_across_two_nodes_through_redis(run_app, redis_server: int) -> None:  # type: ignore[no-untyped-def]
    room = ["--redis-port", str(redis_server), "--room", "test-room"]
    node_a = run_app("apps/chat.lua", "--port", "0", *room)
    node_b = run_app("apps/chat.lua", "--port", "0", *room)
    ann = node_a.connect()
    assert ann.line() == b"WELCOME, your name?"
    ann.send(b"ann\n")
    assert ann.line() == b"* ann joined (0 here before you)"
    bob = node_b.connect()
    assert bob.line() == b"WELCOME, your name?"
    bob.send(b"bob\n")
    assert bob.line() == b"* ann joined (0 here before you)"  # the history, from Redis
    assert bob.line() == b"* bob joined (0 here before you)"
    assert ann.line() == b"* bob joined (0 here before you)"  # across nodes, through pub/sub
    ann.send(b"hello from a\n")
    assert bob.line() == b"<ann> hello from a"
    assert ann.line() == b"<ann> hello from a"
    bob.send(b"/quit\n")
    assert ann.line() == b"* bob left"
