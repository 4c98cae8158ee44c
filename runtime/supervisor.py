"""``moonlet run --workers N``: N worker processes serving the same ports, supervised.

* The default, ``--workers auto``, is one worker per core, started lazily: worker 1 runs the app, and
  only once it listens are the others started. An app that never listens is a script: it runs once, and
  its exit status is the command's.

* Each worker is an ordinary ``moonlet run --workers 1`` process; its listeners take their sockets from the
  supervisor (runtime/listeners.py), so every worker accepts from the same queue and a draining worker
  loses none of the connections waiting in it.
* A worker killed from outside (SIGKILL from the OOM killer or an operator, SIGTERM, ...) is started again
  at once: nothing says its replacement would fail. A worker that crashes (it exits with an error status,
  or dies of its own fault: SIGSEGV, SIGABRT, ...) is started again after a back-off per worker slot (1 s,
  doubling up to 30 s while it keeps dying young; back to 1 s once a worker of that slot has listened for
  ``HEALTHY_AFTER``), so a crash loop does not spin. Each death (with its signal) and restart is logged.
  Meanwhile its share of new connections is not stranded: the dead worker's SO_REUSEPORT socket stays open
  (its waiting connections are not reset), and a living worker is asked (SIGUSR2) to accept from it too
  until the replacement listens. When no worker listens at all (every one died and waits to be started
  again), the kernel would go on completing handshakes nobody answers: the supervisor accepts and resets
  them itself, so clients hear at once instead of timing out, until a worker listens again.
* SIGTERM/SIGINT: every worker drains (as a single process does), the supervisor closes its copies of the
  listening sockets so that new connections are refused at once, and exits 0 when all workers have. A
  signal sent to the whole process group (Ctrl-C in a terminal, `timeout`, systemd) is the same one
  shutdown: workers ignore the copies they receive directly; a second signal to the supervisor kills them.
* SIGHUP: a new generation of workers is started; once each has said it is listening, the old generation
  drains. The listening sockets stay open throughout, so no connection is refused or reset. If a new worker
  exits (or does not listen within ``RELOAD_TIMEOUT``), the new generation is stopped and the old one keeps
  serving; a later SIGHUP may try again.
* SIGUSR1 (logrotate's convention): passed on to every worker, which reopens its log files (the HTTP
  servers' access logs).
* Workers share ``MOONLET_SHARED_DIR`` (``moonlet.shared``), a directory the supervisor makes and removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time

from runtime.console.files import remove_console_files
from runtime.listeners import LISTENING_MARK, SINGLE_PROCESS_MARK, ListenerRegistry

log = logging.getLogger("moonlet")

MAX_BACKOFF = 30.0
# signals a worker does not send itself: the OOM killer, an operator, a process manager (a crash is SIGSEGV,
# SIGABRT, SIGBUS, SIGFPE, SIGILL, or an exit status)
KILLED_FROM_OUTSIDE = frozenset(
    {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}
)
HEALTHY_AFTER = 10.0  # a worker that has listened this long resets its slot's back-off
RELOAD_TIMEOUT = 30.0  # seconds a new generation has to listen


def die_with_supervisor() -> None:
    """Called in a worker at start: get SIGTERM when the supervisor dies, even by SIGKILL (Linux), so no
    worker is orphaned holding the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before we could ask
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1


class Worker:
    def __init__(self, index: int, generation: int) -> None:
        self.index = index  # its slot: worker N of every generation takes slot N's listening sockets
        self.generation = generation
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.listening_since = 0.0  # when it said it listens (0: not yet)
        self.listening = asyncio.Event()
        self.exited = asyncio.Event()
        self.retired = False  # stopped for good (the app runs as one process): not started again

    @property
    def name(self) -> str:
        return f"worker {self.index}" + (f" (generation {self.generation})" if self.generation else "")


