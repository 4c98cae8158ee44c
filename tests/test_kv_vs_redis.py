"""apps/kv.lua against a real redis-server 7: the same seeded random command sequences to both, replies
compared byte for byte (RESP2 and RESP3, multibulk and inline with quotes, pipelines, binary keys, edge
integers, expiry options, errors, protocol errors that close the connection). KV_SEEDS="4 5 6" runs others.

Where the two may differ by design, the comparison says so: KEYS order (Redis's is its hash table's; kv's
sorted: the elements are compared as sets), TTL/PTTL (the clocks read a moment apart: within 1 s / 250 ms),
and HELLO's map (server name and client id: the other fields are compared). The README lists these.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator

import pytest

from conftest import APPS

KEYS = [b"k", b"n", b"a b", b"\x00\r\n", b"caf\xc3\xa9", b"[x]", b"*", b"key:1", b"key:22", b"\xff"]
INTEGERS = [
    b"0", b"1", b"-1", b"42", b"9223372036854775807", b"-9223372036854775808", b"9223372036854775806",
    b"-0", b"01", b"+1", b" 1", b"1.5", b"", b"99999999999999999999", b"abc",
]  # fmt: skip
TIMES = [b"100000", b"0", b"-1", b"10000000", b"9223372036854775807", b"9223372036854775", b"abc", b"-100"]
# (no expiry that could fall due during the test: Redis counts such a key in DBSIZE until it reclaims it)
EXAT, PXAT = b"9999999999", b"9999999999999"  # far ahead (a time past would count in Redis's DBSIZE)
PATTERNS = [
    b"*", b"k*", b"?", b"[ak]*", b"[^k]*", b"[!k]*", b"[a-z]*", b"[z-a]*", b"\\*", b"*[", b"[", b"key:?",
    b"key:*2", b"*\\", b"[\\]]*", b"c?f*", b"*x*", b"[]", b"[^]", b"[!]",
]  # fmt: skip


SET_OPTIONS = [b"NX", b"XX", b"GET", b"KEEPTTL", b"EX", b"PX", b"EXAT", b"PXAT", b"ex", b"BAD"]
EXPIRE_OPTIONS = [b"NX", b"XX", b"GT", b"LT", b"nx", b"ZZ"]
UNKNOWN = [b"NOPE", b"g\r\net", b"x" * 200, b"get\x00x"]  # (CR LF and NUL to be quoted in the error)
WRONG_ARITY = [b"GET", b"SET", b"TTL", b"INCRBY", b"ECHO", b"EXPIRE", b"KEYS", b"DBSIZE"]


def value(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.choice(INTEGERS)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))


def command(rng: random.Random) -> list[bytes]:
    key = rng.choice(KEYS)
    roll = rng.randrange(100)
    if roll < 22:
        args = [b"SET", key, value(rng)]
        for _ in range(rng.randrange(4)):
            opt = rng.choice(SET_OPTIONS)
            args.append(opt)
            if opt.upper() in (b"EX", b"PX"):
                args.append(rng.choice(TIMES))
            elif opt in (b"EXAT", b"PXAT"):
                args.append(rng.choice([EXAT if opt == b"EXAT" else PXAT, b"0", b"-5", b"x"]))
        return args
    if roll < 34:
        return [b"GET", key]
    if roll < 44:
        name = rng.choice([b"INCR", b"DECR", b"INCRBY", b"DECRBY", b"incrby"])
        return [name, key] + ([rng.choice(INTEGERS)] if name.upper().endswith(b"BY") else [])
    if roll < 52:
        name = rng.choice([b"EXPIRE", b"PEXPIRE"])
        opts = [rng.choice(EXPIRE_OPTIONS) for _ in range(rng.choice([0, 0, 1, 2]))]
        return [name, key, rng.choice(TIMES), *opts]
    if roll < 58:
        return [rng.choice([b"TTL", b"PTTL", b"PERSIST"]), key]
    if roll < 64:
        return [rng.choice([b"DEL", b"EXISTS"])] + [rng.choice(KEYS) for _ in range(rng.randrange(4))]
    if roll < 69:
        return [b"KEYS", rng.choice(PATTERNS)]
    if roll < 73:
        return [b"DBSIZE"]
    if roll < 77:
        return [rng.choice([b"PING", b"ECHO"])] + [value(rng) for _ in range(rng.randrange(3))]
    if roll < 80:
        return [b"SELECT", rng.choice([b"0", b"1", b"15", b"16", b"-1", b"x"])]
    if roll < 82:
        mode = [rng.choice([b"ASYNC", b"SYNC", b"x"])] * rng.randrange(2)
        return [rng.choice([b"FLUSHDB", b"FLUSHALL"]), *mode]
    if roll < 90:  # unknown commands, with arguments that need quoting in the error
        return [rng.choice(UNKNOWN)] + [value(rng) for _ in range(rng.randrange(5))]
    return [rng.choice(WRONG_ARITY)] + [key] * rng.choice([0, 3, 4])


def multibulk(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def inline(args: list[bytes], rng: random.Random) -> bytes:
    """An inline command: plain words where possible, else double or single quotes with escapes."""
    words = []
    for a in args:
        plain = a and all(33 <= c < 127 and c not in b"\"'\\" for c in a)
        if plain and rng.random() < 0.8:
            words.append(a)
        elif b"'" not in a and b"\\" not in a and all(32 <= c < 127 for c in a) and rng.random() < 0.5:
            words.append(b"'" + a + b"'")
        else:
            esc = b"".join(
                b"\\" + bytes([c]) if c in b'"\\'
                else bytes([c]) if 32 <= c < 127
                else rng.choice([b"\\x%02x" % c, b"\\x%02X" % c])
                for c in a
            )  # fmt: skip
            words.append(b'"' + esc + b'"')
    return b" ".join(words) + rng.choice([b"\r\n", b"\n"])


BROKEN = [  # protocol errors: answered, then the connection is closed (by both)
    b'GET "unterminated\r\n',
    b'GET "a"b\r\n',
    b"GET 'x'y\r\n",
    b"*1\r\nx\r\n",
    b"*abc\r\n",
    b"*1\r\n$x\r\n",
    b"*1\r\n$-5\r\n",
    b"*1\n$4\nPING\n",  # (an array's lines end in CRLF: Redis reads to the next CR, then refuses the count)
    b"*1\r\n$4\nPING\n",  # (... and the bulk length)
]


def frame(buf: bytes, pos: int = 0) -> int | None:
    """The end of the RESP reply starting at ``pos`` in ``buf``, or None if it is not complete yet."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None
    kind, head = buf[pos : pos + 1], buf[pos + 1 : nl]
    end = nl + 2
    if kind == b"$":
        n = int(head)
        return end if n < 0 else (end + n + 2 if len(buf) >= end + n + 2 else None)
    if kind in (b"*", b"%", b"~", b">"):
        n = int(head) * (2 if kind == b"%" else 1)
        for _ in range(max(n, 0)):
            got = frame(buf, end)
            if got is None:
                return None
            end = got
        return end
    return end


