"""The HTTP request head's decisions (stdlib_lua/moonlet/http/_head.lua), each run alone in plain Lua over
the RFC's cases: a table of inputs and what each must give, as h11 tests its ``_keep_alive`` and
``_body_framing``."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import ROOT
from runtime.lua.state import lupa_of_this_engine as lupa

_lua = lupa.LuaRuntime(encoding=None)
HEAD = _lua.execute((ROOT / "stdlib_lua" / "moonlet" / "http" / "_head.lua").read_bytes())


def call(name: str, *args: object) -> tuple[Any, ...]:
    """The function's results as a tuple of Python values (Lua strings as str)."""
    # (a bare state, on either engine: LuaJIT has no table.pack without moonlet's compat layer)
    pack = b"function(f, ...) return (function(...) return { n = select('#', ...), ... } end)(f(...)) end"
    out = _lua.eval(pack)(HEAD[name.encode()], *args)
    values = [out[i] for i in range(1, out[b"n"] + 1)]
    return tuple(v.decode() if isinstance(v, bytes) else v for v in values)


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (b"GET /a?b HTTP/1.1\r\n", ("GET", "/a?b", False, True)),
        (b"GET http://x/y HTTP/1.0\r\n", ("GET", "http://x/y", True, False)),
        (b"OPTIONS * HTTP/1.1\r\n", ("OPTIONS", "*", False, False)),
        (b"GET / HTTP/2.0\r\n", (None, 505, "HTTP/2.0 is not served here")),
        (b"BREW / HTTP/1.1\r\n", (None, 501, "a method this server does not implement: BREW")),
        (b"GET  / HTTP/1.1\r\n", (None, 400, "malformed request line")),  # two spaces
        (b"GET / HTTP/1.1 \r\n", (None, 400, "malformed request line")),
        (b"GET /\x7f HTTP/1.1\r\n", (None, 400, "malformed request line")),  # not visible ASCII
        (b"G@T / HTTP/1.1\r\n", (None, 400, "malformed request line")),  # not a token
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n", (None, 414, "request line over 64 bytes")),
    ],
)
def test_request_line(line: bytes, want: tuple[Any, ...]) -> None:
    assert call("request_line", line, 1, 64)[: len(want)] == want


@pytest.mark.parametrize(
    ("method", "target", "origin", "want"),
    [
        ("GET", "/a/b?x=1&y=2#frag", True, ("/a/b", "x=1&y=2", None)),
        ("GET", "/a%20b?q", True, ("/a b", "q", None)),
        ("GET", "/a#f?not-a-query", True, ("/a", "", None)),
        ("GET", "http://example.com/p?q", False, ("/p", "q", "example.com")),
        ("GET", "HTTPS://example.com", False, ("/", "", "example.com")),
        ("GET", "http://example.com?q", False, ("/", "q", "example.com")),  # an empty path is "/"
        ("OPTIONS", "*", False, ("*", "", None)),
        ("GET", "*", False, (None, 400, "'*' is a request target for OPTIONS only")),
        ("GET", "ftp://example.com/", False, (None, 400, "malformed request target")),
        ("GET", "http:///p", False, (None, 400, "malformed request target")),
        (
            "GET",
            "example.com:80",
            False,
            (None, 400, "malformed request target"),
        ),  # authority-form: CONNECT's
    ],
)
def test_target(method: str, target: str, origin: bool, want: tuple[Any, ...]) -> None:
    assert call("target", method.encode(), target.encode(), origin) == want


def fields(head: bytes, limit: int = 100) -> Any:
    got = call("fields", head, 1, len(head), limit)
    if got[0] is None:
        return got
    table = got[0]
    return {k.decode(): v.decode() for k, v in table.items()}


def test_fields_are_lower_case_trimmed_and_joined() -> None:
    assert fields(b"T: a\tb\r\n") == {"t": "a\tb"}  # (HT is the one control byte a value may hold)
    assert fields(b"Host: a\r\nX-A:  1 \t\r\nx-a: 2\r\nEmpty:\r\n") == {
        "host": "a",
        "x-a": "1, 2",
        "empty": "",
    }


