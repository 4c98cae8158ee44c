"""apps/memcache.lua with real memcached clients (pymemcache; libmemcached's memccapable), and against a real
memcached 1.6: the same seeded random command sequences to both, the replies compared byte for byte."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from conftest import APPS, ROOT, free_port, wait_listening

pytestmark = pytest.mark.lua54("apps/memcache.lua declares Lua 5.4 (64-bit unsigned counters)")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (tests/run.sh installs memcached and libmemcached-tools)")
    return path


@pytest.fixture
def memcached() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [need("memcached"), "-p", str(port), "-U", "0", "-t", "1", "-l", "127.0.0.1", "-u", "root"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, "memcached")
    yield port
    proc.terminate()
    proc.wait(10)


def test_libmemcacheds_own_protocol_checks_pass(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app(APPS / "memcache.lua", "--port", "0")
    done = subprocess.run(
        [need("memccapable"), "-h", "127.0.0.1", "-p", str(server.port), "-a", "-t", "5"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "All tests passed" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("[pass]") >= 27


def test_pymemcache_sees_a_memcached(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app(APPS / "memcache.lua", "--port", "0")
    # (no_delay: pymemcache sends set with noreply; without it the next small command waits for the ACK of
    # the set, which the kernel delays 40 ms when no reply carries it: memcached alike)
    c = Client(("127.0.0.1", server.port), timeout=5, no_delay=True)
    assert c.set("greeting", b"hello", expire=60, flags=7)
    assert c.get("greeting") == b"hello"
    assert c.get_many(["greeting", "missing"]) == {"greeting": b"hello"}
    value, cas = c.gets("greeting")
    assert value == b"hello"
    assert c.cas("greeting", b"changed", cas) is True
    assert c.cas("greeting", b"again", cas) is False  # EXISTS: someone changed it since
    assert c.add("greeting", b"x", noreply=False) is False
    assert c.replace("nobody", b"x", noreply=False) is False
    assert c.append("greeting", b"!") and c.prepend("greeting", b"<")
    assert c.get("greeting") == b"<changed!"
    c.set("n", b"18446744073709551615")
    assert c.incr("n", 1) == 0  # 64-bit unsigned: wraps
    assert c.decr("n", 5) == 0  # and stops at 0
    c.set("m", b"10")
    assert c.decr("m", 1) == 9 and c.get("m") == b"9 "  # memcached keeps the length, padding with spaces
    assert c.incr("missing", 1) is None
    assert c.touch("greeting", 100, noreply=False) is True
    assert c.raw_command(b"gat 100 greeting", b"END").startswith(b"VALUE greeting 0 9\r\n<changed!\r\n")
    assert c.delete("greeting", noreply=False) is True
    assert c.delete("greeting", noreply=False) is False
    assert c.set("bin", bytes(range(256)))
    assert c.get("bin") == bytes(range(256))
    with pytest.raises(MemcacheServerError, match="object too large for cache"):
        c.set("big", b"x" * (1024 * 1024 + 1), noreply=False)
    assert c.get("m") == b"9 "  # the refused item's bytes were read and dropped: the stream goes on
    stats = c.stats()
    assert stats[b"curr_items"] >= 3 and stats[b"get_hits"] > 0 and b"evictions" in stats
    assert c.version().startswith(b"1.6")
    c.set("short", b"x", expire=-1)  # negative: expired at once
    assert c.get("short") is None
    c.flush_all()
    assert c.get("m") is None
    c.close()


def test_past_the_memory_limit_the_least_recently_used_go(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app(APPS / "memcache.lua", "--port", "0", "--memory", "1")
    c = Client(("127.0.0.1", server.port), timeout=5, no_delay=True)
    c.set("keep", b"k" * 1000)
    for i in range(200):  # 200 x 10 KB into 1 MiB
        c.set(f"item{i}", b"v" * 10_000)
        assert c.get("keep") == b"k" * 1000  # used all along: never the least recently used
    assert c.get("item0") is None and c.get("item199") == b"v" * 10_000
    stats = c.stats()
    assert stats[b"evictions"] > 0 and stats[b"bytes"] <= 1024 * 1024
    c.close()


KEYS = [b"a", b"b", b"num", b"k:1", b"\x01k\x7f", b"x" * 250, b"y" * 251]
NUMBERS = [
    b"0", b"1", b"10", b"18446744073709551615", b"18446744073709551616", b"-1", b"+5", b"-0", b"abc", b" 3",
]  # fmt: skip
EXPTIMES = [
    b"0", b"-1", b"100", b"2592000", b"2592001", b"4102444800", b"x", b"4294967296", b"-9223372036854775808",
]  # fmt: skip
FLAGS = [b"0", b"1", b"4294967295", b"4294967296", b"18446744073709551615", b"-1", b"x", b"+7"]


def command(rng: random.Random) -> bytes:
    key = rng.choice(KEYS)
    roll = rng.randrange(100)
    noreply = b" noreply" if rng.random() < 0.15 else b""
    if roll < 35:
        cmd = rng.choice([b"set", b"add", b"replace", b"append", b"prepend", b"cas"])
        data = rng.choice([rng.choice(NUMBERS), bytes(rng.randrange(256) for _ in range(rng.randrange(8)))])
        declared = len(data) - rng.choice([0, 0, 0, 0, 1])  # (shorter: a bad data chunk; never longer)
        head = b"%s %s %s %s %d" % (cmd, key, rng.choice(FLAGS), rng.choice(EXPTIMES), declared)
        if cmd == b"cas":
            head += b" " + rng.choice([b"1", b"2", b"3", b"5", b"999", b"x"])
        return head + noreply + b"\r\n" + data + b"\r\n"
    if roll < 55:
        # (no key over 250 bytes here: memcached 1.6 then also drops the answers of the commands before it in
        # the same read, a quirk not copied; see the README and the test below)
        keys = b" ".join(rng.choice(KEYS[:-1]) for _ in range(rng.randrange(4)))
        cmd = rng.choice([b"get", b"gets", b"gat", b"gats"])
        if cmd.startswith(b"gat"):
            cmd += b" " + rng.choice(EXPTIMES)
        return cmd + (b" " + keys if keys else b"") + b"\r\n"
    if roll < 70:
        return b"%s %s %s%s\r\n" % (rng.choice([b"incr", b"decr"]), key, rng.choice(NUMBERS), noreply)
    if roll < 78:
        return b"delete %s%s%s\r\n" % (key, rng.choice([b"", b"", b" 0", b" 5"]), noreply)
    if roll < 85:
        return b"touch %s %s%s\r\n" % (key, rng.choice(EXPTIMES), noreply)
    if roll < 87:
        return b"flush_all%s%s\r\n" % (rng.choice([b"", b" 0", b" x"]), noreply)
    if roll < 90:
        return rng.choice([b"verbosity 1\r\n", b"verbosity\r\n", b"verbosity 1 noreply\r\n"])
    return rng.choice([b"bogus\r\n", b"get\r\n", b"\r\n", b"set a\r\n", b"incr\r\n", b"delete a b c d\r\n"])


def exchange(sock: socket.socket, wire: bytes, marker: bytes) -> bytes:
    """Send ``wire`` and a final ``get`` of a key only the marker item has; the bytes before its answer."""
    sock.sendall(wire + b"set __m 0 0 %d noreply\r\n%s\r\nget __m\r\n" % (len(marker), marker))
    end = b"VALUE __m 0 %d\r\n%s\r\nEND\r\n" % (len(marker), marker)
    got = b""
    while not got.endswith(end):
        chunk = sock.recv(1 << 16)
        assert chunk, got[-300:]
        got += chunk
    return got[: -len(end)]


def test_a_get_with_a_key_over_250_bytes_is_refused_alone(run_app, memcached: int) -> None:  # type: ignore[no-untyped-def]
    server = run_app(APPS / "memcache.lua", "--port", "0")
    for port in (server.port, memcached):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            got = exchange(s, b"get " + b"k" * 251 + b"\r\n", b"m")
            assert got == b"CLIENT_ERROR bad command line format\r\n", (port, got)
    # here the commands around it are answered
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        got = exchange(s, b"get a\r\nget " + b"k" * 251 + b"\r\nget a\r\n", b"m")
        assert got == b"END\r\nCLIENT_ERROR bad command line format\r\nEND\r\n"


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("MC_SEEDS", "1 2 3").split()])
def test_memcache_answers_byte_for_byte_as_memcached(run_app, memcached: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    server = run_app(APPS / "memcache.lua", "--port", "0")
    ours = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    theirs = socket.create_connection(("127.0.0.1", memcached), timeout=10)
    rng = random.Random(seed)
    for i in range(80):
        wire = b"".join(command(rng) for _ in range(rng.randrange(1, 12)))
        marker = b"marker-%d-%d" % (seed, i)
        a, b = exchange(ours, wire, marker), exchange(theirs, wire, marker)
        assert a == b, f"seed {seed}, batch {i}: {wire!r}\n moonlet:   {a!r}\n memcached: {b!r}"
    ours.close()
    theirs.close()


def lua_heap(server) -> int:  # type: ignore[no-untyped-def]
    """The server's live Lua heap in bytes (after a full collection), through its console."""
    code = 'collectgarbage() collectgarbage() return collectgarbage("count")'
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "repl", "-e", code, str(server.proc.pid)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return int(float(done.stdout) * 1024)


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_multi_get_of_big_items_streams_and_memory_counts_what_items_cost(run_app) -> None:  # type: ignore[no-untyped-def]
    server = run_app(APPS / "memcache.lua", "--port", "0", "--memory", "16")
    c = Client(("127.0.0.1", server.port), timeout=10, no_delay=True)
    big = b"b" * (1024 * 1024 - 100)
    assert c.set("big", big, noreply=False)
    before = rss(server.proc.pid)
    reader = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    reader.sendall(b"get" + b" big" * 100 + b"\r\n")  # 100 MiB of reply, a 205-byte line
    got, want = 0, 100 * (len(big) + 2 + len(b"VALUE big 0 %d\r\n" % len(big))) + len(b"END\r\n")
    grown = 0
    while got < want:  # read slowly: the server must hold at most a little of it
        chunk = reader.recv(1 << 20)
        assert chunk
        got += len(chunk)
        grown = max(grown, rss(server.proc.pid) - before)
        assert c.get("big") == big  # another client is served meanwhile
    reader.close()
    assert got == want
    assert grown < 40 * 1024 * 1024, grown  # (the whole reply at once: 200 MiB)
    stream_grown = grown
    # fill the cache with small items: --memory bounds what they really cost in the Lua heap
    c.delete("big")
    base = lua_heap(server)
    value = b"v" * 100
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        for batch in range(40):
            s.sendall(
                b"".join(
                    b"set k%d 0 0 100 noreply\r\n%s\r\n" % (batch * 5000 + i, value) for i in range(5000)
                )
            )
        assert exchange(s, b"", b"m") == b""
    items = int(c.stats()[b"curr_items"])
    grown = lua_heap(server) - base
    c.close()
    print(f"memcache: {items} items, Lua heap grew {grown} bytes, stream grew RSS {stream_grown}")
    assert 30_000 < items < 200_000, items  # evicted down to the limit
    # (counting 50 bytes an item, as before: 106,905 items, 66 MiB of heap; the multi-get grew RSS by 304 MiB)
    assert 16 * 1024 * 1024 * 0.8 < grown < 16 * 1024 * 1024 * 1.15, (grown, items)