def elements(reply: bytes) -> list[bytes]:
    out, pos, end = [], reply.index(b"\r\n") + 2, len(reply)
    while pos < end:
        nxt = frame(reply, pos)
        assert nxt is not None
        out.append(reply[pos:nxt])
        pos = nxt
    return out


class Peer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def replies(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        while len(out) < count:
            end = frame(self.buf, pos)
            if end is None:
                chunk = self.sock.recv(1 << 16)
                assert chunk, f"closed after {len(out)} of {count} replies"
                self.buf += chunk
                continue
            out.append(self.buf[pos:end])
            pos = end
        self.buf = self.buf[pos:]
        return out

    def until_closed(self) -> bytes:
        while chunk := self.sock.recv(1 << 16):
            self.buf += chunk
        data, self.buf = self.buf, b""
        self.sock.close()
        return data


def hello_fields(reply: bytes) -> list[bytes]:
    """HELLO's map without the fields that name the server and number the client."""
    items = elements(reply)
    pairs = zip(items[::2], items[1::2], strict=True)
    return [v for k, v in pairs if k.split(b"\r\n")[1] not in (b"server", b"id")]


def same(cmd: list[bytes], ours: bytes, theirs: bytes) -> bool:
    if ours == theirs:
        return True
    name = cmd[0].upper()
    if name == b"KEYS" and ours[:1] == theirs[:1] == b"*":
        return sorted(elements(ours)) == sorted(elements(theirs))
    if name in (b"TTL", b"PTTL") and ours[:1] == theirs[:1] == b":":
        return abs(int(ours[1:]) - int(theirs[1:])) <= (1 if name == b"TTL" else 250)
    # Redis finds a command by a hash of its whole name but compares names as C strings, so a name with a
    # NUL is taken for the command before the NUL when the two share a bucket, which its random hash seed
    # decides at start: "get\0x" a b got "wrong number of arguments for 'get'" from 7 of 1,000 redis-server
    # starts here (2026-12-07), "unknown command 'get'" from the rest, and from kv.lua
    if b"\x00" in name and ours.startswith(b"-ERR unknown command"):
        return theirs.startswith(b"-ERR wrong number of arguments for '%s'" % name.split(b"\x00")[0].lower())
    return False


@pytest.fixture
def pair(run_app, redis_server: int) -> Iterator[tuple[int, int]]:  # type: ignore[no-untyped-def]
    kv = run_app(APPS / "kv.lua", "--port", "0")
    yield kv.port, redis_server


@pytest.mark.lua54("compares 64-bit integer edges with redis-server; on LuaJIT kv.lua keeps to ±(2^53 - 1)")
@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("KV_SEEDS", "1 2 3").split()])
def test_kv_answers_byte_for_byte_as_redis_server(pair: tuple[int, int], seed: int) -> None:
    rng = random.Random(seed)
    kv_port, redis_port = pair
    for resp3 in (False, True):
        ours, theirs = Peer(kv_port), Peer(redis_port)
        for peer in (ours, theirs):  # a clean start, and the protocol under test
            peer.sock.sendall(multibulk([b"FLUSHALL"]) + multibulk([b"HELLO", b"3" if resp3 else b"2"]))
        assert ours.replies(1) == theirs.replies(1) == [b"+OK\r\n"]
        hello_ours, hello_theirs = ours.replies(1)[0], theirs.replies(1)[0]
        assert hello_ours[:4] == hello_theirs[:4] and hello_fields(hello_ours) == hello_fields(hello_theirs)
        compared = 0
        for _ in range(60):
            batch = [command(rng) for _ in range(rng.randrange(1, 20))]
            wire = b"".join(multibulk(c) if rng.random() < 0.6 else inline(c, rng) for c in batch)
            ours.sock.sendall(wire)
            theirs.sock.sendall(wire)
            for cmd, a, b in zip(batch, ours.replies(len(batch)), theirs.replies(len(batch)), strict=True):
                assert same(cmd, a, b), f"seed {seed}, resp3 {resp3}: {cmd!r}\n kv:    {a!r}\n redis: {b!r}"
                compared += 1
            if rng.random() < 0.08:  # a protocol error: the same answer, then both close
                bad = rng.choice(BROKEN) + multibulk([b"PING"])
                ours.sock.sendall(bad)
                theirs.sock.sendall(bad)
                assert ours.until_closed() == theirs.until_closed(), bad
                ours, theirs = Peer(kv_port), Peer(redis_port)
                if resp3:
                    for peer in (ours, theirs):
                        peer.sock.sendall(multibulk([b"HELLO", b"3"]))
                        peer.replies(1)
        assert compared > 300
        ours.sock.close()
        theirs.sock.close()