@pytest.mark.parametrize(
    ("head", "want"),
    [
        (b"Host : a\r\n", (None, 400, "malformed header line")),  # whitespace before the colon
        (b"Host: a\r\n b\r\n", (None, 400, "malformed header line")),  # obs-fold
        (b"NoColon\r\n", (None, 400, "malformed header line")),
        (b"X: a\rb\r\n", (None, 400, "malformed header line")),  # a bare CR
        (b"X: a\x01b\r\n", (None, 400, "a control byte in a header value")),
        (b"X: a\x00b\r\n", (None, 400, "a control byte in a header value")),
        (b"X: \x7f\r\n", (None, 400, "a control byte in a header value")),
        (b"A: 1\r\nB: 2\r\nX: \x1b\r\n", (None, 431, "more than 2 header lines")),  # (counted first)
        (b"Host: a\r\nHost: b\r\n", (None, 400, "more than one Host header")),
        (b"A: 1\r\nB: 2\r\nC: 3\r\n", (None, 431, "more than 2 header lines")),
    ],
)
def test_fields_refused(head: bytes, want: tuple[Any, ...]) -> None:
    assert fields(head, 2) == want


@pytest.mark.parametrize(
    ("http10", "connection", "keep"),
    [
        (False, None, True),
        (False, b"close", False),
        (False, b"Keep-Alive, Close", False),  # close wins
        (True, None, False),
        (True, b"keep-alive", True),
        (True, b"foo, keep-alive", True),
        (False, b"upgrade", True),
    ],
)
def test_keep_alive(http10: bool, connection: bytes | None, keep: bool) -> None:
    assert call("keep_alive", http10, connection) == (keep,)


@pytest.mark.parametrize(
    ("te", "cl", "want"),
    [
        (None, None, ("none",)),
        (None, b"0", ("none",)),
        (None, b"42", ("length", 42)),
        (None, b"42, 42", ("length", 42)),  # a list of one value repeated (RFC 9110 8.6)
        (None, b"42, 43", (None, 400, "malformed Content-Length")),
        (None, b"-1", (None, 400, "malformed Content-Length")),
        (None, b"+5", (None, 400, "malformed Content-Length")),
        (None, b"101", (None, 413, "a body of 101 bytes (max_body 100)")),
        (None, b"9" * 30, (None, 413, f"a body of {'9' * 20} bytes (max_body 100)")),
        (b"chunked", None, ("chunked",)),
        (b"gzip, chunked", (None), (None, 501, "a transfer coding this server does not implement")),
        (b"chunked, gzip", None, (None, 400, "a transfer coding after chunked")),
        (b"gzip", None, (None, 400, "a request's transfer coding must end with chunked")),
        (b"chunked", b"5", (None, 400, "both Transfer-Encoding and Content-Length")),
        (b"Chunked ,", None, ("chunked",)),
    ],
)
def test_framing(te: bytes | None, cl: bytes | None, want: tuple[Any, ...]) -> None:
    assert call("framing", te, cl, 100) == want


@pytest.mark.parametrize(
    ("expect", "http10", "has_body", "want"),
    [
        (b"100-continue", False, True, True),
        (b" 100-Continue ", False, True, True),
        (b"100-continue", True, True, False),  # HTTP/1.0 clients do not wait for it
        (b"100-continue", False, False, False),  # no body to wait for
        (None, False, True, False),
        (b"something-else", False, True, False),
    ],
)
def test_wants_continue(expect: bytes | None, http10: bool, has_body: bool, want: bool) -> None:
    assert call("wants_continue", expect, http10, has_body) == (want,)


@pytest.mark.parametrize(
    ("value", "http10", "want"),
    [
        (b"a", False, (True,)),
        (None, True, (True,)),
        (None, False, (None, 400, "an HTTP/1.1 request without a Host header")),
    ],
)
def test_host(value: bytes | None, http10: bool, want: tuple[Any, ...]) -> None:
    assert call("host", value, http10) == want


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"example.com", True),
        (b"example.com:8080", True),
        (b"127.0.0.1:80", True),
        (b"[::1]:8080", True),
        (b"[2001:db8::7]", True),
        (b"[v1.fe80::a+en1]", True),  # IPvFuture
        (b"", True),  # a URI without an authority (RFC 9112 3.2)
        (b"a%20b", True),  # pct-encoded
        (b"ex_am~ple!$&'()*+,;=", True),  # unreserved and sub-delims
        (b"a b", False),
        (b"a/b?c", False),
        (b"a@b", False),
        (b"example.com:80x", False),
        (b"a%2", False),
        (b"a%zz", False),
        (b"[::1", False),
        (b"::1", False),
        (b"host:1:2", False),
    ],
)
def test_valid_authority(value: bytes, valid: bool) -> None:
    assert call("valid_authority", value) == (valid,)


def test_an_absolute_target_gives_its_authority() -> None:
    assert call("target", b"GET", b"http://a.example:81/p?q", False) == ("/p", "q", "a.example:81")
    assert call("target", b"GET", b"http://u@a.example/", False) == (
        None,
        400,
        "userinfo in the request target",
    )
