"""Cache locks: granted by the server, revoked on conflict, lost by a silent holder."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CLIENT_KEY, address_of, make_client, start_server, stopping
from pohmelfs import Client
from pohmelfs.protocol import ANY_FILE, Command, Cred
from pohmelfs.server.cachelocks import (
    END,
    EXCLUSIVE,
    RELEASE,
    SHARED,
    CacheLocks,
    Holder,
    Revoker,
)
from pohmelfs.server.service import Server


def answering_revoker() -> tuple[list[tuple[tuple[int, int], int]], Revoker]:
    """A revoker that records whom it asked (and what to keep); each holder answers
    a moment later, from another thread, as a client would."""
    asked: list[tuple[tuple[int, int], int]] = []

    def revoke(h: Holder, keep: int, done: Callable[[], None]) -> None:
        asked.append((h.owner, keep))
        threading.Timer(0.02, done).start()

    return asked, revoke


def test_table_revokes_conflicting_holders_and_downgrades() -> None:
    t = CacheLocks(lease=5)
    asked, revoke = answering_revoker()

    t.acquire("f", (1, 1), EXCLUSIVE, 0, END, revoke)
    t.acquire("f", (2, 1), SHARED, 0, 100, revoke)  # a reader: the writer keeps a shared lock
    assert asked == [((1, 1), SHARED)]
    assert sorted((h.owner, h.type) for h in t.held("f")) == [((1, 1), SHARED), ((2, 1), SHARED)]
    t.acquire("f", (3, 1), SHARED, 50, 60, revoke)  # shared with shared: nobody is asked
    assert len(asked) == 1
    t.acquire("f", (2, 1), EXCLUSIVE, 0, 100, revoke)  # an upgrade revokes the other readers
    assert {o for o, keep in asked[1:]} == {(1, 1), (3, 1)} and all(
        k == RELEASE for _, k in asked[1:]
    )
    assert [(h.owner, h.type) for h in t.held("f")] == [((2, 1), EXCLUSIVE)]


def test_table_lease_expiry_fences_the_silent_holder() -> None:
    t = CacheLocks(lease=0.3)
    t.acquire("f", (1, 1), EXCLUSIVE, 0, END, lambda h, keep, done: None)
    start = time.monotonic()
    t.acquire("f", (2, 1), EXCLUSIVE, 0, END, lambda h, keep, done: None)  # never answers
    assert 0.25 <= time.monotonic() - start < 3
    assert (1, 1) in t.fenced
    assert [h.owner for h in t.held("f")] == [(2, 1)]
    t.acquire("f", (1, 1), SHARED, 0, 10, lambda h, keep, done: done())  # asks again: unfenced
    assert (1, 1) not in t.fenced


@pytest.fixture
def quick_lease_server(export_dir: Path) -> Iterator[Server]:
    with stopping(start_server(export_dir, lease=0.5)) as srv:
        yield srv


def test_revoke_reaches_the_holder_and_writes_back_first(ab: tuple[Client, Client]) -> None:
    a, b = ab
    fa = a.open("/f", "w+b", buffering=0)
    fa.cache_lock(exclusive=True)
    revokes: list[tuple[int, int, int]] = []
    fa.on_revoke = lambda keep, start, length: revokes.append((keep, start, length))
    fa.write_behind(b"written behind", 0)  # buffered under the exclusive lock
    fb = b.open("/f", "rb", buffering=0)
    attr = fb.cache_lock().attr  # revokes a's lock: a writes back before b is granted
    assert revokes == [(SHARED, 0, 0)]
    assert attr.size == 14
    assert fb.pread(100, 0) == b"written behind"
    fa.close()
    fb.close()


def test_silent_holder_loses_the_lock_and_its_writes_fail(quick_lease_server: Server) -> None:
    address = address_of(quick_lease_server)
    a, b = make_client([address]), make_client([address])
    try:
        fa = a.open("/f", "w+b", buffering=0)
        fa.cache_lock(exclusive=True)
        stall = threading.Event()
        fa.on_revoke = lambda *_: stall.wait(5)  # a frozen holder
        fb = b.open("/f", "r+b", buffering=0)
        t = time.monotonic()
        fb.cache_lock(exclusive=True)  # granted once a's lease runs out
        assert 0.4 < time.monotonic() - t < 4
        fb.pwrite(b"b's data", 0)
        with pytest.raises(OSError) as e:  # a's writes under the lost lock are refused
            fa.pwrite(b"stale", 0)
        assert e.value.errno == errno.EIO
        stall.set()
        assert fb.pread(10, 0) == b"b's data"
        fa.cache_lock()  # asking again gives a lock (and its writes work again)
        fb.close()
        fa.close()
    finally:
        a.close()
        b.close()


def test_release_and_disconnect_free_the_lock(ab: tuple[Client, Client]) -> None:
    a, b = ab
    fa = a.open("/f", "w+b", buffering=0)
    fa.cache_lock(exclusive=True)
    revoked = threading.Event()
    fa.on_revoke = lambda *_: revoked.set()
    fa.cache_release()
    fb = b.open("/f", "rb", buffering=0)
    fb.cache_lock(exclusive=True)
    assert not revoked.is_set()  # nothing left to take back
    fb.close()  # closing the handle drops its locks
    fa.cache_lock(exclusive=True)
    a.close()  # so does a lost connection
    fb = b.open("/f", "rb", buffering=0)
    fb.cache_lock(exclusive=True)
    fb.close()


def test_plain_requests_of_other_clients_revoke_holders_first(
    server: Server, ab: tuple[Client, Client]
) -> None:
    """A client that holds no cache lock still sees what a holder has cached: its
    read, fstat and stat make an exclusive holder write back (and keep a shared
    lock), its write makes every holder write back and drop its cache."""
    a, b = ab
    fa = a.open("/f", "w+b", buffering=0)
    fa.cache_lock(exclusive=True)
    revokes: list[int] = []

    def write_back(keep: int, _start: int, _length: int) -> None:
        revokes.append(keep)
        if len(revokes) == 1:  # dirty data a holder kept back until asked
            fa.pwrite(b"kept back by a", 0)

    fa.on_revoke = write_back
    assert b.stat("/f").st_size == 14  # b's stat waited for a's write-back
    assert revokes == [SHARED]
    fb = b.open("/f", "r+b", buffering=0)
    assert fb.pread(100, 0) == b"kept back by a"
    assert fb.fstat().size == 14 and revokes == [SHARED]  # a is no writer now
    fb.pwrite(b"B", 0)  # a write: a's shared lock goes, so a's cache is dropped
    assert revokes == [SHARED, RELEASE]
    assert not server.cache._held  # nobody caches /f now
    fa.close()
    fb.close()


def test_table_change_revokes_every_other_holder_and_blocks_grants_until_done() -> None:
    t = CacheLocks(lease=5)
    asked, revoke = answering_revoker()

    t.acquire("d", (1, 1), SHARED, 0, END, revoke)
    t.acquire("d", (2, 1), SHARED, 0, END, revoke)
    assert not t.try_changing(["d"], 3)  # holders to revoke first: not at once
    assert t.try_changing(["d"], 1) is False  # session 2 still holds it
    with t.changing(["d"], 3, revoke):
        assert sorted(asked) == [((1, 1), RELEASE), ((2, 1), RELEASE)] and not t.held("d")
        assert not t.try_acquire("d", (1, 1), SHARED, 0, END)  # not while it changes
        assert t.try_acquire("d", (3, 1), SHARED, 0, END)  # the changer's own session may
        granted = threading.Event()
        waiter = threading.Thread(
            target=lambda: (t.acquire("d", (2, 1), SHARED, 0, END, revoke), granted.set())
        )
        waiter.start()
        assert not granted.wait(0.2)
    assert granted.wait(5)  # granted once the change is done
    waiter.join(5)
    assert t.try_changing(["e"], 1)  # nobody holds "e": it begins at once
    t.changed(["e"], 1)
    assert t.try_acquire("e", (2, 1), SHARED, 0, END)


def test_names_changed_by_one_client_revoke_another_clients_directory_lock(
    ab: tuple[Client, Client],
) -> None:
    """Creating, removing or renaming a name, and changing a directory's
    attributes, revoke other clients' cache locks on that directory before the
    call returns; opening an existing file with O_CREAT does not."""
    a, b = ab
    b.mkdir("/d")
    (b.open("/d/exists", "wb")).close()
    d = a.open("/d", "rb", buffering=0)
    revokes: list[int] = []
    d.on_revoke = lambda keep, _s, _l: revokes.append(keep)

    def changed_by_b(change: object) -> bool:
        d.cache_lock()
        before = len(revokes)
        change()  # type: ignore[operator]
        return len(revokes) == before + 1

    assert not changed_by_b(lambda: b.open("/d/exists", "ab").close())
    assert changed_by_b(lambda: b.open("/d/new", "wb").close())
    assert changed_by_b(lambda: b.rename("/d/new", "/d/renamed"))
    assert changed_by_b(lambda: b.unlink("/d/renamed"))
    assert changed_by_b(lambda: b.mkdir("/d/sub"))
    assert changed_by_b(lambda: b.rmdir("/d/sub"))
    assert changed_by_b(lambda: b.chmod("/d", 0o700))
    assert revokes and all(keep == RELEASE for keep in revokes)
    d.close()


def test_a_change_sent_behind_that_waits_keeps_later_requests_behind_it(
    ab: tuple[Client, Client],
) -> None:
    """A create that its client did not wait for (BEHIND) and that must wait for
    another client's revocation waits in the session's queue; requests sent after
    it on the connection run after it."""
    a, b = ab
    b.mkdir("/q")
    d = a.open("/q", "rb", buffering=0)
    d.on_revoke = lambda _keep, _s, _l: time.sleep(0.3)  # a slow holder
    d.cache_lock()
    conn = b.connection()
    flags = os.O_CREAT | os.O_WRONLY
    create = conn.start(Command.OPEN, behind=True, cred=b.cred, path=b"/q/new", flags=flags,
                        mode=0o644, cache=2, fid=ANY_FILE)  # fmt: skip
    lookup = conn.start(Command.LOOKUP, cred=b.cred, path=b"/q/new")
    assert conn.wait(lookup)["attr"].size == 0  # not ENOENT: it ran after the create
    assert conn.wait(create).oid
    d.close()


def test_a_change_that_waits_holds_up_nothing_its_client_did_not_wait_for(
    ab: tuple[Client, Client],
) -> None:
    """A create its client waits for, and that must wait for another client, waits
    on its own: the connection's other requests are answered meanwhile (one of
    them may be what that other client waits for, through a revocation of ours)."""
    a, b = ab
    b.mkdir("/q")
    d = a.open("/q", "rb", buffering=0)
    release = threading.Event()
    d.on_revoke = lambda _keep, _s, _l: release.wait(5)  # a slow holder
    d.cache_lock()
    conn = b.connection()
    flags = os.O_CREAT | os.O_WRONLY
    create = conn.start(Command.OPEN, cred=b.cred, path=b"/q/new", flags=flags, mode=0o644,
                        cache=2, fid=ANY_FILE)  # fmt: skip
    lookup = conn.start(Command.LOOKUP, cred=b.cred, path=b"/q")
    assert conn.wait(lookup)["attr"].ino  # answered while the create still waits
    assert create.done.locked()  # the create has not been answered yet
    release.set()
    assert conn.wait(create).oid
    d.close()


def test_two_clients_changing_what_the_other_caches_do_not_wait_for_a_lease(
    server: Server,
    ab: tuple[Client, Client],
) -> None:
    """Each client creates in a directory the other holds a lock on, at the same
    time: each session's reader goes on taking the other's revocation answer, so
    neither waits for a lease to run out (nobody is fenced)."""
    a, b = ab
    a.mkdir("/x")
    a.mkdir("/y")
    da, db = a.open("/x", "rb", buffering=0), b.open("/y", "rb", buffering=0)
    da.cache_lock()
    db.cache_lock()
    done: list[str] = []
    threads = [
        threading.Thread(target=lambda: (a.open("/y/f", "wb").close(), done.append("a"))),
        threading.Thread(target=lambda: (b.open("/x/f", "wb").close(), done.append("b"))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(done) == ["a", "b"]
    assert not server.cache.fenced
    da.close()
    db.close()


def test_reading_names_waits_for_changes_an_exclusive_holder_sent_ahead(
    ab: tuple[Client, Client],
) -> None:
    """A client without a lock that looks up or lists names in a directory another
    client holds exclusively makes that holder send its changes first (it keeps
    a shared lock)."""
    a, b = ab
    a.mkdir("/ex")
    b.open("/ex/kept", "wb").close()
    d = a.open("/ex", "rb", buffering=0)
    revokes: list[int] = []

    def send_changes(keep: int, _s: int, _l: int) -> None:
        revokes.append(keep)
        a.unlink("/ex/kept")  # a change this holder made ahead, sent when asked

    d.on_revoke = send_changes
    d.cache_lock(exclusive=True)
    assert b.listdir("/ex") == []
    assert revokes == [SHARED]
    d.cache_lock(exclusive=True)
    a_file = a.open("/ex/late", "wb")  # a's own change: no revocation
    a_file.close()
    d.on_revoke = lambda keep, _s, _l: (revokes.append(keep), a.unlink("/ex/late"))
    assert not b.exists("/ex/late")  # a LOOKUP: a sends its changes first
    assert revokes == [SHARED, SHARED]
    d.close()


def test_open_with_o_trunc_revokes_other_holders_first(ab: tuple[Client, Client]) -> None:
    a, b = ab
    with b.open("/t", "wb") as f:
        f.write(b"old contents")
    fa = a.open("/t", "rb", buffering=0)
    fa.cache_lock()
    revokes: list[int] = []
    fa.on_revoke = lambda keep, _s, _l: revokes.append(keep)
    b.open("/t", "wb").close()  # O_TRUNC of an existing file
    assert revokes == [RELEASE]
    assert fa.fstat().size == 0
    b.open("/t", "rb").close()  # a plain open changes nothing
    assert revokes == [RELEASE]
    fa.close()


def test_queued_requests_stay_in_order_when_a_later_one_must_wait_too(
    ab: tuple[Client, Client],
) -> None:
    """Behind a change sent behind that waits, a write sent behind that must wait as
    well keeps its place: a read sent after it sees it."""
    a, b = ab
    b.mkdir("/q")
    with b.open("/f", "wb") as f:
        f.write(b"old")
    fa = a.open("/f", "r+b", buffering=0)
    slow = lambda _keep, _s, _l: time.sleep(0.3)  # noqa: E731
    db, fb = b.open("/q", "rb", buffering=0), b.open("/f", "rb", buffering=0)
    for held in (db, fb):
        held.on_revoke = slow
        held.cache_lock()
    conn, oid = fa.handle()
    flags = os.O_CREAT | os.O_WRONLY  # the create waits for b's directory lock
    create = conn.start(Command.OPEN, behind=True, cred=a.cred, path=b"/q/new", flags=flags,
                        mode=0o644, cache=2, fid=ANY_FILE)  # fmt: skip
    write = conn.start(Command.WRITE, behind=True, oid=oid, offset=0, data=b"new")  # waits for fb
    read = conn.start(Command.READ, oid=oid, offset=0, length=3)
    assert bytes(conn.wait(read)["data"]) == b"new"
    assert conn.wait(write).length == 3
    assert conn.wait(create).oid
    for f in (fa, db, fb):
        f.close()


def test_table_counts_exclusive_directory_holders_only() -> None:
    t = CacheLocks(lease=5)
    _, revoke = answering_revoker()

    assert t.try_acquire("file", (1, 1), EXCLUSIVE, 0, END)
    assert t.exclusive_dirs == 0  # a writer's file lock: nothing to settle for names
    assert t.try_acquire("dir", (1, 2), EXCLUSIVE, 0, END, directory=True)
    assert t.exclusive_dirs == 1
    t.acquire("dir", (2, 1), SHARED, 0, END, revoke, directory=True)  # a downgrade
    assert t.exclusive_dirs == 0
    t.acquire("dir", (2, 1), EXCLUSIVE, 0, END, revoke, directory=True)
    assert t.exclusive_dirs == 1
    t.drop_session(2)  # its connection went
    assert t.exclusive_dirs == 0 and not t.held("dir")


def test_open_read_only_with_o_trunc_revokes_other_caches(
    ab: tuple[Client, Client], export_dir: Path
) -> None:
    """Linux truncates on O_RDONLY | O_TRUNC (given write permission): other clients'
    caches of the file must go first, as for any truncation (a mount reported the
    old size while reads returned nothing)."""
    a, b = ab
    (export_dir / "f").write_bytes(b"x" * 1000)
    fa = a.open("/f", "rb", buffering=0)
    revokes: list[int] = []
    fa.on_revoke = lambda keep, _s, _l: revokes.append(keep)
    assert fa.cache_lock().attr.size == 1000
    got = b.services.open("/f", os.O_RDONLY | os.O_TRUNC, 0, b.cred)
    assert revokes == [RELEASE]
    assert got.attr.size == 0 and (export_dir / "f").stat().st_size == 0
    got.conn.call(Command.CLOSE, oid=got.oid)
    (export_dir / "f").write_bytes(b"kept")
    os.chmod(export_dir / "f", 0o644)
    if os.geteuid() == 0:  # without write permission it is refused, and nothing changes
        with pytest.raises(PermissionError):
            b.services.open("/f", os.O_RDONLY | os.O_TRUNC, 0, Cred(65534, 65534, ()))
        assert (export_dir / "f").read_bytes() == b"kept"
    fa.close()


def test_a_holder_that_never_answers_costs_the_others_one_lease_once(export_dir: Path) -> None:
    """A client holds the exclusive lock, never answers a revocation, and takes the
    lock again every 0.5 s. Another client whose time-out is as long as the lease
    (2 s each here; 5 s by default) opens and writes six times: the first waits one
    lease, without a time-out (the server says it is still at work), the others do
    not wait for the holder at all (it is lapsed until it answers)."""
    (export_dir / "f").write_bytes(b"-" * 16)
    with stopping(start_server(export_dir, lease=2.0)) as server:
        _one_lease_once(server, export_dir)


def _one_lease_once(server: Server, export_dir: Path) -> None:
    hostile = make_client([address_of(server)], timeout=30)
    stop = threading.Event()
    try:
        fh = hostile.open("/f", "r+b", buffering=0)
        fh.on_revoke = lambda *_: stop.wait(60)  # never answers (until the test ends)
        fh.cache_lock(exclusive=True)

        def retake() -> None:
            while not stop.wait(0.5):
                try:
                    fh.cache_lock(exclusive=True)
                except OSError:
                    return

        threading.Thread(target=retake, daemon=True).start()
        took = []
        with make_client([address_of(server)], timeout=server.cache.lease) as writer:
            for i in range(6):
                started = time.monotonic()
                with writer.open("/f", "r+b", buffering=0) as f:
                    f.pwrite(b"%d" % i, i)
                took.append(time.monotonic() - started)
                time.sleep(0.6)  # the holder has taken its lock again meanwhile
        assert (export_dir / "f").read_bytes()[:6] == b"012345"
        assert took[0] < server.cache.lease + 2, took
        assert all(t < 1.0 for t in took[1:]), took
        assert any(server.cache.lapsed(s.sid) for s in server.sessions)
    finally:
        stop.set()
        hostile.close()


def slow_revoker(delay: float) -> tuple[list[tuple[int, int]], Revoker]:
    asked: list[tuple[int, int]] = []

    def revoke(h: Holder, keep: int, done: Callable[[], None]) -> None:
        asked.append(h.owner)
        threading.Timer(delay, done).start()

    return asked, revoke


def test_table_new_shared_grants_do_not_overtake_a_waiting_writer() -> None:
    """While an exclusive request waits for shared holders to answer, shared locks
    asked for later are not granted past it: they wait their turn, then revoke it."""
    t = CacheLocks(lease=5)
    _, revoke = slow_revoker(0.3)
    t.acquire("f", (1, 1), SHARED, 0, END, revoke)
    order: list[int] = []
    writer = threading.Thread(target=lambda: (t.acquire("f", (2, 1), EXCLUSIVE, 0, END, revoke),
                                              order.append(2)))  # fmt: skip
    writer.start()
    deadline = time.monotonic() + 5
    while not t.waiting("f") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [w.session for w in t.waiting("f")] == [2]
    assert not t.try_acquire("f", (3, 1), SHARED, 0, END)  # would overtake the writer
    reader = threading.Thread(target=lambda: (t.acquire("f", (3, 1), SHARED, 0, END, revoke),
                                              order.append(3)))  # fmt: skip
    reader.start()
    writer.join(5)
    reader.join(5)
    assert order == [2, 3]  # the writer first, then the reader (the writer downgraded)
    assert sorted((h.owner, h.type) for h in t.held("f")) == [((2, 1), SHARED), ((3, 1), SHARED)]


def test_table_a_waiting_reader_is_not_overtaken_by_a_later_writer() -> None:
    t = CacheLocks(lease=5)
    asked, revoke = slow_revoker(0.2)
    t.acquire("f", (1, 1), EXCLUSIVE, 0, END, revoke)
    got: list[int] = []
    reader = threading.Thread(target=lambda: (t.acquire("f", (2, 1), SHARED, 0, END, revoke),
                                              got.append(2)))  # fmt: skip
    reader.start()
    while not t.waiting("f"):
        time.sleep(0.005)
    writer = threading.Thread(target=lambda: (t.acquire("f", (3, 1), EXCLUSIVE, 0, END, revoke),
                                              got.append(3)))  # fmt: skip
    writer.start()
    reader.join(5)
    writer.join(5)
    assert got == [2, 3]
    assert asked[0] == (1, 1) and (2, 1) in asked  # the writer revoked the reader it followed


def test_table_a_lapsed_holder_is_not_waited_for_again() -> None:
    t = CacheLocks(lease=0.3)
    never: Revoker = lambda h, keep, done: None  # noqa: E731
    t.acquire("f", (1, 1), EXCLUSIVE, 0, END, never)
    started = time.monotonic()
    t.acquire("f", (2, 1), EXCLUSIVE, 0, END, never)
    assert 0.25 <= time.monotonic() - started < 3  # one lease
    assert t.lapsed(1) and (1, 1) in t.fenced
    t.acquire("f", (1, 1), EXCLUSIVE, 0, END, lambda h, keep, done: done())  # takes it again
    started = time.monotonic()
    t.acquire("f", (2, 1), EXCLUSIVE, 0, END, never)
    assert time.monotonic() - started < 0.2  # not another lease
    assert (1, 1) in t.fenced
    t.drop_session(1)
    assert not t.lapsed(1)


def test_a_write_back_never_overtakes_an_older_write_queued_on_its_file(
    server: Server, export_dir: Path
) -> None:
    """A's requests sent behind wait in its queue (a create waits for B's slow
    directory lock, a write to f behind it). Then C wants f: A's write-back of f
    must not jump the queue past the older write of f, or the older data would land
    on top of the newer."""
    a, b, c = (make_client([address_of(server)]) for _ in range(3))
    try:
        b.mkdir("/q")
        (export_dir / "f").write_bytes(b"---")
        db = b.open("/q", "rb", buffering=0)
        db.on_revoke = lambda *_: time.sleep(0.5)  # a slow holder of the directory
        db.cache_lock()
        fa = a.open("/f", "r+b", buffering=0)
        fa.cache_lock(exclusive=True)
        conn, oid = fa.handle()

        def write_back(*_: object) -> None:  # the newer data, sent while A answers C
            conn.wait(conn.start(Command.WRITE, behind=True, oid=oid, offset=0, data=b"new"))

        fa.on_revoke = write_back
        flags = os.O_CREAT | os.O_WRONLY
        create = conn.start(Command.OPEN, behind=True, cred=a.cred, path=b"/q/x", flags=flags,
                            mode=0o644, cache=2, fid=ANY_FILE)  # fmt: skip
        older = conn.start(Command.WRITE, behind=True, oid=oid, offset=0, data=b"old")
        fc = c.open("/f", "rb", buffering=0)
        assert fc.cache_lock().attr.size == 3  # revokes A: its write-back comes last
        assert fc.pread(3, 0) == b"new"
        assert conn.wait(older).length == 3 and conn.wait(create).oid
        assert (export_dir / "f").read_bytes() == b"new"  # the newer data stays on top
        for f in (fc, fa, db):
            f.close()
    finally:
        for client in (a, b, c):
            client.close()


class RawSession:
    """A client speaking the protocol by hand: its files' handles, and how it
    answers a revocation (after writing back, as the mount does)."""

    def __init__(self, server: Server, notices: int) -> None:
        from pohmelfs.client.connection import Connection

        self.oids: dict[bytes, int] = {}
        self.conn = Connection(address_of(server), security=CLIENT_KEY, timeout=30,
                               connect_timeout=5, notices=notices,
                               on_notify=self.notified)  # fmt: skip
        self.cred = Cred(os.geteuid(), os.getegid(), ())

    def open(self, path: bytes) -> int:
        r = self.conn.call(Command.OPEN, cred=self.cred, path=path, flags=os.O_RDWR, mode=0,
                           cache=2, fid=ANY_FILE)  # fmt: skip
        self.oids[path] = r.oid
        return r.oid

    def notified(self, conn: Any, msg: Any) -> None:
        def answer() -> None:
            if msg.cmd == Command.REVOKE:  # write back what it held, then answer
                conn.wait(conn.start(Command.WRITE, behind=True, oid=msg.oid, offset=100,
                                     data=b"held"))  # fmt: skip
            conn.answer(msg)

        threading.Thread(target=answer, daemon=True).start()


@pytest.mark.parametrize("notices", [0, 1])
def test_write_backs_are_not_queued_behind_what_waits_for_their_answer(
    quick_lease_server: Server, export_dir: Path, notices: int
) -> None:
    """Two clients, two files: each holds one exclusively and writes the other
    behind. Each write waits for the other's revocation, whose answer waits for its
    write-back: the write-back must not wait behind the session's own queued write,
    also when it must tell other mounts of a new size (RESIZE: it used to, and both
    waited for the lease)."""
    for name in ("F", "G"):
        (export_dir / name).write_bytes(b"a" * 100)
    s1, s2 = RawSession(quick_lease_server, notices), RawSession(quick_lease_server, notices)
    try:
        for s in (s1, s2):
            s.open(b"F"), s.open(b"G")
        s1.conn.call(Command.CACHE, oid=s1.oids[b"F"], type=1)
        s2.conn.call(Command.CACHE, oid=s2.oids[b"G"], type=1)
        started = time.monotonic()
        one = s1.conn.start(Command.WRITE, behind=True, oid=s1.oids[b"G"], offset=200, data=b"x")
        two = s2.conn.start(Command.WRITE, behind=True, oid=s2.oids[b"F"], offset=200, data=b"y")
        s1.conn.wait(one), s2.conn.wait(two)
        assert time.monotonic() - started < quick_lease_server.cache.lease
        assert not any(quick_lease_server.cache.lapsed(s.sid) for s in quick_lease_server.sessions)
    finally:
        s1.conn.close()
        s2.conn.close()


def test_a_change_that_waited_is_refused_if_its_lock_was_lost_meanwhile(
    ab: tuple[Client, Client], server: Server, export_dir: Path
) -> None:
    """The fence is checked when a write is applied, not only when it arrived: one
    that waited (for another client's revocation) while its own lease ran out is
    refused with EIO, and the file keeps the data it had."""
    a, b = ab
    (export_dir / "f").write_bytes(b"newer")
    release = threading.Event()
    fb = b.open("/f", "rb", buffering=0)
    fb.on_revoke = lambda *_: release.wait(10)  # a slow holder
    fb.cache_lock()
    fa = a.open("/f", "r+b", buffering=0)
    conn, oid = fa.handle()
    late = conn.start(Command.WRITE, behind=True, oid=oid, offset=0, data=b"older")
    deadline = time.monotonic() + 5
    while not server.cache.waiting(_key(export_dir / "f")) and time.monotonic() < deadline:
        time.sleep(0.01)
    here = conn.lock_server.sock.getsockname()[:2]
    (sid,) = [s.sid for s in server.sessions if s.sock.getpeername()[:2] == here]
    server.cache.fenced.add((sid, oid))  # as if its lease ran out meanwhile
    release.set()
    with pytest.raises(OSError) as e:
        conn.wait(late)
    assert e.value.errno == errno.EIO
    assert (export_dir / "f").read_bytes() == b"newer"
    for f in (fa, fb):
        f.close()


def _key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_what_a_client_sends_after_a_write_back_that_waits_sees_it(
    export_dir: Path,
) -> None:
    """Write-backs that must wait (another mount maps the file: it hears of the new
    size before the write returns; this one never answers) are not overtaken by a
    READ the client sends after them: it sees their data. (The second waited on the
    session's lane behind the first, and the READ once overtook it: a mount read
    back its own write's old contents.)"""
    from pohmelfs import protocol as p
    from pohmelfs.client.connection import Connection

    (export_dir / "F").write_bytes(b"a" * 100)
    with stopping(start_server(export_dir, lease=1.0)) as srv:
        cred = Cred(os.geteuid(), os.getegid(), ())
        fields = {"cred": cred, "path": b"F", "mode": 0, "cache": 2, "fid": ANY_FILE}
        seen: list[bytes] = []

        def revoked(conn: Any, msg: Any) -> None:
            def write_back_then_read() -> None:
                if msg.cmd == Command.REVOKE:  # two write-backs, each growing the file
                    wrote = [conn.start(Command.WRITE, behind=True, oid=msg.oid, offset=off,
                                        data=data)
                             for off, data in ((100, b"held"), (104, b"more"))]  # fmt: skip
                    read = conn.start(Command.READ, oid=msg.oid, offset=100, length=8)
                    for tx in wrote:
                        conn.wait(tx)
                    seen.append(bytes(conn.wait(read)["data"]))
                conn.answer(msg)

            threading.Thread(target=write_back_then_read, daemon=True).start()

        def connect(**kw: Any) -> Connection:
            return Connection(address_of(srv), security=CLIENT_KEY, timeout=30,
                              connect_timeout=5, **kw)  # fmt: skip

        watcher = connect(notices=p.NOTICE_RESIZE, on_notify=lambda c, m: None)  # never answers
        a, b = connect(on_notify=revoked), connect()
        try:
            watcher.call(Command.OPEN, flags=os.O_RDONLY, **fields)
            oid = a.call(Command.OPEN, flags=os.O_RDWR, **fields).oid
            a.call(Command.CACHE, oid=oid, type=EXCLUSIVE)
            other = b.call(Command.OPEN, flags=os.O_RDONLY, **fields).oid
            b.call(Command.CACHE, oid=other, type=SHARED)  # revokes a's lock
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                time.sleep(0.02)
            assert seen == [b"heldmore"]
        finally:
            for conn in (a, b, watcher):
                conn.close()