class Supervisor:
    def __init__(self, argv: list[str], count: int, *, lazily: bool = False) -> None:
        self.argv = argv  # the worker's command line after "moonlet run --workers 1"
        self.count = count
        self.widened = not lazily  # lazily: the other workers start once worker 1 listens
        self.exit_status = 0
        self.generation = 0
        self.workers: list[Worker] = []
        self.stopping = False
        self.reloading = False
        self.backoff: dict[int, float] = {}  # per slot
        self.lenders: dict[int, Worker] = {}  # slot -> the worker accepting from it while it has none
        self.shared_dir = tempfile.mkdtemp(prefix="moonlet-shared-")
        self.listeners = ListenerRegistry(self.shared_dir)
        self.single = False  # the app declared state in a worker's memory (workers.single): one worker only
        self.refusing: list[socket.socket] = []  # sockets the supervisor resets connections on (none listens)
        self._done: asyncio.Future[None] | None = None

    def run(self) -> int:
        try:
            asyncio.run(self._main())
        finally:
            self.listeners.close()
            shutil.rmtree(self.shared_dir, ignore_errors=True)
        return self.exit_status

    def _reopen(self) -> None:
        """SIGUSR1: every worker reopens its log files (after logrotate moved them)."""
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGUSR1)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._stop, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))
        loop.add_signal_handler(signal.SIGUSR1, self._reopen)
        if self.widened:
            log.info("supervisor %d: starting %d workers (--workers %d)", os.getpid(), self.count, self.count)
        else:
            log.info("supervisor %d: worker 1 starts the app; %d more once it listens (one per core)",
                     os.getpid(), self.count - 1)  # fmt: skip
        for i in range(self.count if self.widened else 1):
            self._start(Worker(i + 1, self.generation))
        await self._done

    def _widen(self) -> None:
        """Worker 1 listens: the app is a server, so every core gets a worker."""
        self.widened = True
        log.info("supervisor %d: the app listens; starting %d more workers (one per core)", os.getpid(),
                 self.count - 1)  # fmt: skip
        for i in range(1, self.count):
            self._start(Worker(i + 1, self.generation))

    def _go_single(self, declaring: Worker) -> None:
        """The app keeps state in a worker's memory: from now on one worker, the one that said so."""
        self.single = True
        others = [w for w in self.workers if w is not declaring and w.generation == declaring.generation]
        if self.count > 1:
            why = f"of --workers {self.count}" if self.widened else "of one per core"
            log.info("supervisor %d: 1 worker instead %s (the app keeps state in memory)", os.getpid(), why)
        self.count = 1
        for worker in others:  # (started at once with an explicit --workers N)
            worker.retired = True
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)

    def _start(self, worker: Worker) -> None:
        self.workers.append(worker)
        asyncio.get_running_loop().create_task(self._supervise(worker))

    async def _supervise(self, worker: Worker) -> None:
        env = dict(
            os.environ,
            MOONLET_SUPERVISOR=self.listeners.path,
            MOONLET_SHARED_DIR=self.shared_dir,
            MOONLET_WORKER=str(worker.index),
        )
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime",
            "run",
            "--workers",
            "1",
            *self.argv,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        worker.started = time.monotonic()
        log.log(
            logging.INFO if self.widened else logging.DEBUG,
            "%s started (pid %d)",
            worker.name,
            worker.proc.pid,
        )
        assert worker.proc.stderr is not None
        while line := await worker.proc.stderr.readline():  # pass the worker's log through
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
            if SINGLE_PROCESS_MARK.encode() in line and not self.single:
                self._go_single(worker)
            if LISTENING_MARK in line and not worker.listening.is_set():
                worker.listening_since = time.monotonic()
                worker.listening.set()
                self._stop_refusing()
                if worker.generation == self.generation:
                    self._take_back_share(worker.index)
                    if self.single:  # the slots of workers stopped for it: it serves them from now on
                        self._lend_all(worker)
                if not self.widened and not self.stopping and not self.single:
                    self._widen()
        status = await worker.proc.wait()
        worker.exited.set()
        remove_console_files(worker.proc.pid)  # (a worker killed outright could not)
        if worker in self.workers:
            self.workers.remove(worker)
        if not self.widened and not self.stopping:  # a script: it ran once, its status is ours
            self.exit_status = status if status >= 0 else 128 - status
            self.stopping = True
        if worker.retired:  # its slot's waiting connections go to the one worker
            log.info("%s (pid %d) stopped: the app runs as one process", worker.name, worker.proc.pid)
            self.listeners.orphaned.add(worker.index)
            for w in self.workers:
                if w.listening.is_set() and w.proc and w.proc.returncode is None and not self.stopping:
                    self._lend_all(w)
            self._check_done()
            return
        if self.stopping or worker.generation != self.generation:
            how = (
                f"was killed by {signal.Signals(-status).name}"
                if status < 0
                else f"exited with status {status}"
            )
            log.log(logging.INFO if status == 0 else logging.WARNING, "%s (pid %d) %s", worker.name,
                    worker.proc.pid, how)  # fmt: skip
            self._check_done()
            return
        now = time.monotonic()
        healthy = worker.listening_since > 0 and now - worker.listening_since >= HEALTHY_AFTER
        outside = status < 0 and -status in KILLED_FROM_OUTSIDE
        backoff = 0.0 if outside else 1.0 if healthy else self.backoff.get(worker.index, 1.0)
        how = (
            f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
        )
        log.warning(
            "%s (pid %d) %s after %.1fs; starting it again %s%s",
            worker.name,
            worker.proc.pid,
            how,
            now - worker.started,
            "now" if outside else f"in {backoff:.0f}s",
            "" if outside or healthy or backoff == 1.0 else " (it keeps dying young: backing off)",
        )
        if not outside:
            self.backoff[worker.index] = min(backoff * 2, MAX_BACKOFF)
        if worker.listening.is_set():
            self._lend_share(worker.index)
        if not self._anyone_listens():
            self._refuse()
        await asyncio.sleep(backoff)
        if not self.stopping and worker.generation == self.generation:
            self._start(Worker(worker.index, worker.generation))
        else:
            self._check_done()

    def _anyone_listens(self) -> bool:
        return any(
            w.listening.is_set() and w.proc is not None and w.proc.returncode is None for w in self.workers
        )

    def _refuse(self) -> None:
        """No worker listens: reset the connections the kernel completes on every listening socket, now and
        until a worker listens again (see the module's rules)."""
        if self.refusing or self.stopping:
            return
        loop = asyncio.get_running_loop()
        self.refusing = [*self.listeners.sockets.values(), *self.listeners.paths.values()]
        for sock in self.refusing:
            sock.setblocking(False)  # (the workers' copies are non-blocking already: one open file)
            loop.add_reader(sock.fileno(), self._reset_waiting, sock)
        if self.refusing:
            log.warning("no worker is listening: new connections are refused until one is started again")

    def _reset_waiting(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # (BlockingIOError: none left)
                return
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            conn.close()

    def _stop_refusing(self) -> None:
        if not self.refusing:
            return
        loop = asyncio.get_running_loop()
        for sock in self.refusing:
            loop.remove_reader(sock.fileno())
        self.refusing = []
        log.info("a worker listens again: new connections are served")

    def _lend_share(self, slot: int) -> None:
        """The worker of ``slot`` died: a living worker accepts from its sockets until another listens."""
        self.listeners.orphaned.add(slot)
        for w in self.workers:
            if (
                w.generation == self.generation
                and w.listening.is_set()
                and w.proc
                and w.proc.returncode is None
            ):
                log.info("%s takes the connections of slot %d until its worker is back", w.name, slot)
                self.lenders[slot] = w
                w.proc.send_signal(signal.SIGUSR2)  # it asks the registry for the orphaned sockets
                return

    def _lend_all(self, worker: Worker) -> None:
        """The one worker of a single-process app accepts from every orphaned slot (there is no other)."""
        slots = sorted(self.listeners.orphaned - {worker.index})
        if slots and worker.proc is not None and worker.proc.returncode is None:
            for slot in slots:
                self.lenders[slot] = worker
            log.info("%s takes the connections of slot%s %s", worker.name, "s" if len(slots) > 1 else "",
                     ", ".join(map(str, slots)))  # fmt: skip
            worker.proc.send_signal(signal.SIGUSR2)

    def _take_back_share(self, slot: int) -> None:
        """Slot ``slot`` has a listening worker again: whoever stood in for it lets its sockets go."""
        self.listeners.orphaned.discard(slot)
        lender = self.lenders.pop(slot, None)
        if lender is not None and lender.proc is not None and lender.proc.returncode is None:
            lender.proc.send_signal(signal.SIGUSR2)  # asking again, it keeps only what is still orphaned

    async def _reload(self) -> None:
        if self.stopping or self.reloading:
            log.warning("SIGHUP: %s; ignored", "stopping" if self.stopping else "a reload is in progress")
            return
        self.reloading = True
        try:
            candidate = self.generation + 1
            log.info("SIGHUP: starting generation %d of %d workers", candidate, self.count)
            new = [Worker(i + 1, candidate) for i in range(self.count)]
            for w in new:
                self._start(w)
            if not await self._all_listen(new):
                log.error(
                    "SIGHUP: generation %d did not start (its log is above); generation %d keeps serving",
                    candidate,
                    self.generation,
                )
                for w in new:
                    if w.proc is not None and w.proc.returncode is None:
                        w.proc.send_signal(signal.SIGTERM)
                return
            old = [w for w in self.workers if w.generation == self.generation]
            self.generation = candidate
            log.info("SIGHUP: generation %d listens; draining generation %d", candidate, candidate - 1)
            for w in old:
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.send_signal(signal.SIGTERM)
        finally:
            self.reloading = False

    @staticmethod
    async def _all_listen(workers: list[Worker]) -> bool:
        """True once every worker listens; False as soon as one exits, or after RELOAD_TIMEOUT."""
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            if any(w.exited.is_set() for w in workers):
                return False
            if all(w.listening.is_set() for w in workers):
                return True
            await asyncio.sleep(0.05)
        return False

    def _stop(self, sig: int) -> None:
        if self.stopping:
            log.warning("second %s: stopping the workers now", signal.Signals(sig).name)
            for w in self.workers:
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.kill()
            return
        self.stopping = True
        log.info("%s: draining %d workers", signal.Signals(sig).name, len(self.workers))
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        # the workers close their copies as their drain begins: with ours closed too, the kernel refuses new
        # connections at once instead of queueing them for nobody
        self._stop_refusing()
        self.listeners.close()
        self._check_done()

    def _check_done(self) -> None:
        alive = any(w.proc is None or w.proc.returncode is None for w in self.workers)
        if self.stopping and not alive and self._done is not None and not self._done.done():
            self._done.set_result(None)
