"""Several servers through one library client: every change reaches every live
writable server (compared file by file afterwards), and the loss of a replica or of
the lock server in the middle of writing costs the application nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    CLIENT_KEY,
    TRUSTED,
    ServerProcess,
    address_of,
    in_process_servers,
    make_client,
    root_of,
    stop_process,
    tree_snapshot,
    wait_until,
)
from pohmelfs import errors
from pohmelfs.client.connection import Connection
from pohmelfs.client.replicated import ReplicatedConnection
from pohmelfs.client.serverset import GONE, LIVE
from pohmelfs.protocol import Command, Cred
from pohmelfs.server.export import LocalExport
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def servers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    with in_process_servers(tmp_path, getattr(request, "param", 2)) as started:
        yield started


def replica_view(top: Path) -> dict[str, Any]:
    """What must be the same on every replica: all but inode numbers and the times
    each server gave by itself (a directory's size depends on its history); times
    set by a change are the same everywhere."""
    view = tree_snapshot(top)
    for name, entry in view.items():
        for key in ("ino", "ctime"):
            entry.pop(key)
        if name not in SET_TIMES:
            entry.pop("mtime")
        if stat.S_ISDIR(entry["mode"]):
            entry.pop("size")
    return view


SET_TIMES = {"d/big", "a/hard"}  # (one file: its times were set by the workload)


def workload(c: Any) -> None:
    c.makedirs("a/b/c")
    c.mkdir("d")
    with c.open("d/small", "wb") as f:
        f.write(b"small\n")
    big = os.urandom(5 << 20) + b"tail"
    with c.open("d/big", "wb") as f:
        f.write(big)
    with c.open("d/small", "ab") as f:
        f.write(b"appended\n")
    c.rename("d/small", "a/b/moved")
    c.symlink("../d/big", "a/link")
    c.link("d/big", "a/hard")
    c.chmod("a/b/moved", 0o600)
    c.setxattr("d/big", "user.tag", b"v1")
    c.truncate("a/hard", 1 << 20)
    c.utime("d/big", ns=(1_000_000_000, 2_000_000_000))
    with c.open("d/sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"x")
    c.mknod("d/fifo", 0o600 | stat.S_IFIFO)
    c.makedirs("gone/x/y")
    c.rmtree("gone")
    with c.open("d/tmp", "wb") as f:
        f.write(b"t")
    c.unlink("d/tmp")


@pytest.mark.parametrize("servers", [2, 3], indirect=True)
def test_every_change_reaches_every_server(servers: list[Server]) -> None:
    with make_client([address_of(s) for s in servers], timeout=10) as c:
        conn = c.connection()
        assert isinstance(conn, ReplicatedConnection)
        assert conn.address == address_of(servers[0])  # the lock server: first in order
        assert len(conn.replicas) == len(servers) - 1
        workload(c)
        assert c.stat("a/hard").st_size == 1 << 20
    first = replica_view(root_of(servers[0]))
    assert "a/b/moved" in first and "gone" not in first
    for srv in servers[1:]:
        assert replica_view(root_of(srv)) == first


def test_the_lock_server_is_the_highest_priority(servers: list[Server]) -> None:
    a, b = servers
    with make_client([address_of(a), f"{address_of(b)}/prio=2"]) as c:
        conn = c.connection()
        assert isinstance(conn, ReplicatedConnection)
        assert (conn.address, conn.replicas) == (address_of(b), [address_of(a)])


def write_files(c: Any, count: int, size: int, written: dict[str, str],
                halfway: threading.Event) -> None:  # fmt: skip
    """Files written one after another, in appends (so that a piece applied twice
    shows); ``written``: each one's checksum once its close returned (what the
    application was told is written)."""
    for n in range(count):
        data = os.urandom(size)
        name = f"f{n:03d}"
        with c.open(name, "ab") as f:
            for pos in range(0, size, 256 << 10):
                f.write(data[pos : pos + (256 << 10)])
        written[name] = hashlib.sha256(data).hexdigest()
        if n == count // 3:
            halfway.set()


def checksums(top: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((top / n).read_bytes()).hexdigest() for n in names}


@pytest.mark.parametrize("lost", ["replica", "lock server"])
def test_a_server_lost_in_the_middle_of_writing_costs_the_writer_nothing(
    servers: list[Server], lost: str
) -> None:
    a, b = servers
    going, staying = (b, a) if lost == "replica" else (a, b)
    written: dict[str, str] = {}
    halfway = threading.Event()
    errors: list[BaseException] = []
    with make_client([address_of(a), address_of(b)], timeout=5) as c:

        def writer() -> None:
            try:
                write_files(c, 30, 1 << 20, written, halfway)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        assert halfway.wait(30)
        going.stop()  # every connection to it is cut at once
        t.join(60)
        assert not t.is_alive()
        assert errors == [], "".join(traceback.format_exception(errors[0]))
        assert c.server_set.members()[servers.index(going)].state == GONE
        assert c.server_set.members()[servers.index(staying)].state == LIVE
        assert c.connection().address == address_of(staying)
    assert len(written) == 30
    assert checksums(root_of(staying), sorted(written)) == written


class _ClosedWithTheGroup:
    """A replica whose connection the group's loss closed just before its part was
    sent (the lock server had answered by then): the race of a lock server lost in
    the middle of a change."""

    address, max_payload = "127.0.0.1:1", 1 << 20

    def __init__(self) -> None:
        self.group: ReplicatedConnection | None = None

    def start(self, cmd: Command, **_kw: Any) -> None:
        assert self.group is not None
        ls = self.group.lock_server
        wait_until(lambda: ls.in_flight() == 0, what="the lock server's answer")
        ls.lose("lost in the middle of the change")
        raise errors.connection_error(self.address, "closed by client")

    def close(self) -> None:
        pass


def test_a_change_the_group_lost_before_every_server_had_it_is_not_told_done(
    servers: list[Server],
) -> None:
    """Answered by the lock server, then the group is lost before a replica got it:
    the change must go again (to the next group), not return done on the lock
    server's word: the replica that goes on would not have it."""
    replica = _ClosedWithTheGroup()
    ls = Connection(address_of(servers[0]), security=CLIENT_KEY, timeout=10, connect_timeout=5)
    group = ReplicatedConnection(ls, [replica], lambda _a, _why: None)  # type: ignore[list-item]
    replica.group = group
    try:
        with pytest.raises(ConnectionError, match="before every server answered a MKDIR"):
            group.call(Command.MKDIR, "d", cred=Cred(0, 0, ()), path=b"d", mode=0o755)
    finally:
        group.close()
    assert (root_of(servers[0]) / "d").is_dir()  # (the lock server had applied it)


