"""``moonlet run --workers N``: N worker processes serving the same ports, supervised.

* The default, ``--workers auto``, is one worker per core, started lazily: worker 1 runs the app, and
  only once it listens are the others started. An app that never listens is a script: it runs once, and
  its exit status is the command's.

* Each worker is an ordinary ``moonlet run --workers 1`` process; its listeners take their sockets from the
  supervisor (runtime/listeners.py), so every worker accepts from the same queue and a draining worker
  loses none of the connections waiting in it.
* A worker that dies is started again after a back-off (1 s, doubling up to 30 s, back to 1 s once a worker
  has lived a minute); each death and restart is logged.
* SIGTERM/SIGINT: every worker drains (as a single process does) and the supervisor exits 0 when all have.
* SIGHUP: a new generation of workers is started; once each has said it is listening, the old generation
  drains. The listening sockets stay open throughout, so no connection is refused or reset.
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
import sys
import tempfile
import time

from runtime.listeners import ListenerRegistry

log = logging.getLogger("moonlet")

MAX_BACKOFF = 30.0
HEALTHY_AFTER = 60.0  # a worker that lived this long resets the back-off


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
        self.index = index
        self.generation = generation
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.listening = asyncio.Event()

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
        self.backoff = 1.0
        self.shared_dir = tempfile.mkdtemp(prefix="moonlet-shared-")
        self.listeners = ListenerRegistry(self.shared_dir)
        self._done: asyncio.Future[None] | None = None

    def run(self) -> int:
        try:
            asyncio.run(self._main())
        finally:
            self.listeners.close()
            shutil.rmtree(self.shared_dir, ignore_errors=True)
        return self.exit_status

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._stop, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))
        if self.widened:
            log.info("supervisor %d: starting %d workers", os.getpid(), self.count)
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
            if b" listening on " in line and not worker.listening.is_set():
                worker.listening.set()
                if not self.widened and not self.stopping:
                    self._widen()
        status = await worker.proc.wait()
        worker.listening.set()
        if worker in self.workers:
            self.workers.remove(worker)
        if not self.widened and not self.stopping:  # a script: it ran once, its status is ours
            self.exit_status = status if status >= 0 else 128 - status
            self.stopping = True
        if self.stopping or worker.generation != self.generation:
            self._check_done()
            return
        lived = time.monotonic() - worker.started
        if lived >= HEALTHY_AFTER:
            self.backoff = 1.0
        log.warning(
            "%s (pid %d) exited with status %s after %.1fs; starting it again in %.0fs",
            worker.name,
            worker.proc.pid,
            status,
            lived,
            self.backoff,
        )
        delay, self.backoff = self.backoff, min(self.backoff * 2, MAX_BACKOFF)
        await asyncio.sleep(delay)
        if not self.stopping:
            self._start(Worker(worker.index, worker.generation))
        else:
            self._check_done()

    async def _reload(self) -> None:
        if self.stopping:
            return
        old = [w for w in self.workers if w.generation == self.generation]
        self.generation += 1
        log.info(
            "SIGHUP: starting generation %d of %d workers, then draining the old ones",
            self.generation,
            self.count,
        )
        new = [Worker(i + 1, self.generation) for i in range(self.count)]
        for w in new:
            self._start(w)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(w.listening.wait() for w in new)), 30)
        for w in old:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)

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
        self._check_done()

    def _check_done(self) -> None:
        alive = any(w.proc is None or w.proc.returncode is None for w in self.workers)
        if self.stopping and not alive and self._done is not None and not self._done.done():
            self._done.set_result(None)
