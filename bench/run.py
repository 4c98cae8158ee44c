"""moonlet benchmarks: one command, every figure measured in the same run against the raw baseline.

    python bench/run.py pong     # redis-benchmark ping_inline -c 50, -P 1 and -P 16: kv.lua vs raw uvloop
    python bench/run.py idle     # process memory per idle connection at 10,000 connections (kv, echo, raw)
    python bench/run.py idle --answered 10000   # the same after every connection has answered once
    python bench/run.py tasks    # spawn+wait, queue round trip, wake-up lateness of 100,000 sleepers
    python bench/run.py blocking # echo p99 beside slow queries and CPU jobs; 10 ms blocking calls vs sleep
    python bench/run.py loadgen  # moonlet bench vs redis-benchmark on the pong workload: req/s, client CPU
    python bench/run.py http     # wrk: hello_http.lua vs nginx + Lua vs raw uvloop; idle keep-alive memory
    python bench/run.py https    # wrk over TLS: hello_http.lua vs nginx, one certificate; idle TLS memory
    python bench/run.py ws       # WebSocket echo messages/s: moonlet vs the websockets library on uvloop
    python bench/run.py peers    # the pong workload also against 2 moonlet workers, redis-server, Node.js,
                                 # Tarantool
    python bench/run.py all

Each server is pinned to CPU 0 and the load generator to CPU 1 (when the machine has two or more).
"server CPU us/req" is the server process's user+system CPU time during the run divided by the requests
served, read from /proc/PID/stat. Every figure is the median of --runs runs. Results are printed as a table
and written as JSON to bench/results/.

Instructions per request (deterministic, so a change can be judged on a busy machine) come from
bench/instructions.py, which runs the same pong workload under valgrind's callgrind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import (  # bench/harness.py: what every benchmark shares
    PIN_CLIENT,
    PIN_SERVER,
    PYTHON,
    ROOT,
    cpu_seconds,
    free_port,
    moonlet,
    redis_benchmark,
    rss_bytes,
    running,
    wait_port,
)

SERVERS = {  # (moonlet on each engine: README, Engines)
    "moonlet kv.lua": lambda port: moonlet(str(ROOT / "apps" / "kv.lua"), "--port", str(port)),
    "moonlet kv.lua, luajit": lambda port: moonlet(
        "--engine", "luajit", str(ROOT / "apps" / "kv.lua"), "--port", str(port)
    ),
    "raw uvloop": lambda port: [PYTHON, str(ROOT / "bench" / "raw_pong.py"), str(port)],
}
IDLE_ONLY = {  # `bench/run.py idle` also holds idle connections to these (a line echo answers PING with PING)
    "moonlet echo.lua": lambda port: moonlet(str(ROOT / "apps" / "echo.lua"), "--port", str(port)),
    "moonlet echo.lua, luajit": lambda port: moonlet(
        "--engine", "luajit", str(ROOT / "apps" / "echo.lua"), "--port", str(port)
    ),
}
PEERS = {  # `bench/run.py peers`: the same pong workload against other servers, where installed
    # (kv.lua keeps its store in one process, so it runs as one: two workers serve a stateless pong)
    "moonlet pong_server.lua, 2 workers": lambda port: moonlet(
        "--no-console", str(ROOT / "bench" / "lua" / "pong_server.lua"), "--port", str(port), workers=2
    ),
    "redis-server": lambda port: [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "no",  # (idle clients come from 127.0.0.2, ..., which protected mode refuses)
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
    ],
    "node": lambda port: ["node", str(ROOT / "bench" / "node_pong.js"), str(port)],
    "tarantool": lambda port: ["tarantool", str(ROOT / "bench" / "tarantool_pong.lua"), str(port)],
}


@contextlib.contextmanager
def server(name: str) -> Iterator[tuple[int, int]]:
    port = free_port()
    with running({**SERVERS, **IDLE_ONLY, **PEERS}[name](port), port) as started:
        yield started


def bench_pong(runs: int, n1: int, n16: int, names: list[str] | None = None) -> list[dict[str, object]]:
    rows = []
    for pipeline, n in ((1, n1), (16, n16)):
        for name in names or list(SERVERS):
            rps, cpu = [], []
            with server(name) as (pid, port):
                redis_benchmark(port, max(n // 10, 1000), pipeline)  # warm-up
                for _ in range(runs):
                    before = cpu_seconds(pid)
                    rps.append(redis_benchmark(port, n, pipeline))
                    cpu.append((cpu_seconds(pid) - before) / n * 1e6)
            rows.append(
                {
                    "workload": f"ping_inline -c 50 -P {pipeline}",
                    "server": name,
                    "requests_per_s": statistics.median(rps),
                    "server_cpu_us_per_req": statistics.median(cpu),
                    "runs": runs,
                    "n": n,
                }
            )
    return rows


def hold_connections(port: int, count: int) -> list[socket.socket]:
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind((f"127.0.0.{2 + i % 200}", 0))  # many source addresses: no ephemeral port shortage
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def check_served(socks: list[socket.socket], sample: int) -> None:
    step = max(len(socks) // sample, 1)
    for s in socks[::step]:
        s.sendall(b"PING\r\n")
        s.settimeout(10)
        if (got := s.recv(64)) not in (b"+PONG\r\n", b"PING\n"):  # a PONG server, or a line echo
            raise RuntimeError(f"an idle connection was not served: {got!r}")


def bench_idle(
    runs: int, count: int, names: list[str] | None = None, answered: int = 100
) -> list[dict[str, object]]:
    """Process memory (RSS) per idle connection of single-process servers, ``answered`` of them (spread
    evenly) answering one request before the figure is read: the rest wait for their first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for name in names or list(SERVERS):
        per_conn = []
        for _ in range(runs):
            with server(name) as (pid, port):
                check_served(hold_connections(port, 10), 10)  # warm every code path once
                time.sleep(0.3)
                before = rss_bytes(pid)
                socks = hold_connections(port, count)
                try:
                    # (the last one answered first: every connection has been accepted before any is
                    # answered, so the figure does not depend on how accepts and answers interleave in the
                    # allocator: answering while accepting left echo.lua ~800 B a connection more)
                    check_served(socks[-1:], 1)
                    check_served(socks, answered)
                    time.sleep(0.5)
                    per_conn.append((rss_bytes(pid) - before) / count)
                finally:
                    for s in socks:
                        s.close()
        rows.append(
            {
                "workload": f"idle connections ({count}, {min(answered, count)} answered)",
                "server": name,
                "bytes_per_connection": statistics.median(per_conn),
                "runs": runs,
            }
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return rows


def bench_tasks(runs: int, sleepers: int) -> list[dict[str, object]]:
    """Run bench/lua/tasks.lua (pinned like a server) and take the median of each figure it prints."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        proc = subprocess.run(
            [
                *PIN_SERVER,
                PYTHON,
                "-m",
                "runtime",
                "run",
                "--workers",
                "1",
                "bench/lua/tasks.lua",
                "--sleepers",
                str(sleepers),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        for line in proc.stdout.splitlines():
            name, value = line.split()
            samples.setdefault(name, []).append(float(value))
    return [
        {"workload": "tasks", "figure": k, "value": statistics.median(v), "runs": runs}
        for k, v in samples.items()
    ]


async def _clients(port: int, count: int, request: bytes, seconds: float) -> int:
    """``count`` connections each sending ``request`` and awaiting the reply, for ``seconds``; replies."""
    import asyncio

    done = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            writer.write(request)
            await reader.readline()
            done += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return done


def _echo_p99(port: int, count: int = 1000) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        f = sock.makefile("rwb")
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            f.write(b"ping\n")
            f.flush()
            f.readline()
            times.append(time.perf_counter() - t0)
            time.sleep(0.001)
    return statistics.quantiles(times, n=100)[98]


def bench_blocking(seconds: float) -> list[dict[str, object]]:
    """bench/lua/mixed.lua, not pinned (its pools use every core): latency and blocking throughput."""
    import asyncio
    import tempfile
    import threading

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cmd = moonlet("--db", f"{tmp}/mixed.db")
        cmd += ["--pool", "io=64", "--python", str(ROOT / "bench" / "hostfns.py")]
        spin = ["--spin", "35000000"]  # about one second of CPU here
        proc = subprocess.Popen(
            [*cmd, str(ROOT / "bench" / "lua" / "mixed.lua"), "--port", str(port), *spin], cwd=ROOT
        )
        try:
            wait_port(port)
            unloaded = _echo_p99(port)
            stop = threading.Event()
            slow: list[float] = []

            def load(kind: bytes) -> None:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    f = sock.makefile("rwb")
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        f.write(kind)
                        f.flush()
                        f.readline()
                        if kind == b"slow\n":
                            slow.append(time.perf_counter() - t0)

            workers = [threading.Thread(target=load, args=(k,)) for k in [b"slow\n"] * 4 + [b"cpu\n"] * 2]
            for w in workers:
                w.start()
            time.sleep(0.5)
            loaded = _echo_p99(port)
            stop.set()
            for w in workers:
                w.join(60)
            rows.append({"workload": "blocking", "figure": "echo_p99_unloaded_ms", "value": unloaded * 1e3})
            rows.append({"workload": "blocking", "figure": "echo_p99_loaded_ms", "value": loaded * 1e3})
            rows.append(
                {
                    "workload": "blocking",
                    "figure": "slow_query_median_ms",
                    "value": statistics.median(slow) * 1e3,
                }
            )
            one = _timed_requests(port, [b"cpu\n"])
            two = _timed_requests(port, [b"cpu\n", b"cpu\n"])
            rows.append({"workload": "blocking", "figure": "one_cpu_job_s", "value": one})
            rows.append({"workload": "blocking", "figure": "two_cpu_jobs_at_once_s", "value": two})
            blocked = asyncio.run(_clients(port, 50, b"block\n", seconds)) / seconds
            slept = asyncio.run(_clients(port, 50, b"sleep\n", seconds)) / seconds
            rows.append({"workload": "blocking", "figure": "block_10ms_req_per_s", "value": blocked})
            rows.append({"workload": "blocking", "figure": "sleep_10ms_req_per_s", "value": slept})
            rows.append({"workload": "blocking", "figure": "block_vs_sleep_ratio", "value": blocked / slept})
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def moonlet_bench(seconds: float, script: str, *args: str) -> dict[str, Any]:
    """`moonlet bench --json -c 50` for `seconds` with a load script, pinned like every load generator."""
    proc = subprocess.run(
        [
            *PIN_CLIENT,
            PYTHON,
            "-m",
            "runtime",
            "bench",
            "--json",
            "-c",
            "50",
            "-d",
            str(seconds),
            script,
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=seconds + 120,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_loadgen(seconds: float) -> list[dict[str, object]]:
    """The same pong workload generated by redis-benchmark and by moonlet bench (both pinned to CPU 1)."""
    rows: list[dict[str, object]] = []
    with server("moonlet kv.lua") as (_pid, port):
        for pipeline in (1, 16):
            n = int(60_000 * seconds) * (4 if pipeline > 1 else 1)
            before = _children_cpu()
            rps = redis_benchmark(port, n, pipeline)
            cpu = _children_cpu() - before
            rows.append(
                {"workload": "loadgen", "figure": f"redis-benchmark -P {pipeline} req/s", "value": rps}
            )
            rows.append(
                {
                    "workload": "loadgen",
                    "figure": f"redis-benchmark -P {pipeline} client µs/req",
                    "value": cpu / n * 1e6,
                }
            )
            before = _children_cpu()
            result = moonlet_bench(
                seconds, "bench/load/pong.lua", "--port", str(port), "--pipeline", str(pipeline)
            )
            cpu = _children_cpu() - before
            requests = result["transactions"] * pipeline
            rows.append(
                {
                    "workload": "loadgen",
                    "figure": f"moonlet bench -P {pipeline} req/s",
                    "value": requests / result["seconds"],
                }
            )
            rows.append(
                {
                    "workload": "loadgen",
                    "figure": f"moonlet bench -P {pipeline} client µs/req",
                    "value": cpu / requests * 1e6,
                }
            )
    return rows


def _wrk(port: int, seconds: float, scheme: str = "http") -> float:
    out = subprocess.run(
        [*PIN_CLIENT, "wrk", "-t1", "-c50", f"-d{seconds:g}s", f"{scheme}://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    return float(out.split("Requests/sec:")[1].split()[0])


@contextlib.contextmanager
def http_server(kind: str, tmp: str) -> Iterator[tuple[int, int]]:
    port = free_port()
    if kind == "moonlet hello_http.lua":
        cmd = moonlet(str(ROOT / "apps" / "hello_http.lua"), "--port", str(port))
    elif kind == "moonlet hello_http.lua, luajit":
        cmd = moonlet("--engine", "luajit", str(ROOT / "apps" / "hello_http.lua"), "--port", str(port))
    elif kind == "raw uvloop":
        cmd = [PYTHON, str(ROOT / "bench" / "raw_http.py"), str(port)]
    else:
        conf = Path(tmp) / "nginx.conf"
        text = (ROOT / "bench" / "nginx" / "hello.conf.in").read_text()
        conf.write_text(text.replace("@PORT@", str(port)).replace("@DIR@", tmp))
        cmd = ["nginx", "-c", str(conf), "-p", tmp]
    with running(cmd, port) as started:
        yield started


def _idle_keepalive(port: int, pid: int, count: int, tls: bool = False) -> float:
    """Bytes of server RSS per idle keep-alive connection (each has made one request), over TLS with ``tls``
    (the certificate is not checked: it is the benchmark's own)."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    before = rss_bytes(pid)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        if tls:
            s = ctx.wrap_socket(s)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.settimeout(10)
        got = b""
        while b"hello" not in got:
            got += s.recv(4096)
    time.sleep(1)
    per = (rss_bytes(pid) - before) / count
    for s in socks:
        s.close()
    return per


def bench_http(seconds: float, conns: int) -> list[dict[str, object]]:
    import tempfile

    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    kinds = ["moonlet hello_http.lua", "moonlet hello_http.lua, luajit", "raw uvloop"]
    if shutil.which("nginx") and Path("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists():
        kinds.append("nginx + lua (1 worker)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows: list[dict[str, object]] = []
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp, http_server(kind, tmp) as (pid, port):
            _wrk(port, 1)  # warm-up
            before = cpu_seconds(pid)
            rps = _wrk(port, seconds)
            cpu = (cpu_seconds(pid) - before) / (rps * seconds) * 1e6
            idle = _idle_keepalive(port, pid, conns) if kind != "nginx + lua (1 worker)" else None
            if kind == "moonlet hello_http.lua":
                load = moonlet_bench(seconds, "bench/load/http_hello.lua", "--port", str(port))
                rows.append(
                    {
                        "workload": "http",
                        "figure": "moonlet bench vs hello_http req/s",
                        "value": load["transactions_per_s"],
                    }
                )
            rows.append({"workload": "http", "figure": f"{kind}: wrk req/s", "value": rps})
            rows.append({"workload": "http", "figure": f"{kind}: server CPU µs/req", "value": cpu})
            if idle is not None:
                rows.append(
                    {"workload": "http", "figure": f"{kind}: bytes per idle keep-alive conn", "value": idle}
                )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return rows


def _certificate(tmp: str) -> tuple[str, str]:
    """A self-signed EC P-256 certificate for 127.0.0.1 (both servers of `https` use it)."""
    cert, key = f"{tmp}/cert.pem", f"{tmp}/key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def bench_https(seconds: float, conns: int) -> list[dict[str, object]]:
    """HTTPS hello with keep-alive (wrk -c50), moonlet against nginx with the same certificate and the
    protocol and cipher both negotiate with wrk (TLS 1.3, AES-256-GCM here); server CPU per request."""
    import tempfile

    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _certificate(tmp)
        kinds = ["moonlet hello_http.lua"] + (["nginx (1 worker)"] if shutil.which("nginx") else [])
        for kind in kinds:
            port = free_port()
            if kind.startswith("moonlet"):
                cmd = moonlet(str(ROOT / "apps" / "hello_http.lua"), "--port", str(port), "--cert", cert,
                              "--key", key)  # fmt: skip
            else:
                conf = Path(tmp) / "nginx.conf"
                text = (ROOT / "bench" / "nginx" / "hello_tls.conf.in").read_text()
                for k, v in {"@PORT@": str(port), "@DIR@": tmp, "@CERT@": cert, "@KEY@": key}.items():
                    text = text.replace(k, v)
                conf.write_text(text)
                cmd = ["nginx", "-c", str(conf), "-p", tmp]
            with running(cmd, port) as (pid, _):
                _wrk(port, 1, "https")  # warm-up
                before = cpu_seconds(pid)
                rps = _wrk(port, seconds, "https")
                cpu = (cpu_seconds(pid) - before) / (rps * seconds) * 1e6
                rows.append({"workload": "https", "figure": f"{kind}: wrk req/s", "value": rps})
                rows.append({"workload": "https", "figure": f"{kind}: server CPU µs/req", "value": cpu})
                if kind.startswith("moonlet"):
                    idle = _idle_keepalive(port, pid, conns, tls=True)
                    rows.append(
                        {
                            "workload": "https",
                            "figure": f"{kind}: bytes per idle TLS connection",
                            "value": idle,
                        }
                    )
    return rows


def bench_ws(seconds: float) -> list[dict[str, object]]:
    """WebSocket echo of 16-byte text messages, 50 clients (the websockets library, pinned to the client
    CPU): moonlet's bench/lua/ws_echo.lua against bench/ws_peer.py (the websockets library on uvloop)."""
    rows: list[dict[str, object]] = []
    servers = {
        "moonlet ws_echo.lua": lambda port: moonlet(
            str(ROOT / "bench" / "lua" / "ws_echo.lua"), "--port", str(port)
        ),
        "websockets on uvloop": lambda port: [PYTHON, str(ROOT / "bench" / "ws_peer.py"), str(port)],
    }
    for kind, make in servers.items():
        port = free_port()
        with running(make(port), port) as (pid, _):
            client = [*PIN_CLIENT, PYTHON, str(ROOT / "bench" / "ws_client.py"), str(port), "50"]
            subprocess.run([*client, "1"], check=True, capture_output=True)  # warm-up
            before = cpu_seconds(pid)
            done = int(subprocess.run([*client, f"{seconds:g}"], check=True, capture_output=True,
                                      text=True).stdout)  # fmt: skip
            cpu = (cpu_seconds(pid) - before) / done * 1e6
            rows.append({"workload": "ws", "figure": f"{kind}: echoed messages/s", "value": done / seconds})
            rows.append({"workload": "ws", "figure": f"{kind}: server CPU µs/message", "value": cpu})
    return rows


def _timed_requests(port: int, requests: list[bytes]) -> float:
    """Wall time for ``requests`` sent at once, each on its own connection, until every reply is in."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in requests]
    t0 = time.perf_counter()
    for sock, req in zip(socks, requests, strict=True):
        sock.sendall(req)
    for sock in socks:
        sock.makefile("rb").readline()
        sock.close()
    return time.perf_counter() - t0


def report(rows: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="moonlet benchmarks (median of runs)")
    for col in ("workload", "server", "req/s", "server CPU µs/req", "bytes/idle conn", "vs raw"):
        table.add_column(col, justify="left" if col in ("workload", "server") else "right")
    raw = {r["workload"]: r for r in rows if r.get("server") == "raw uvloop"}
    figures = [r for r in rows if "figure" in r]
    for r in (r for r in rows if "figure" not in r):
        base = raw.get(r["workload"])
        if "requests_per_s" in r:
            ratio = (
                ""
                if base is None or base is r
                else (
                    f"{r['requests_per_s'] / base['requests_per_s']:.2f}x req/s, "  # type: ignore[operator]
                    f"{r['server_cpu_us_per_req'] / base['server_cpu_us_per_req']:.2f}x CPU"
                )
            )  # type: ignore[operator]
            table.add_row(
                str(r["workload"]),
                str(r["server"]),
                f"{r['requests_per_s']:,.0f}",
                f"{r['server_cpu_us_per_req']:.2f}",
                "",
                ratio,
            )
        else:
            ratio = (
                ""
                if base is None or base is r
                else (f"{r['bytes_per_connection'] / base['bytes_per_connection']:.2f}x")
            )  # type: ignore[operator]
            table.add_row(
                str(r["workload"]), str(r["server"]), "", "", f"{r['bytes_per_connection']:,.0f}", ratio
            )
    console = Console(width=150)
    if len(figures) < len(rows):
        console.print(table)
    if figures:
        tasks = Table(title="moonlet figures (tasks: median of runs; blocking: one run)")
        tasks.add_column("figure")
        tasks.add_column("value", justify="right")
        for r in figures:
            tasks.add_row(str(r["figure"]), f"{r['value']:,.3f}")
        console.print(tasks)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what",
        choices=["pong", "idle", "tasks", "blocking", "loadgen", "http", "https", "ws", "peers", "all"],
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=200_000, help="requests per -P 1 run")
    parser.add_argument("--n-pipelined", type=int, default=2_000_000, help="requests per -P 16 run")
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument(
        "--answered", type=int, default=100, help="idle connections that answer a request before the figure"
    )
    parser.add_argument("--sleepers", type=int, default=100_000, help="sleeping tasks in the tasks run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each blocking throughput run")
    ns = parser.parse_args()
    if ns.what in ("pong", "idle", "loadgen", "all") and shutil.which("redis-benchmark") is None:
        sys.exit("redis-benchmark not found: apt-get install redis-tools")
    rows: list[dict[str, object]] = []
    if ns.what in ("pong", "all"):
        rows += bench_pong(ns.runs, ns.n, ns.n_pipelined)
    if ns.what in ("idle", "all"):
        rows += bench_idle(ns.runs, ns.conns, [*SERVERS, *IDLE_ONLY], ns.answered)
    if ns.what in ("tasks", "all"):
        rows += bench_tasks(ns.runs, ns.sleepers)
    if ns.what in ("blocking", "all"):
        rows += bench_blocking(ns.seconds)
    if ns.what in ("loadgen", "all"):
        rows += bench_loadgen(ns.seconds)
    if ns.what in ("peers", "all"):
        installed = [n for n in PEERS if n.startswith("moonlet") or shutil.which(PEERS[n](0)[0])]
        rows += bench_pong(ns.runs, ns.n, ns.n_pipelined, [*SERVERS, *installed])
        single = [n for n in installed if not n.startswith("moonlet")]  # (RSS of one process)
        rows += bench_idle(ns.runs, min(ns.conns, 10_000), [*SERVERS, *single])
    if ns.what in ("http", "all"):
        rows += bench_http(ns.seconds * 2, min(ns.conns, 5000))
    if ns.what in ("https", "all"):
        rows += bench_https(ns.seconds * 2, min(ns.conns, 2000))
    if ns.what in ("ws", "all"):
        rows += bench_ws(ns.seconds)
    report(rows)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{time.strftime('%Y%m%d-%H%M%S')}-{ns.what}.json"
    path.write_text(
        json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(), "rows": rows}, indent=2)
    )
    print(f"results: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