def test_a_server_missing_at_connect_is_never_taken_back_stale(servers: list[Server]) -> None:
    """It would miss what is changed meanwhile: it leaves the set, and when the one in
    use is lost, the client does not go back to it."""
    a, b = servers
    a_port = a.address[1]
    a.stop()
    with make_client([address_of(a), address_of(b)], timeout=5, connect_timeout=2) as c:
        assert c.connection().address == address_of(b)
        assert c.server_set.members()[0].state == GONE
        c.mkdir("made-while-a-was-away")
        back = Server(LocalExport(str(root_of(a))), "127.0.0.1", a_port, security=TRUSTED,
                      allow_setuid=True).start()  # fmt: skip
        try:
            c.connection().close()
            assert c.connection().address == address_of(b)  # not a, back but stale
            assert c.isdir("made-while-a-was-away")
        finally:
            back.stop()
            back.export.close()


def test_leases_given_back_keep_the_replicas(servers: list[Server]) -> None:
    with make_client([address_of(s) for s in servers], timeout=5) as c:
        (root_of(servers[0]) / "f").write_bytes(b"x")
        (root_of(servers[1]) / "f").write_bytes(b"x")

        class Holder:
            def revoked(self, keep: int, start: int, length: int) -> None:
                pass

        _, conn, oid = c.lease("f", None, Holder())
        assert oid
        c.unlease(conn, oid)
        c.mkdir("after")
        assert isinstance(c.connection(), ReplicatedConnection)
        assert c.connection().replicas == [address_of(servers[1])]
        assert (root_of(servers[1]) / "after").is_dir()


def test_a_replica_opens_the_very_file_on_reopen(servers: list[Server]) -> None:
    """Each server's file identity is kept: a reopen after a lost connection finds the
    file on the replica by its own identity, not whatever has the name."""
    a, b = servers
    with make_client([address_of(a), address_of(b)], timeout=5) as c:
        f = c.open("f", "wb", buffering=0)
        f.write(b"first")
        os.rename(root_of(b) / "f", root_of(b) / "elsewhere")  # the replica's name moves
        (root_of(b) / "f").write_bytes(b"another")
        c.connection().lock_server.close()  # type: ignore[attr-defined]
        with pytest.raises(OSError):
            f.write(b"second")  # not onto the other file of that name
        f.close()
    assert (root_of(b) / "f").read_bytes() == b"another"


