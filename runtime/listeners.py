"""Listening sockets held by the supervisor and handed to workers (SCM_RIGHTS over a Unix socket).

A Unix-socket path is bound once and the same socket goes to every worker (they accept from one queue);
the supervisor removes the file when it exits. For each TCP address the supervisor binds one SO_REUSEPORT
socket per worker slot: the kernel spreads new
connections over the slots, and worker N of every generation gets slot N's socket. On SIGHUP the new worker
N shares the socket with the old one, so when the old one stops listening (it only closes its own copy) the
connections waiting in that queue are accepted by its successor instead of being reset.

When a worker dies, its slot's sockets stay open (the connections waiting in them are not reset) and the
supervisor marks the slot orphaned; a living worker, told with SIGUSR2, asks for the orphaned sockets
(:func:`adopt_orphans`) and accepts from them too, so the kernel's share for that slot is served until the
replacement worker listens; then it is told again, and lets go of the sockets no longer orphaned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
from collections import Counter
from pathlib import Path

log = logging.getLogger("moonlet")

ENV = "MOONLET_SUPERVISOR"  # the supervisor's socket path, in a worker's environment
# What a worker's log says that its supervisor acts on (it reads the workers' standard error):
LISTENING_MARK = b" listening on "  # worker N serves: an app that listens gets every core (--workers auto)
SINGLE_PROCESS_MARK = "the app runs as one process: "  # workers.single(): no other worker, ever


_any_port: Counter[str] = Counter()  # this worker's requests for port 0, by host


def shared_listener(host: str, port: int | None, backlog: int) -> socket.socket | None:
    """In a worker: the supervisor's listening socket for host:port, or for the Unix-socket path ``host``
    when port is None (bound on first request); None when this process has no supervisor. Raises OSError
    with the bind error otherwise. Port 0: the Nth such request of every worker gets the Nth port chosen
    (each worker runs the same app, which opens its listeners in the same order)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    nth = 0
    if port == 0:
        nth = _any_port[host]
        _any_port[host] += 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        slot = int(os.environ.get("MOONLET_WORKER", "1"))
        request = {"host": host, "port": port, "backlog": backlog, "slot": slot, "nth": nth}
        s.sendall(json.dumps(request).encode() + b"\n")
        message, fds, _, _ = socket.recv_fds(s, 4096, 1)
    if not fds:
        raise OSError(0, message.decode() or "the supervisor could not bind")
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    return sock


def adopt_orphans() -> list[tuple[str, int, int, socket.socket]]:
    """In a worker: the listening sockets of the slots whose workers died, as (host, port, slot, socket)."""
    path = os.environ.get(ENV)
    if not path:
        return []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(json.dumps({"adopt": True}).encode() + b"\n")
        message, fds, _, _ = socket.recv_fds(s, 65536, 250)
    addresses = json.loads(message or b"[]")
    adopted = []
    for (host, port, slot), fd in zip(addresses, fds, strict=False):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        adopted.append((str(host), int(port), int(slot), sock))
    return adopted


class ListenerRegistry:
    """In the supervisor: binds addresses on request and keeps them for every worker generation."""

    def __init__(self, directory: str) -> None:
        self.path = str(Path(directory) / "listeners.sock")
        self.sockets: dict[tuple[str, int, int], socket.socket] = {}  # (host, port, slot)
        self.bound: dict[tuple[str, int], int] = {}  # (host, N) -> the port chosen for the Nth port 0
        self.paths: dict[str, socket.socket] = {}  # Unix-socket path -> the one socket every worker shares
        self.orphaned: set[int] = set()  # slots whose worker died and has not listened again (the supervisor)
        self.closed = False
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        os.chmod(self.path, 0o600)
        self._server.listen(64)
        threading.Thread(target=self._serve, name="moonlet-listeners", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ValueError, KeyError):
                request = json.loads(conn.makefile("rb").readline())
                if request.get("adopt"):
                    self._answer_adopt(conn)
                elif request["port"] is None:
                    self._answer_path(conn, str(request["host"]), int(request["backlog"]))
                else:
                    self._answer(
                        conn,
                        str(request["host"]),
                        int(request["port"]),
                        int(request["backlog"]),
                        int(request["slot"]),
                        nth=int(request.get("nth", 0)),
                    )

    def _answer(
        self, conn: socket.socket, host: str, port: int, backlog: int, slot: int, *, nth: int
    ) -> None:
        any_port = port == 0
        if any_port:  # every slot's Nth port 0 shares the port chosen for the first of them
            port = self.bound.get((host, nth), 0)
        sock = self.sockets.get((host, port, slot))
        if sock is None:
            try:
                sock = socket.create_server((host, port), backlog=backlog, reuse_port=True)
            except OSError as e:
                conn.sendall((e.strerror or str(e)).encode())
                return
            if any_port and port == 0:
                self.bound[(host, nth)] = port = sock.getsockname()[1]
            self.sockets[(host, port, slot)] = sock
        socket.send_fds(conn, [b"ok"], [sock.fileno()])

    def _answer_adopt(self, conn: socket.socket) -> None:
        orphans = set(self.orphaned)
        chosen = [(key, sock) for key, sock in list(self.sockets.items()) if key[2] in orphans]
        addresses = [[host, port, slot] for (host, port, slot), _ in chosen]
        fds = [sock.fileno() for _, sock in chosen]
        if fds:
            socket.send_fds(conn, [json.dumps(addresses).encode()], fds)
        else:
            conn.sendall(b"[]")

    def _answer_path(self, conn: socket.socket, path: str, backlog: int) -> None:
        sock = self.paths.get(path)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                remove_stale_socket(path)
                sock.bind(path)
                sock.listen(backlog)
            except OSError as e:
                sock.close()
                conn.sendall((e.strerror or str(e)).encode())
                return
            self.paths[path] = sock
        socket.send_fds(conn, [b"ok"], [sock.fileno()])

    def close(self) -> None:
        """Close every listening socket (the workers' copies stay theirs) and the registry."""
        if self.closed:
            return
        self.closed = True
        self._server.close()
        for sock in set(self.sockets.values()):
            sock.close()
        for path, sock in self.paths.items():
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)


def remove_stale_socket(path: str) -> None:
    """A socket file left by a dead server would make bind fail; a live server's is kept (bind then fails)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            finally:
                probe.close()
