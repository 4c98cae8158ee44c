"""A busy machine is not a stuck one: the stall budget and --block-limit count the loop thread's work, never
the time it waited for a core or was stopped (runtime/threadclock.py; issue 29)."""

from __future__ import annotations

import signal
import socket
import threading
import time

from runtime.threadclock import ThreadClock, Work

SPIN_APP = """
local net = require "moonlet.net"
net.listen { host = "127.0.0.1", port = 0, handler = function(conn)
  while true do
    local line = conn:readline()
    if not line then return end
    if line == "spin" then  -- 0.4 s of CPU without yielding: under the 1 s budget
      local until_cpu = os.clock() + 0.4
      while os.clock() < until_cpu do end
    end
    conn:write(line, " done\\n")
  end
end }
"""


def test_a_stopped_worker_is_not_stuck_it_finishes_its_run_and_keeps_serving(lua_server) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP in the middle of a Lua run and while idle, each for longer than the stall budget and the block
    limit (Ctrl-Z then fg, a debugger, a paused container): the run finishes, nothing is reported stalled or
    blocked, and the process goes on serving."""
    server = lua_server(SPIN_APP, options=["--stall-budget", "1", "--block-limit", "1.5"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        f = s.makefile("rb")
        s.sendall(b"spin\n")
        time.sleep(0.15)  # (inside the spin now)
        server.proc.send_signal(signal.SIGSTOP)
        time.sleep(2.5)
        server.proc.send_signal(signal.SIGCONT)
        assert f.readline() == b"spin done\n"
        server.proc.send_signal(signal.SIGSTOP)  # and stopped while idle
        time.sleep(2.5)
        server.proc.send_signal(signal.SIGCONT)
        s.sendall(b"ping\n")
        assert f.readline() == b"ping done\n"
    assert server.proc.poll() is None
    text = server.log_text()
    assert "stalled" not in text and "blocked for" not in text, text[-2000:]
    assert "of it working: the process waited for a CPU (a busy machine) or was stopped" in text, text[-2000:]


def test_work_counts_cpu_and_calls_asleep_never_a_wait_for_a_core() -> None:
    """The thread clock's figures: a spin counts its CPU; time asleep inside a call counts (a blocking read
    on the loop thread holds every connection as a spin does); one sample counts at most two periods."""
    clock = ThreadClock.here()
    work = Work(clock, period=0.05)
    work.start()
    until = time.thread_time() + 0.1
    while time.thread_time() < until:
        pass
    spun = work.sample()
    assert 0.09 <= spun < 0.5 and clock.state() == "R", spun  # (this thread: running)

    sleeper = threading.Thread(target=time.sleep, args=(1.0,))
    sleeper.start()
    assert sleeper.ident is not None and sleeper.native_id is not None
    asleep = Work(ThreadClock(sleeper.ident, sleeper.native_id), period=0.05)
    asleep.start()
    for _ in range(6):
        time.sleep(0.05)
        asleep.sample()
    assert 0.2 <= asleep.done <= 0.7 and asleep.cpu_done < 0.05, (asleep.done, asleep.cpu_done)
    time.sleep(0.3)  # a sample that comes late (its watchdog was stopped or starved) counts two periods
    before = asleep.done
    asleep.sample()
    assert asleep.done - before <= 0.1 + 1e-6
    sleeper.join()
