"""fcntl and flock locks across two mounts of one export, and SQLite on both."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TwoMounts, requires_fuse, stop_process

pytestmark = requires_fuse


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMounts]:
    t = TwoMounts(tmp_path_factory.mktemp("locks"))
    yield t
    t.stop()


def _lockdata(kind: int, start: int = 0, length: int = 0) -> bytes:
    # struct flock on x86_64/aarch64: short type, short whence, off_t start, off_t len, pid_t
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0)


def _holder(fd: int, kind: int, start: int = 0, length: int = 0) -> int:
    got = fcntl.fcntl(fd, fcntl.F_GETLK, _lockdata(kind, start, length))
    return struct.unpack("hhqqi4x", got)[0]


def _other_process(code: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_fcntl_locks_conflict_across_mounts(two: TwoMounts) -> None:
    (two.a / "f").write_bytes(b"0" * 100)
    fd = os.open(two.a / "f", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)  # bytes 0-9 through mount a
        code = f"""
            import fcntl, os, struct
            fd = os.open({str(two.b / "f")!r}, os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 5)
                print("locked")
            except BlockingIOError:
                print("busy")
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 10)  # disjoint: fine
            got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 1, 0))
            print(struct.unpack("hhqqi4x", got)[0] == fcntl.F_WRLCK)
        """
        out = _other_process(code)
        assert out.stdout.split() == ["busy", "True"], out.stderr
        assert _holder(fd, fcntl.F_WRLCK, 50, 1) == fcntl.F_UNLCK  # nothing held there now
    finally:
        os.close(fd)  # closing drops this process's locks on the file
    out = _other_process(f"""
        import fcntl, os
        fd = os.open({str(two.b / "f")!r}, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
        print("locked")
    """)
    assert out.stdout.strip() == "locked", out.stderr


def lock_waiter(path: Path) -> subprocess.Popen[str]:
    """A process that takes a blocking exclusive lock of ``path`` and prints how long
    it waited."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(path)!r}, os.O_RDWR)
        t = time.monotonic()
        fcntl.lockf(fd, fcntl.LOCK_EX)
        print(round(time.monotonic() - t, 2))
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_blocking_lock_waits_for_the_other_mount(two: TwoMounts) -> None:
    (two.a / "w").write_bytes(b"x")
    fd = os.open(two.a / "w", os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    waiter = lock_waiter(two.b / "w")
    try:
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting
        os.close(fd)
        out, _ = waiter.communicate(timeout=15)
        assert float(out) >= 0.8
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(5)


def test_flock_across_mounts(two: TwoMounts) -> None:
    (two.a / "fl").write_bytes(b"")
    with open(two.a / "fl") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        out = _other_process(f"""
            import fcntl
            with open({str(two.b / "fl")!r}) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    print("locked")
                except BlockingIOError:
                    print("busy")
        """)
        assert out.stdout.strip() == "busy", out.stderr
    out = _other_process(f"""
        import fcntl
        with open({str(two.b / "fl")!r}) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("locked")
    """)
    assert out.stdout.strip() == "locked", out.stderr


def test_sqlite_on_two_mounts_stays_consistent(two: TwoMounts) -> None:
    db_a, db_b = two.a / "shared.db", two.b / "shared.db"
    _other_process(f"""
        import sqlite3
        c = sqlite3.connect({str(db_a)!r})
        c.execute("create table t (who text, n integer)")
        c.commit()
    """)
    writer = """
        import sqlite3, sys
        c = sqlite3.connect(sys.argv[1], timeout=30)
        for i in range(150):
            with c:
                c.execute("insert into t values (?, ?)", (sys.argv[2], i))
        print("done")
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(writer), str(db), who],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for db, who in ((db_a, "a"), (db_b, "b"))]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert out.strip() == "done", err
    check = _other_process(f"""
        import sqlite3
        c = sqlite3.connect({str(db_b)!r})
        print(c.execute("pragma integrity_check").fetchone()[0])
        print(c.execute("select who, count(*) from t group by who order by who").fetchall())
    """)
    lines = check.stdout.splitlines()
    assert lines[0] == "ok", check.stderr
    assert lines[1] == "[('a', 150), ('b', 150)]"


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[TwoMounts]:
    """Two mounts with a 2 s network time-out."""
    t = TwoMounts(tmp_path, "timeout=2")
    yield t
    t.stop()


def test_a_blocking_lock_waits_longer_than_the_time_out_while_it_is_held(
    quick: TwoMounts,
) -> None:
    """The server says it is still waiting (PENDING): waiting for another holder is
    not silence, however long it lasts."""
    (quick.a / "w").write_bytes(b"x")
    fd = os.open(quick.a / "w", os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    waiter = lock_waiter(quick.b / "w")
    try:
        time.sleep(5.0)  # (2.5 time-outs)
        assert waiter.poll() is None, waiter.communicate()
        os.close(fd)
        out, err = waiter.communicate(timeout=15)
        assert float(out) >= 4.5, err
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(5)


def test_a_blocking_lock_on_a_silent_server_ends_with_etimedout(quick: TwoMounts) -> None:
    """A stopped server (SIGSTOP) ends a waiting fcntl lock with ETIMEDOUT after the
    time-out, not never; once it answers again the lock can be taken (what it may
    have granted late was given back)."""
    (quick.a / "s").write_bytes(b"x")
    fd = os.open(quick.a / "s", os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    waiter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import errno, fcntl, os, time
        fd = os.open({str(quick.b / 's')!r}, os.O_RDWR)
        t = time.monotonic()
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            print("locked", round(time.monotonic() - t, 1))
        except OSError as e:
            print(errno.errorcode[e.errno], round(time.monotonic() - t, 1))
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1.0)
        stop_process(quick.server.pid)
        try:
            out, err = waiter.communicate(timeout=30)
        finally:
            os.kill(quick.server.pid, signal.SIGCONT)
        what, took = out.split()
        assert what == "ETIMEDOUT" and float(took) < 20, (out, err)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(5)
        os.close(fd)
    out = _other_process(f"""
        import fcntl, os
        fd = os.open({str(quick.b / "s")!r}, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked")
    """)
    assert out.stdout.strip() == "locked", out.stderr
