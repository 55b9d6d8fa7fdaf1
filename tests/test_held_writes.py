"""Writes held back under an exclusive cache lock (client/held.py): kept in the client,
sent when something needs them, and never applied once the lock is lost."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TwoMounts, address_of, make_client, requires_fuse, stop_process
from pohmelfs import Client
from pohmelfs.client.held import HeldWrites
from pohmelfs.server.service import Server

writes = st.lists(st.tuples(st.integers(0, 300), st.binary(min_size=1, max_size=80)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(writes)
def test_held_extents_read_back_as_the_writes_made_in_order(ws: list[tuple[int, bytes]]) -> None:
    held, model, written = HeldWrites(), bytearray(400), [False] * 400
    for offset, data in ws:
        held.add(offset, data)
        model[offset : offset + len(data)] = data
        written[offset : offset + len(data)] = [True] * len(data)
    assert held.bytes == sum(written)
    extents = held.take()
    assert held.bytes == 0 and len(held) == 0 and held.take() == []
    covered = [False] * 400
    end = -1
    for start, data in extents:
        assert start > end  # sorted, apart, never touching (touching ones merge)
        end = start + len(data)
        assert bytes(data) == bytes(model[start:end])
        covered[start:end] = [True] * len(data)
    assert covered == written


def _held_file(c: Client, path: str) -> object:
    f = c.open(path, "r+b", buffering=0)
    f.cache_lock(exclusive=True)
    return f


def test_held_writes_go_out_before_any_other_request(client: Client, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"." * 10)
    f = _held_file(client, "/f")
    f.hold(b"AB", 2)
    f.hold(b"CD", 4)  # merged with the first
    f.hold(b"Z", 8)
    assert (export_dir / "f").read_bytes() == b"." * 10  # nothing sent yet
    assert client.held.bytes == 5
    assert client.stat("/f").st_size == 10  # any request: the held writes go first
    assert (export_dir / "f").read_bytes() == b"..ABCD..Z."
    assert client.held.bytes == 0
    f.close()


def test_a_write_after_held_ones_lands_after_them(client: Client, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"." * 4)
    f = _held_file(client, "/f")
    assert f.hold(b"AB", 0)
    f.write(b"XY")  # at position 0: it must win over the older held write
    assert (export_dir / "f").read_bytes() == b"XY.."
    f.close()


def test_a_revocation_sends_held_writes_before_another_client_reads(
    server: Server, client: Client, export_dir: Path
) -> None:
    (export_dir / "f").write_bytes(b"." * 10)
    f = _held_file(client, "/f")
    f.hold(b"held", 3)
    with make_client([address_of(server)]) as other, other.open("/f", "rb", buffering=0) as g:
        assert g.pread(10, 0) == b"...held..."
    f.close()


def test_held_writes_go_out_after_the_dirty_timeout(server: Server, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"." * 4)
    with make_client([address_of(server)], dirty_timeout=0.5) as c:
        f = _held_file(c, "/f")
        f.hold(b"x", 0)
        assert (export_dir / "f").read_bytes() == b"...."
        deadline = time.monotonic() + 10
        while (export_dir / "f").read_bytes() != b"x..." and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (export_dir / "f").read_bytes() == b"x..."
        f.close()


def test_held_bytes_are_bounded(server: Server, export_dir: Path) -> None:
    for name in "ab":
        (export_dir / name).write_bytes(b"")
    with make_client([address_of(server)], held_limit=100 << 10, dirty_timeout=60) as c:
        fa, fb = _held_file(c, "/a"), _held_file(c, "/b")
        fa.hold(b"a" * (60 << 10), 0)
        fa.push_if_due()
        assert (export_dir / "a").read_bytes() == b""  # under the bound: held
        fb.hold(b"b" * (60 << 10), 0)
        fb.push_if_due()  # over it: every file's held writes go
        deadline = time.monotonic() + 10
        while c.write_budget.used and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (export_dir / "a").read_bytes() == b"a" * (60 << 10)
        assert (export_dir / "b").read_bytes() == b"b" * (60 << 10)
        assert c.held.bytes == 0
        fa.close()
        fb.close()


def test_held_writes_are_dropped_and_reported_when_the_lock_is_lost(
    client: Client, export_dir: Path
) -> None:
    (export_dir / "f").write_bytes(b"." * 4)
    f = _held_file(client, "/f")
    f.hold(b"lost", 0)
    client.connection().close()  # the server drops the connection's locks with it
    deadline = time.monotonic() + 10
    while client.held.bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(OSError) as e:
        f.drain()
    assert e.value.errno == errno.EIO
    assert not f.hold(b"late", 0)  # its lock went with the connection: not held
    assert client.stat("/f").st_size == 4  # a new connection: nothing held went out
    assert (export_dir / "f").read_bytes() == b"...."
    f.close()


# --- through a mount ---------------------------------------------------------------


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMounts]:
    c = TwoMounts(tmp_path_factory.mktemp("held"), "dirty_timeout=30")
    yield c
    c.stop()


@requires_fuse
def test_a_mount_holds_small_writes_until_another_mount_reads(held: TwoMounts) -> None:
    (held.a / "f").write_bytes(b"." * 16)
    fd = os.open(held.a / "f", os.O_RDWR)
    try:
        os.pwrite(fd, b"held", 2)
        assert (held.export / "f").read_bytes() == b"." * 16  # no request: held
        assert os.pread(fd, 16, 0) == b"..held.........."  # a read sends them first
        os.pwrite(fd, b"more", 8)
        assert (held.b / "f").read_bytes() == b"..held..more...."  # revoked: sent
        os.pwrite(fd, b"last", 12)
    finally:
        os.close(fd)  # close: everything is on the server
    assert (held.export / "f").read_bytes() == b"..held..morelast"


@requires_fuse
def test_a_mount_sends_held_writes_after_its_dirty_timeout(tmp_path: Path) -> None:
    two = TwoMounts(tmp_path, "dirty_timeout=0.5", count=2)
    try:
        (two.a / "f").write_bytes(b"....")
        fd = os.open(two.a / "f", os.O_RDWR)
        try:
            os.pwrite(fd, b"t", 1)
            deadline = time.monotonic() + 10
            while (two.export / "f").read_bytes() != b".t.." and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (two.export / "f").read_bytes() == b".t.."
        finally:
            os.close(fd)
    finally:
        two.stop()


@requires_fuse
def test_async_close_returns_before_the_server_has_the_writes_but_others_see_them(
    tmp_path: Path,
) -> None:
    two = TwoMounts(tmp_path, "async_close", "dirty_timeout=30", "timeout=20", count=2)
    try:
        (two.a / "f").write_bytes(b"....")
        fd = os.open(two.a / "f", os.O_RDWR)
        os.pwrite(fd, b"ab", 0)  # held
        closer = threading.Thread(target=os.close, args=(fd,))
        stop_process(two.server.pid)
        try:
            closer.start()
            closer.join(5)
            assert not closer.is_alive(), "close(2) waited for a stopped server"
        finally:
            os.kill(two.server.pid, signal.SIGCONT)
            closer.join(30)
        assert (two.b / "f").read_bytes() == b"ab.."  # b's read revokes a's lock: sent
        assert (two.export / "f").read_bytes() == b"ab.."
    finally:
        two.stop()


def test_async_close_needs_a_coherent_mount() -> None:
    from pohmelfs.fuse.mount import MountConfig

    assert MountConfig.parse("127.0.0.1:1", "/mnt", ["async_close"]).async_close
    with pytest.raises(ValueError, match="async_close needs coherent"):
        MountConfig.parse("127.0.0.1:1", "/mnt", ["nocoherent,async_close"])
