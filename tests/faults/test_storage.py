"""The database's storage fails under a running server: the disk fills up; the filesystem is read-only.

Each runs the database on a small tmpfs of its own (mounting needs root, as in CI). Full: the app keeps
writing until a clear error, keeps reading, and writes again once space is freed. Read-only (a mounted
filesystem cannot turn read-only under open files, so the server starts on one): a clear error, the server
goes on, and once the filesystem is writable the next statement opens the database and every
acknowledged write is on disk.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT

WRITER = """
local db, time = require "moonlet.db", require "moonlet.time"
assert(db.exec("CREATE TABLE t (x BLOB)"))
local blob = db.blob(("x"):rep(16 * 1024))
local function until_write(ok_wanted, what)
  for _ = 1, 600 do
    local ok, err = db.exec("INSERT INTO t VALUES (?)", blob)
    if (ok ~= nil) == ok_wanted then return err end
    time.sleep(0.02)
  end
  error("gave up waiting for " .. what)
end
print("WRITING")
local err = until_write(false, "the fault")
print("FAILED " .. err)
print("READS " .. #assert(db.query("SELECT rowid FROM t LIMIT 3")))
until_write(true, "the end of the fault")
print("WRITES AGAIN")
"""


@pytest.fixture
def small_fs() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="moonlet-fs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def start(tmp: Path, db: Path, source: str = WRITER) -> subprocess.Popen[str]:
    app = tmp / "writer.lua"
    app.write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", "--workers", "1", "--no-console", "--db", str(db), str(app)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> None:
    _, log = proc.communicate(timeout=20)
    assert proc.returncode == 0, log[-2000:]


def expect(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith(prefix):
        proc.kill()
        raise AssertionError(f"expected {prefix!r}, got {line!r}; log:\n{proc.communicate()[1][-2000:]}")
    return line


def test_a_full_disk_is_an_error_and_writes_resume_once_space_is_freed(
    small_fs: Path, tmp_path: Path
) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (512 * 1024))  # what the operator will free
    proc = start(tmp_path, small_fs / "app.db")
    expect(proc, "WRITING")
    assert expect(proc, "FAILED") == "FAILED database error: database or disk is full"
    expect(proc, "READS 3")
    filler.unlink()
    expect(proc, "WRITES AGAIN")
    finish(proc)


READ_ONLY = """
local db, time = require "moonlet.db", require "moonlet.time"
local ok, err = db.exec("INSERT INTO t VALUES (2)")
print("FAILED " .. tostring(err))
local wrote, last
for _ = 1, 300 do                              -- the server goes on meanwhile; the database is retried
  wrote, last = db.exec("INSERT INTO t VALUES (3)")
  if wrote then break end
  time.sleep(0.02)
end
if not wrote then print("STILL FAILING " .. tostring(last)) return end
local rows = assert(db.query("SELECT x FROM t ORDER BY x"))
local xs = {} for i, r in ipairs(rows) do xs[i] = tostring(r.x) end
print("WRITES AGAIN " .. table.concat(xs, ","))
"""


def test_a_read_only_filesystem_is_an_error_and_the_database_opens_once_writable(
    small_fs: Path, tmp_path: Path
) -> None:
    with sqlite3.connect(small_fs / "app.db") as prepared:
        prepared.execute("PRAGMA journal_mode = WAL")
        prepared.execute("CREATE TABLE t (x)")
        prepared.execute("INSERT INTO t VALUES (1)")
    prepared.close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        proc = start(tmp_path, small_fs / "app.db", READ_ONLY)
        # WAL needs its -shm file writable, so on a read-only filesystem even reading cannot open
        assert expect(proc, "FAILED") == "FAILED database error: unable to open database file"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    again = expect(proc, "WRITES AGAIN")
    finish(proc)
    with sqlite3.connect(small_fs / "app.db") as check:
        stored = [r[0] for r in check.execute("SELECT x FROM t ORDER BY x")]
    assert again == "WRITES AGAIN 1,3" and stored == [1, 3]  # acknowledged, visible, and on disk
