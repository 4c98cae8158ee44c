"""Server-side TLS: the context a listener's ``tls`` options ask for (``net.listen{tls=}``,
``http.serve{tls=}``), built once when it starts listening.

Certificates are PEM files: ``cert`` holds the leaf then its chain, ``key`` its private key. ``sni`` names
more certificates by server name (``"*.example.org"`` covers one label); a client that names none of them,
or no name, gets the default one. The floor is TLS 1.2 (``min_version = "1.3"`` raises it), the ciphers
are Python's defaults (OpenSSL's secure set) unless ``ciphers`` says otherwise, ALPN offers ``alpn`` (the
HTTP server: ``http/1.1``), and client certificates are asked for with ``client_ca`` (``client_cert =
"optional"`` or ``"required"``, the default once a CA is given).

Each accepted connection of a TLS listener is wrapped in the loop's own SSL protocol (uvloop's, in C; the
standard library's on the virtual-time loop) with a waiter (``Handshakes``): the connection's service
begins once the handshake is done, bounded by ``handshake_timeout``, and a failed one is one log line and a
closed connection, nothing more. Handshakes in flight count against ``--max-connections``.

A new certificate is taken by starting to listen again: ``moonlet run``'s SIGHUP starts new workers, which
read the files anew, while the old ones finish their connections.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import dataclasses
import logging
import ssl
from typing import Any

import uvloop
import uvloop.loop

log = logging.getLogger("moonlet")

HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to complete the handshake
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CLIENT_CERT = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TLSConfigError(Exception):
    """Options that do not make a context (a file missing or not a certificate, a key that does not match):
    the listen call returns ``nil, "tls: ..."``."""


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    context: ssl.SSLContext
    handshake_timeout: float


def _text(opts: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = opts.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def _context(cert: str, key: str | None, opts: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # (no SSLv3, no compression, server cipher order)
    ctx.minimum_version = VERSIONS[_text(opts, "min_version", "1.2") or "1.2"]
    ciphers = _text(opts, "ciphers")
    try:
        if ciphers:
            ctx.set_ciphers(ciphers)
        ctx.load_cert_chain(cert, key)
        alpn = opts.get("alpn")
        if alpn:
            ctx.set_alpn_protocols([p.decode() if isinstance(p, bytes) else str(p) for p in alpn])
        ca = _text(opts, "client_ca")
        if ca:
            ctx.load_verify_locations(ca)
            ctx.verify_mode = CLIENT_CERT[_text(opts, "client_cert", "required") or "required"]
    except (OSError, ssl.SSLError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
        where = getattr(e, "filename", None) or cert
        raise TLSConfigError(f"tls: cannot load {where}: {str(reason).lower()}") from None
    return ctx


def server_tls(opts: dict[str, Any]) -> ServerTLS:
    """The context for a listener's ``tls`` table (keys as text; Lua checked their types and names)."""
    opts = {k.decode() if isinstance(k, bytes) else k: v for k, v in opts.items()}
    cert = _text(opts, "cert")
    if not cert:
        raise TLSConfigError("tls: a certificate is needed ('cert')")
    default = _context(cert, _text(opts, "key"), opts)
    by_name: dict[str, ssl.SSLContext] = {}
    for name, given in (opts.get("sni") or {}).items():
        pair = {k.decode() if isinstance(k, bytes) else k: v for k, v in given.items()}
        named = _text(pair, "cert")
        if not named:
            raise TLSConfigError(f"tls: a certificate is needed for {name!r} ('cert')")
        by_name[(name.decode() if isinstance(name, bytes) else name).lower()] = _context(
            named, _text(pair, "key"), opts
        )

    def choose(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.moonlet_sni = name or ""  # type: ignore[attr-defined]  # (the console's \connections shows it)
        if name and by_name:
            name = name.lower()
            chosen = by_name.get(name) or by_name.get("*." + name.partition(".")[2])
            if chosen is not None:
                obj.context = chosen

    default.sni_callback = choose
    timeout = opts.get("handshake_timeout")
    return ServerTLS(default, float(timeout) if isinstance(timeout, int | float) else HANDSHAKE_TIMEOUT)


def sni_of(transport: Any) -> str | None:
    """The server name a TLS connection's client asked for ("" for none); None for a plain connection."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    return None if obj is None else getattr(obj, "moonlet_sni", "")


def _accepting(base: Any) -> Any:
    class Accepted(base):  # type: ignore[misc]
        """The loop's SSL protocol, told who the peer is as the TCP connection is made (for the log line of
        a handshake that fails, when there is no transport left to ask)."""

        peer: Any = None
        raw: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.peer, self.raw = transport.get_extra_info("peername"), transport
            super().connection_made(transport)

    return Accepted


# (uvloop's protocol wants its own loop; the virtual-time loop of the tests is the standard library's)
_ON_UVLOOP = _accepting(uvloop.loop.SSLProtocol)  # type: ignore[attr-defined]  # (not in its stubs)
_ON_ASYNCIO = _accepting(asyncio.sslproto.SSLProtocol)


def _reason(e: BaseException | None, timeout: float) -> str:
    if isinstance(e, ssl.SSLError):
        return (e.reason or str(e)).lower().replace("_", " ")
    if isinstance(e, ConnectionAbortedError) and "longer" in str(e):
        return f"no handshake within {timeout:g}s"
    if isinstance(e, ConnectionError | EOFError | asyncio.CancelledError):
        return "the client closed the connection"
    return str(e) or type(e).__name__


class Handshakes:
    """The TLS handshakes in flight on a worker's listeners (StreamService.tls)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[
            Any, None
        ] = {}  # the SSL protocols still shaking hands (a registry of connections)
        self.failed = 0
        self._protocol = _ON_UVLOOP if isinstance(loop, uvloop.Loop) else _ON_ASYNCIO

    def accept(self, conn: asyncio.Protocol, tls: ServerTLS, label: str) -> asyncio.BaseProtocol:
        """The protocol for an accepted connection of a TLS listener: ``conn`` is made once the handshake
        is done."""
        waiter = self.loop.create_future()
        proto = self._protocol(
            self.loop, conn, tls.context, waiter, True, None, ssl_handshake_timeout=tls.handshake_timeout
        )
        self.pending[proto] = None

        def done(f: asyncio.Future[None]) -> None:
            self.pending.pop(proto, None)
            e = None if f.cancelled() else f.exception()
            if f.cancelled() or e is not None:
                self.failed += 1
                peer = proto.peer
                who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "?")
                log.warning(
                    "tls handshake failed on %s from %s: %s", label, who, _reason(e, tls.handshake_timeout)
                )

        waiter.add_done_callback(done)
        return proto  # type: ignore[no-any-return]

    def close(self) -> None:
        """The process ends: the handshakes still going end with it."""
        for proto in list(self.pending):
            if proto.raw is not None:
                proto.raw.abort()
        self.pending.clear()
