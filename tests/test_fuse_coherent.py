"""A coherent mount (``-o coherent``) on the fake kernel, against an in-process server
and a second, library client: the mount's cache locks, held writes, leases and
directory locks, seen through what it answers the kernel and the notifications it
sends it (``fakekernel.Notifications``) when the other client's changes revoke them.
The same behaviour through a real kernel: ``test_mount_coherent.py``, ``test_leases.py``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakekernel import Coherent, FakeKernel, coherent_mount, make
from pohmelfs import Client
from pohmelfs.fuse import kernel as k
from pohmelfs.fuse.kernel import Op
from pohmelfs.fuse.operations import Options
from pohmelfs.protocol import Command
from pohmelfs.server.service import Server

LOCKED_ATTR_TIMEOUT = Options().locked_attr_timeout


@pytest.fixture
def cm(server: Server, export_dir: Path) -> Iterator[Coherent]:
    with coherent_mount(server, export_dir) as mount:
        yield mount


def open_flags(fk: FakeKernel, nodeid: int, flags: int) -> tuple[int, int]:
    """OPEN's (fh, open flags)."""
    fh, open_flags, _pad = k.OPEN_OUT.unpack(fk.ok(Op.OPEN, nodeid, make(k.OpenIn, flags=flags)))
    fk.node_of[fh] = nodeid
    return fh, open_flags