def test_a_silent_lock_server_is_taken_for_lost_and_the_next_one_answers(
    tmp_path: Path,
) -> None:
    """Stopped (SIGSTOP), the lock server says nothing: after the time-out the call
    goes to the other server instead of failing."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    a, b = ServerProcess(dirs[0]), ServerProcess(dirs[1])
    try:
        with make_client([a.address, b.address], timeout=1) as c:
            with c.open("f", "wb") as f:
                f.write(b"on both")
            stop_process(a.pid)
            try:
                t = time.monotonic()
                assert c.stat("f").st_size == 7  # a read
                c.mkdir("d")  # and a change
                with c.open("f", "rb") as f:
                    assert f.read() == b"on both"
                elapsed = time.monotonic() - t
            finally:
                os.kill(a.pid, signal.SIGCONT)
            assert elapsed < 4, elapsed
            assert c.connection().address == b.address
            assert c.server_set.members()[0].state == GONE
        # (What the stopped server does once it goes on is its own: it left the set.)
        assert (dirs[1] / "d").is_dir()
    finally:
        a.stop()
        b.stop()


def test_each_servers_requests_are_counted_and_reads_go_to_the_lock_server(
    servers: list[Server],
) -> None:
    a, b = servers
    with make_client([address_of(a), address_of(b)], timeout=5) as c:
        before = {s["address"]: s["requests"] for s in c.server_stats()}
        for n in range(10):
            c.mkdir(f"d{n}")
        for n in range(10):
            c.stat(f"d{n}")
            c.listdir(f"d{n}")
        stats = {s["address"]: s for s in c.server_stats()}
    lock, replica = stats[address_of(a)], stats[address_of(b)]
    assert (lock["role"], replica["role"]) == ("lock server", "replica")
    assert replica["requests"] - before[address_of(b)] == 10  # the changes, nothing else
    assert lock["requests"] - before[address_of(a)] == 30  # the changes and the reads
    assert lock["answered"] == lock["requests"] and lock["failed"] == 0
    assert lock["bytes_in"] > replica["bytes_in"] > 0 and lock["latency_mean_ms"] > 0
    assert lock["connections"] == replica["connections"] == 1


@pytest.mark.parametrize("servers", [3], indirect=True)
def test_servers_are_removed_while_the_client_works(servers: list[Server]) -> None:
    a, b, c3 = (address_of(s) for s in servers)
    with make_client([a, b, c3], timeout=5) as c:
        c.mkdir("before")
        c.remove_server(b)  # a replica
        c.mkdir("without-b")
        assert c.connection().replicas == [c3]  # type: ignore[attr-defined]
        c.remove_server(a)  # the lock server: the next call goes to the next one
        c.mkdir("without-a")
        assert c.connection().address == c3
        with pytest.raises(ValueError, match="last live writable server"):
            c.remove_server(c3)
        with pytest.raises(ValueError, match="not one of"):
            c.remove_server("127.0.0.1:1")
        states = {s["address"]: s["state"] for s in c.server_stats()}
        assert states == {c3: LIVE}  # (removed for good: not gone, to be taken back)
    roots = [root_of(s) for s in servers]
    assert (roots[1] / "before").is_dir() and not (roots[1] / "without-b").exists()
    assert (roots[0] / "without-b").is_dir() and not (roots[0] / "without-a").exists()
    assert all((roots[2] / n).is_dir() for n in ("before", "without-b", "without-a"))


def test_a_blocking_lock_on_a_silent_lock_server_goes_to_the_next(tmp_path: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
        (d / "f").write_bytes(b"x")
    a, b = ServerProcess(dirs[0]), ServerProcess(dirs[1])
    try:
        with make_client([a.address, b.address], timeout=1) as c:
            c.lock("f")  # the file the lock requests go through is open from now on
            c.unlock("f")
            stop_process(a.pid)
            try:
                t = time.monotonic()
                c.lock("f", exclusive=True, wait=True)  # no deadline of its own: PENDING's
                assert time.monotonic() - t < 6
            finally:
                os.kill(a.pid, signal.SIGCONT)
            assert c.connection().address == b.address
            c.unlock("f")
    finally:
        a.stop()
        b.stop()