def test_every_protocol_error_gets_redis_servers_answer_and_close(pair: tuple[int, int]) -> None:
    """Each framing error alone (the random runs above pick some): the same bytes, then both close."""
    kv_port, redis_port = pair
    for bad in BROKEN:
        ours, theirs = Peer(kv_port), Peer(redis_port)
        for peer in (ours, theirs):
            peer.sock.sendall(bad + multibulk([b"PING"]))
        assert ours.until_closed() == theirs.until_closed(), bad


# Transactions as redis-server answers them: queued replies, EXEC's array, errors at queuing time (EXECABORT)
# and at run time (in the array), WATCH aborting EXEC once another connection writes a watched key.
TRANSACTIONS: list[list[list[bytes]]] = [
    [[b"MULTI"], [b"SET", b"a", b"1"], [b"INCR", b"a"], [b"GET", b"a"], [b"EXEC"]],
    [[b"MULTI"], [b"SET", b"b", b"x"], [b"INCR", b"b"], [b"GET", b"b"], [b"EXEC"]],  # (a run-time error)
    [[b"MULTI"], [b"SET", b"c"], [b"GET", b"c"], [b"EXEC"]],  # (an arity error while queuing)
    [[b"MULTI"], [b"NOPE", b"x"], [b"EXEC"]],  # (an unknown command while queuing)
    [[b"MULTI"], [b"MULTI"], [b"PING"], [b"DISCARD"], [b"EXEC"], [b"DISCARD"]],
    [[b"EXEC"], [b"WATCH", b"a"], [b"MULTI"], [b"WATCH", b"b"], [b"GET", b"a"], [b"EXEC"]],
    [
        [b"MULTI"],
        [b"SELECT", b"1"],
        [b"SET", b"d", b"1"],
        [b"SELECT", b"0"],
        [b"GET", b"d"],
        [b"EXEC"],
        [b"GET", b"d"],
    ],
    [[b"MULTI"], [b"EXEC"], [b"UNWATCH"], [b"multi"], [b"ping"], [b"exec"]],
]


