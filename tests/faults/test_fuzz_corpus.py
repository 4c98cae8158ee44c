"""The HTTP fuzz target's checked-in corpus, replayed through the same in-process target (no atheris needed),
so that the target keeps working and every input once found stays handled."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

REPLAY = """
import sys
from pathlib import Path
sys.path.insert(0, "tests/fuzz")
from http_target import Target
target = Target()
for path in sorted(Path("tests/fuzz/corpus/http").iterdir()):
    out = target.feed(path.read_bytes())
    print(path.name, out.split(b"\\r\\n", 1)[0].decode() if out else "-", out.count(b"HTTP/1.1 "))
"""


def test_the_fuzz_corpus_replays_with_every_invariant_holding() -> None:
    done = subprocess.run(
        [sys.executable, "-c", REPLAY], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert answers["get"] == "HTTP/1.1 200 OK 1"
    assert answers["pipelined"] == "HTTP/1.1 200 OK 2"
    assert answers["chunked"] == "HTTP/1.1 200 OK 1"
    # the body came with the headers: no 100 Continue is owed (RFC 9110 10.1.1); tests/test_http.py has the
    # exchange where the client waits for it
    assert answers["expect"] == "HTTP/1.1 200 OK 1"
    assert answers["fail"] == "HTTP/1.1 500 Internal Server Error 1"  # then closed: the handler failed
    assert answers["too_big"].startswith("HTTP/1.1 413")
    assert answers["bad"].startswith("HTTP/1.1 400")
    assert answers["notfound_method"] == "HTTP/1.1 405 Method Not Allowed 2"
