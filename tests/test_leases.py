"""Leases: a file's attributes kept under a shared cache lock taken with its lookup,
with no open handle (server LEASE; the mount's fuse/leases.py)."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TwoMounts, address_of, make_client, requires_fuse, stop_process
from pohmelfs import Client
from pohmelfs.server.service import Server


class Holder:
    def __init__(self) -> None:
        self.revokes: list[int] = []

    def revoked(self, keep: int, _start: int, _length: int) -> None:
        self.revokes.append(keep)


def _held_by(server: Server, path: Path) -> list[object]:
    st = os.stat(path)
    return server.cache.held((st.st_dev, st.st_ino))


def test_a_lease_is_granted_for_a_file_and_revoked_before_another_client_writes(
    server: Server, client: Client, export_dir: Path
) -> None:
    (export_dir / "f").write_bytes(b"12345")
    (export_dir / "d").mkdir()
    holder = Holder()
    attr, conn, oid = client.lease("/f", None, holder)
    assert attr.size == 5 and oid
    assert len(_held_by(server, export_dir / "f")) == 1
    assert client.lease("/d", None, Holder())[2] == 0  # directories: no lease
    with make_client([address_of(server)]) as other, other.open("/f", "r+b", buffering=0) as f:
        f.pwrite(b"more", 5)  # the holder is asked first
        assert holder.revokes == [2]
    client.unlease(conn, oid)
    assert client.stat("/f").st_size == 9


@pytest.mark.parametrize("change", ["chmod", "truncate", "utime"])
def test_attribute_changes_elsewhere_revoke_leases(
    server: Server, client: Client, export_dir: Path, change: str
) -> None:
    (export_dir / "f").write_bytes(b"12345")
    holder = Holder()
    client.lease("/f", None, holder)
    with make_client([address_of(server)]) as other:
        getattr(other, change)("/f", *{"chmod": (0o600,), "truncate": (1,), "utime": ((1, 2),)}[
            change
        ])  # fmt: skip
    assert holder.revokes == [2]


def test_no_lease_while_another_client_writes_and_its_data_is_seen(
    server: Server, client: Client, export_dir: Path
) -> None:
    with make_client([address_of(server)]) as other, other.open("/f", "w+b", buffering=0) as f:
        f.cache_lock(exclusive=True)
        f.write_behind(b"behind", 0)
        attr, _conn, oid = client.lease("/f", None, Holder())
        assert oid == 0 and attr.size == 6  # the writer wrote back first


def test_a_lease_given_back_is_gone_from_the_server(
    server: Server, client: Client, export_dir: Path
) -> None:
    (export_dir / "f").write_bytes(b"x")
    _attr, conn, oid = client.lease("/f", None, Holder())
    client.unlease(conn, oid)
    deadline = time.monotonic() + 10
    while _held_by(server, export_dir / "f") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _held_by(server, export_dir / "f") == []


# --- through mounts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMounts]:
    t = TwoMounts(tmp_path_factory.mktemp("leases"))
    yield t
    t.stop()


@requires_fuse
def test_a_mount_answers_a_stat_under_its_lease_without_the_server(two: TwoMounts) -> None:
    (two.a / "f").write_bytes(b"abc")
    assert os.stat(two.a / "f").st_size == 3  # looked up: leased
    result: list[int] = []
    stop_process(two.server.pid)
    try:
        t = threading.Thread(target=lambda: result.append(os.stat(two.a / "f").st_size))
        t.start()
        t.join(5)
        answered = not t.is_alive()
    finally:
        os.kill(two.server.pid, signal.SIGCONT)
        t.join(30)
    assert answered, "a stat under a lease waited for the server"
    assert result == [3]


@requires_fuse
def test_stat_on_one_mount_sees_changes_made_through_another(two: TwoMounts) -> None:
    path_a, path_b = two.a / "g", two.b / "g"
    path_a.write_bytes(b"12345")
    assert os.stat(path_a).st_size == 5
    with open(path_b, "ab") as f:
        f.write(b"678")
    assert os.stat(path_a).st_size == 8
    os.truncate(path_b, 2)
    assert os.stat(path_a).st_size == 2
    os.chmod(path_b, 0o600)
    assert stat.S_IMODE(os.stat(path_a).st_mode) == 0o600
    os.utime(path_b, (5, 6))
    assert os.stat(path_a).st_mtime == 6


@requires_fuse
def test_a_mounts_own_changes_show_in_its_stat(two: TwoMounts) -> None:
    f = two.a / "own"
    f.write_bytes(b"x")
    assert os.stat(f).st_nlink == 1
    os.link(f, two.a / "own2")
    assert os.stat(f).st_nlink == 2
    os.chmod(f, 0o640)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640
    with open(f, "ab") as fh:
        fh.write(b"yz")
    assert os.stat(f).st_size == 3
    os.unlink(two.a / "own2")
    assert os.stat(f).st_nlink == 1
    os.setxattr(f, "user.k", b"v")
    assert os.stat(two.b / "own").st_ctime_ns == os.stat(f).st_ctime_ns


def test_leases_past_the_sessions_bound_are_plain_lookups(
    server: Server, client: Client, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pohmelfs.server import handles

    monkeypatch.setattr(handles, "MAX_LEASES", 2)
    for name in "abc":
        (export_dir / name).write_bytes(b"x")
    oids = [client.lease(f"/{name}", None, Holder())[2] for name in "abc"]
    assert oids[0] and oids[1] and oids[2] == 0


# --- the mount's table (fuse/leases.py), against a stand-in client -----------------


class StubConn:
    closed = False


class StubClient:
    def __init__(self) -> None:
        self.lost: list[object] = []
        self.given_back: list[int] = []
        self.next = 0

    def lease(self, path: bytes, cred: object, holder: object) -> tuple[object, object, int]:
        from pohmelfs.protocol import Attr

        self.next += 1
        return Attr(7, 10, 0o100644, 1, 0, 0, 0, 0, 0, 0, 0, 0), StubConn(), self.next

    def when_disconnected(self, callback: object) -> None:
        self.lost.append(callback)

    def unlease(self, conn: object, oid: int) -> None:
        self.given_back.append(oid)


def _table() -> tuple[object, StubClient, list[int]]:
    from pohmelfs.fuse.leases import Leases

    invalidated: list[int] = []
    stub = StubClient()
    return Leases(stub, invalidated.append), stub, invalidated  # type: ignore[arg-type]


def test_a_lease_asked_for_across_the_mounts_own_change_is_not_kept() -> None:
    leases, stub, _invalidated = _table()
    _attr, before = leases.lookup(None, b"/f")
    with leases.changing():
        _attr, during = leases.lookup(None, b"/f")
        leases.bind(during, 5, 7, False)
        assert not leases.held(5)  # a change is under way
    leases.bind(before, 5, 7, False)
    assert not leases.held(5)  # asked for before the change, answered maybe after it
    _attr, after = leases.lookup(None, b"/f")
    leases.bind(after, 5, 7, True)
    assert not leases.held(5)  # the file is open here: its writes would not revoke it
    _attr, after = leases.lookup(None, b"/f")
    leases.bind(after, 5, 7, False)
    assert leases.held(5) and leases.attr(5, 7) is not None
    assert stub.given_back == [2, 1, 3]  # the ones not kept were given back


def test_the_mounts_own_change_drops_the_lease_and_the_kernels_attributes() -> None:
    from pohmelfs.fuse import leases as module

    leases, stub, invalidated = _table()
    _attr, lease = leases.lookup(None, b"/f")
    leases.bind(lease, 5, 7, False)
    with leases.changing(5):
        assert not leases.held(5) and invalidated == [5] and stub.given_back == [1]
    _attr, lease = leases.lookup(None, b"/f")
    leases.bind(lease, 5, 7, False)
    assert lease is not None
    lease.taken -= module.MAX_AGE + 1  # link count and ctime are read again in time
    assert leases.attr(5, 7) is None
    lease.revoked(2, 0, 0)
    assert not leases.held(5) and invalidated == [5, 5]