def test_transactions_answer_byte_for_byte_as_redis_server(pair: tuple[int, int]) -> None:
    kv_port, redis_port = pair
    for resp3 in (False, True):
        ours, theirs = Peer(kv_port), Peer(redis_port)
        for peer in (ours, theirs):
            peer.sock.sendall(multibulk([b"FLUSHALL"]) + multibulk([b"HELLO", b"3" if resp3 else b"2"]))
            peer.replies(2)
        for script in TRANSACTIONS:
            wire = b"".join(multibulk(c) for c in script)
            ours.sock.sendall(wire)
            theirs.sock.sendall(wire)
            assert ours.replies(len(script)) == theirs.replies(len(script)), (resp3, script)
        # WATCH: another connection's write to a watched key makes EXEC answer a null (and clears the watch)
        others = Peer(kv_port), Peer(redis_port)
        for peer, other in zip((ours, theirs), others, strict=True):
            peer.sock.sendall(
                multibulk([b"WATCH", b"w", b"v"]) + multibulk([b"MULTI"]) + multibulk([b"INCR", b"w"])
            )
            assert peer.replies(3) == [b"+OK\r\n", b"+OK\r\n", b"+QUEUED\r\n"]
            other.sock.sendall(multibulk([b"SET", b"v", b"changed"]))
            assert other.replies(1) == [b"+OK\r\n"]
        replies = []
        for peer in (ours, theirs):
            peer.sock.sendall(multibulk([b"EXEC"]) + multibulk([b"MULTI"]) + multibulk([b"INCR", b"w"]))
            peer.sock.sendall(multibulk([b"EXEC"]))  # (the watch ended with the last EXEC: this one runs)
            replies.append(peer.replies(4))
        assert replies[0] == replies[1], replies
        assert replies[0][0] == (b"_\r\n" if resp3 else b"*-1\r\n")
        for peer in (ours, theirs, *others):
            peer.sock.close()
