"""Advisory locks across clients: the server's lock table and the library API."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from conftest import address_of, make_client
from pohmelfs import Client
from pohmelfs.server.locks import END, RDLCK, UNLCK, WRLCK, AdvisoryLocks, Lock
from pohmelfs.server.service import Server


def lk(owner: int, type_: int, start: int, end: int, flock: bool = False) -> Lock:
    return Lock((1, owner), type_, start, end, 100 + owner, flock)


def test_shared_coexist_exclusive_conflicts() -> None:
    t = AdvisoryLocks()
    t.set("f", lk(1, RDLCK, 0, 100))
    t.set("f", lk(2, RDLCK, 50, 150))
    assert t.conflict("f", lk(3, WRLCK, 90, 95)) is not None
    assert t.conflict("f", lk(3, WRLCK, 150, 200)) is None
    with pytest.raises(OSError) as e:
        t.set("f", lk(3, WRLCK, 0, 10))
    assert e.value.errno == errno.EAGAIN


def test_own_locks_are_replaced_and_split() -> None:
    t = AdvisoryLocks()
    t.set("f", lk(1, WRLCK, 0, 100))
    t.set("f", lk(1, UNLCK, 40, 60))  # a hole in the middle
    assert sorted((x.start, x.end) for x in t.held("f")) == [(0, 40), (60, 100)]
    assert t.conflict("f", lk(2, WRLCK, 45, 55)) is None
    t.set("f", lk(1, RDLCK, 0, END))  # downgrade everything
    assert [(x.type, x.start, x.end) for x in t.held("f")] == [(RDLCK, 0, END)]
    assert t.conflict("f", lk(2, RDLCK, 10, 20)) is None


def test_flock_and_posix_locks_are_separate() -> None:
    t = AdvisoryLocks()
    t.set("f", lk(1, WRLCK, 0, END, flock=True))
    assert t.conflict("f", lk(2, WRLCK, 0, END, flock=False)) is None
    assert t.conflict("f", lk(2, RDLCK, 0, END, flock=True)) is not None


def sl(session: int, type_: int) -> Lock:
    """A whole-file lock of session ``session``'s owner 1."""
    return Lock((session, 1), type_, 0, END, session, False)


def test_waiter_gets_the_lock_when_it_goes_and_sessions_drop_theirs() -> None:
    t = AdvisoryLocks()
    t.set("f", sl(1, WRLCK))
    results: list[OSError | None] = []
    # A waiting request is an entry, not a thread: granted by the change that lets it in.
    assert not t.wait_for("f", sl(2, WRLCK), results.append)
    assert t.waiting(2) == 1 and results == []
    t.drop_session(1)  # the holder's client disconnected
    assert results == [None] and t.waiting(2) == 0
    assert t.held("f")[0].owner == (2, 1)
    assert not t.wait_for("f", sl(3, RDLCK), results.append)
    t.drop_session(3)  # the waiter's own connection ends: its wait ends
    assert isinstance(results[-1], OSError) and results[-1].errno == errno.EINTR
    assert t.wait_for("f", sl(2, RDLCK), results.append)  # its own lock: no conflict
    assert results[-1] is not None and len(results) == 2


def test_waiting_writer_is_not_overtaken_by_later_readers() -> None:
    t = AdvisoryLocks()
    t.set("f", sl(1, RDLCK))
    order: list[int] = []
    assert not t.wait_for("f", sl(2, WRLCK), lambda e: order.append(2))
    assert not t.wait_for("f", sl(3, RDLCK), lambda e: order.append(3))  # behind the writer
    assert t.wait_for("f", sl(1, WRLCK), lambda e: order.append(1))  # an upgrade: not behind
    t.set("f", sl(1, UNLCK))
    assert order == [2]  # the writer first; the reader after it
    t.set("f", sl(2, UNLCK))
    assert order == [2, 3]


def test_library_locks_between_clients(server: Server, export_dir: Path) -> None:
    (export_dir / "db").write_bytes(b"0" * 100)
    a, b = make_client([address_of(server)]), make_client([address_of(server)])
    try:
        a.lock("/db", 0, 10)
        with pytest.raises(BlockingIOError):
            b.lock("/db", 5, 1, wait=False)
        b.lock("/db", 10, 10, wait=False)  # disjoint
        holder = b.lock_holder("/db", 0, 1)
        assert holder is not None and holder[:2] == (0, 10) and holder[3] is True
        assert b.lock_holder("/db", 20, 5) is None
        # a blocked waiter proceeds once the holder unlocks
        done = threading.Event()
        threading.Thread(target=lambda: (b.lock("/db", 0, 10), done.set()), daemon=True).start()
        assert not done.wait(0.3)
        a.unlock("/db", 0, 10)
        assert done.wait(5)
        # shared locks coexist, and an exclusive one waits for both
        b.unlock("/db")
        a.lock("/db", exclusive=False)
        b.lock("/db", exclusive=False, wait=False)
        with pytest.raises(BlockingIOError):
            a.lock("/db", 0, 1, exclusive=True, wait=False)  # b still shares it
    finally:
        a.close()
        b.close()


def test_locks_go_with_the_connection(server: Server, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"x")
    a, b = make_client([address_of(server)]), make_client([address_of(server)])
    try:
        a.lock("/f")
        with pytest.raises(BlockingIOError):
            b.lock("/f", wait=False)
        a.close()  # a client that goes away releases its locks
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                b.lock("/f", wait=False)
                break
            except BlockingIOError:
                time.sleep(0.05)
        assert b.lock_holder("/f") is None
    finally:
        b.close()


def test_bad_lock_requests(client: Client, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"x")
    with pytest.raises(OSError) as e:
        client.lock("/f", -1, 5)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        client.lock("/missing")


def test_locking_many_files_keeps_few_handles_and_every_lock(
    server: Server, export_dir: Path
) -> None:
    """The library opens a file to send lock requests on; it keeps at most
    LOCK_FILES of them open (it used to keep one for every path ever locked). The
    locks stay: the server keeps them by file and owner, not by handle."""
    from pohmelfs.client.pathlocks import LOCK_FILES

    for i in range(3 * LOCK_FILES):
        (export_dir / f"f{i}").write_bytes(b"")
    a, b = make_client([address_of(server)]), make_client([address_of(server)])
    try:
        for i in range(3 * LOCK_FILES):
            a.lock(f"/f{i}", exclusive=True, wait=False)
        assert all(
            s.dispatch is None or len(s.dispatch.handles) <= LOCK_FILES for s in server.sessions
        )
        for i in (0, LOCK_FILES, 3 * LOCK_FILES - 1):  # evicted long ago, or just now
            with pytest.raises(BlockingIOError):
                b.lock(f"/f{i}", wait=False)
        a.unlock("/f0")  # reopened to unlock
        b.lock("/f0", wait=False)
    finally:
        a.close()
        b.close()


def test_a_blocking_lock_waits_longer_than_the_time_out_while_the_server_speaks(
    server: Server, export_dir: Path
) -> None:
    """The wait has no end of its own: the server's PENDING keeps it alive as long as
    the holder keeps the lock (only a silent server would time it out)."""
    (export_dir / "f").write_bytes(b"x")
    holder = make_client([address_of(server)], timeout=5)
    waiter = make_client([address_of(server)], timeout=0.5)
    try:
        holder.lock("f")
        threading.Timer(2.0, holder.unlock, ("f",)).start()
        t = time.monotonic()
        waiter.lock("f")  # four time-outs long
        assert 1.8 < time.monotonic() - t < 8
        waiter.unlock("f")
    finally:
        time.sleep(0.1)
        waiter.close()
        holder.close()