def counting_requests(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[Command]:
    """The commands the client sends from now on (on its connection of now)."""
    sent: list[Command] = []
    conn = client.connection()
    start: Callable[..., Any] = conn.start

    def counted(cmd: Command, *args: Any, **kw: Any) -> Any:
        sent.append(cmd)
        return start(cmd, *args, **kw)

    monkeypatch.setattr(conn, "start", counted)
    return sent


# --- data and attributes under a file's cache lock ---------------------------------------


def test_a_file_read_under_its_lock_is_dropped_before_another_client_writes(
    cm: Coherent,
) -> None:
    (cm.export / "f").write_bytes(b"v1")
    n = cm.fk.lookup(b"f").nodeid
    fh = cm.fk.open(n, os.O_RDONLY)
    assert cm.fk.read(fh, 0, 100) == b"v1"
    a = cm.fk.getattr(n)
    assert (a.size, a.valid) == (2, LOCKED_ATTR_TIMEOUT)  # kept while the lock is held
    cm.heard.take()
    with cm.other.open("/f", "r+b", buffering=0) as f:
        f.pwrite(b"version-2", 0)
    # Closed, so applied: the mount's pages and attributes were dropped before.
    assert ("inval", n, 0, -1) in cm.heard.seen, cm.heard.seen
    a = cm.fk.getattr(n)
    assert a.size == 9
    assert cm.fk.read(fh, 0, 100) == b"version-2"
    cm.fk.release(fh)


def test_pages_are_kept_across_opens_until_another_client_changes_the_file(
    cm: Coherent,
) -> None:
    (cm.export / "f").write_bytes(b"same")
    n = cm.fk.lookup(b"f").nodeid
    fh, flags = open_flags(cm.fk, n, os.O_RDONLY)
    assert cm.fk.read(fh, 0, 10) == b"same"
    cm.fk.release(fh)
    fh, flags = open_flags(cm.fk, n, os.O_RDONLY)
    assert flags & k.FOPEN_KEEP_CACHE  # nothing changed: the kernel keeps its pages
    cm.fk.release(fh)
    with cm.other.open("/f", "r+b", buffering=0) as f:
        f.pwrite(b"diff", 0)
    fh, flags = open_flags(cm.fk, n, os.O_RDONLY)
    assert not flags & k.FOPEN_KEEP_CACHE  # changed elsewhere: read again
    assert cm.fk.read(fh, 0, 10) == b"diff"
    cm.fk.release(fh)


def test_writes_held_under_the_exclusive_lock_reach_a_reader_elsewhere_first(
    cm: Coherent,
) -> None:
    (cm.export / "f").write_bytes(b"." * 10)
    n = cm.fk.lookup(b"f").nodeid
    fh, flags = open_flags(cm.fk, n, os.O_RDWR)
    assert flags & k.FOPEN_DIRECT_IO  # open for writing: each write(2) is one WRITE
    args = make(k.WriteIn, fh=fh, offset=2, size=3, write_flags=k.WRITE_LOCKOWNER)
    assert k.WRITE_OUT.unpack(cm.fk.ok(Op.WRITE, n, args, data=b"abc"))[0] == 3
    # Answered, and held back in the mount (the dirty time-out is seconds away).
    assert cm.client.services.held.bytes == 3
    assert (cm.export / "f").read_bytes() == b"." * 10
    # Another client's read revokes the lock: the held write goes first.
    with cm.other.open("/f", "rb") as f:
        assert f.read() == b"..abc....."
    assert cm.client.services.held.bytes == 0
    assert cm.fk.ok(Op.FLUSH, n, make(k.FlushIn, fh=fh)) == b""
    cm.fk.release(fh)


def test_a_write_elsewhere_while_the_mount_writes_is_not_lost(cm: Coherent) -> None:
    """The locks change hands on every turn; each side's write lands where it was made."""
    (cm.export / "f").write_bytes(b"-" * 8)
    n = cm.fk.lookup(b"f").nodeid
    fh = cm.fk.open(n, os.O_RDWR)
    with cm.other.open("/f", "r+b", buffering=0) as f:
        for i in range(4):
            args = make(k.WriteIn, fh=fh, offset=i, size=1, write_flags=k.WRITE_LOCKOWNER)
            cm.fk.ok(Op.WRITE, n, args, data=b"m")
            f.pwrite(b"o", 4 + i)
    assert cm.fk.ok(Op.FLUSH, n, make(k.FlushIn, fh=fh)) == b""
    assert (cm.export / "f").read_bytes() == b"mmmmoooo"
    assert cm.fk.read(fh, 0, 8) == b"mmmmoooo"
    cm.fk.release(fh)


# --- attributes under a lease --------------------------------------------------------------


def test_a_stat_under_a_lease_asks_nobody_until_a_change_elsewhere_revokes_it(
    cm: Coherent, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cm.export / "g").write_bytes(b"abc")
    e = cm.fk.lookup(b"g")
    n = e.nodeid
    assert e.attr_valid == 0  # new to the kernel: its GETATTR follows, from the lease
    sent = counting_requests(cm.client, monkeypatch)
    for _ in range(3):
        a = cm.fk.getattr(n)
        assert (a.size, a.valid) == (3, LOCKED_ATTR_TIMEOUT)
    assert sent == []  # answered from the lease
    cm.heard.take()
    cm.other.chmod("/g", 0o600)
    cm.heard.wait_for(("inval", n, -1, 0))  # attributes only: no pages were read
    assert cm.fk.getattr(n).mode & 0o7777 == 0o600
    assert sent  # asked the server again


# --- names under a directory's lock --------------------------------------------------------


def test_a_name_known_missing_is_kept_until_another_client_creates_it(cm: Coherent) -> None:
    missing = cm.fk.ok(Op.LOOKUP, names=(b"new",))
    nodeid, _gen, entry_valid, _av, _evn, _avn = k.ENTRY_OUT_HEAD.unpack_from(missing)
    assert nodeid == 0 and entry_valid > 0  # the kernel keeps "not there"
    cm.heard.take()
    with cm.other.open("/new", "wb") as f:
        f.write(b"made elsewhere")
    assert ("epoch",) in cm.heard.seen  # every name the kernel keeps is asked again
    assert cm.fk.lookup(b"new").attr.size == 14


def test_names_removed_and_renamed_elsewhere_are_dropped(cm: Coherent) -> None:
    for name in ("a", "b"):
        (cm.export / name).write_bytes(name.encode())
    cm.fk.lookup(b"a")
    cm.fk.lookup(b"b")
    cm.heard.take()
    cm.other.unlink("/a")
    assert ("epoch",) in cm.heard.take()
    assert k.ENTRY_OUT_HEAD.unpack_from(cm.fk.ok(Op.LOOKUP, names=(b"a",)))[0] == 0
    cm.fk.lookup(b"b")
    cm.other.rename("/b", "/c")
    assert ("epoch",) in cm.heard.take()
    assert k.ENTRY_OUT_HEAD.unpack_from(cm.fk.ok(Op.LOOKUP, names=(b"b",)))[0] == 0
    assert cm.fk.lookup(b"c").attr.size == 1


# --- the connection lost --------------------------------------------------------------------


def test_a_lost_connection_drops_everything_the_kernel_kept(cm: Coherent, server: Server) -> None:
    (cm.export / "f").write_bytes(b"kept")
    n = cm.fk.lookup(b"f").nodeid
    fh = cm.fk.open(n, os.O_RDONLY)
    assert cm.fk.read(fh, 0, 10) == b"kept"
    cm.heard.take()
    for session in list(server.sessions):
        session.sock.shutdown(socket.SHUT_RDWR)  # every lock of the mount goes with it
    cm.heard.wait_for(("inval", n, 0, -1))
    cm.heard.wait_for(("epoch",))
    # The mount goes on, on a new connection, under new locks.
    (cm.export / "f").write_bytes(b"new!")
    assert cm.fk.getattr(n).size == 4
    assert cm.fk.read(fh, 0, 10) == b"new!"
    cm.fk.release(fh)
