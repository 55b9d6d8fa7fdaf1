"""A fake kernel for the FUSE layer: requests built as the session's reader thread
builds them after parsing, dispatched to an :class:`Operations`, their replies (and
the notifications the mount sends the kernel) recorded and decoded. READ replies
arrive from the client's receive thread, so every reply is awaited with a time-out."""

from __future__ import annotations

import errno
import itertools
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conftest import address_of, make_client
from pohmelfs import Client
from pohmelfs.fuse import kernel as k
from pohmelfs.fuse.channel import KernelChannel
from pohmelfs.fuse.kernel import Op
from pohmelfs.fuse.nodes import ROOT_ID
from pohmelfs.fuse.operations import Operations, Options, Replier
from pohmelfs.fuse.session import WANTED_FLAGS
from pohmelfs.server.service import Server

ATTR_NAMES = (
    "ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev "
    "blksize flags"
).split()


# --- the fake kernel ---------------------------------------------------------------------------


def make(args_type: tuple[struct.Struct, type], **fields: int) -> Any:
    """An argument tuple (e.g. ``make(k.ReadIn, fh=1, size=10)``); other fields are 0."""
    _st, cls = args_type
    unknown = set(fields) - set(cls._fields)
    assert not unknown, unknown
    return cls(**{f: fields.get(f, 0) for f in cls._fields})


def opname(opcode: int) -> str:
    try:
        return Op(opcode).name
    except ValueError:
        return f"opcode {opcode}"


class Reply(SimpleNamespace):
    error: int  # positive errno, 0 for success
    payload: bytes


class FakeKernel:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self._unique = itertools.count(2, 2)
        self.node_of: dict[int, int] = {}  # fh -> the node it was opened on (as the kernel knows)

    def send(
        self,
        opcode: int,
        nodeid: int = ROOT_ID,
        args: Any = None,
        names: tuple[bytes, ...] = (),
        data: bytes = b"",
        uid: int = 0,
        gid: int = 0,
        pid: int | None = None,
    ) -> tuple[int, queue.Queue[bytes]]:
        unique = next(self._unique)
        replies: queue.Queue[bytes] = queue.Queue()

        def write(parts: list[Any]) -> None:  # copies, as writev to /dev/fuse would
            replies.put(b"".join(bytes(p) for p in parts))

        size = k.IN_HEADER.size + sum(len(n) + 1 for n in names) + len(data)  # unused here
        header = k.InHeader(
            size, opcode, unique, nodeid, uid, gid, os.getpid() if pid is None else pid, 0, 0
        )
        req = k.Request(header, args, names, memoryview(data))
        self.ops.dispatch(req, Replier(unique, write))
        return unique, replies

    def call(self, opcode: int, nodeid: int = ROOT_ID, args: Any = None, **kw: Any) -> Reply:
        unique, replies = self.send(opcode, nodeid, args, **kw)
        try:
            buf = replies.get(timeout=10)
        except queue.Empty:
            raise AssertionError(f"no reply to {opname(opcode)}") from None
        length, error, got_unique = k.OUT_HEADER.unpack_from(buf)
        assert length == len(buf), "length field != bytes written"
        assert got_unique == unique
        assert error <= 0
        time.sleep(0)  # let a (wrong) second reply arrive before checking for it
        assert replies.empty(), f"{opname(opcode)} answered twice"
        return Reply(error=-error, payload=buf[k.OUT_HEADER.size :])

    def ok(self, opcode: int, nodeid: int = ROOT_ID, args: Any = None, **kw: Any) -> bytes:
        r = self.call(opcode, nodeid, args, **kw)
        assert r.error == 0, f"{opname(opcode)} failed: {errno.errorcode.get(r.error, r.error)}"
        return r.payload

    def fails(self, opcode: int, nodeid: int = ROOT_ID, args: Any = None, **kw: Any) -> str:
        """The errno's name (``"ENOENT"``), so that a failing assert reads well."""
        r = self.call(opcode, nodeid, args, **kw)
        assert r.error != 0, f"{opname(opcode)} succeeded"
        return errno.errorcode.get(r.error, str(r.error))

    def no_reply(self, opcode: int, nodeid: int = ROOT_ID, args: Any = None, **kw: Any) -> None:
        _unique, replies = self.send(opcode, nodeid, args, **kw)
        time.sleep(0.005)  # handlers other than READ answer inline: already there if at all
        assert replies.empty(), f"{opname(opcode)} must not be answered"

    # --- common requests ---------------------------------------------------------

    def lookup(self, name: bytes, parent: int = ROOT_ID, **kw: Any) -> SimpleNamespace:
        return entry(self.ok(Op.LOOKUP, parent, names=(name,), **kw))

    def getattr(self, nodeid: int, fh: int | None = None) -> SimpleNamespace:
        args = make(k.GetattrIn, getattr_flags=k.GETATTR_FH if fh is not None else 0, fh=fh or 0)
        return attr_out(self.ok(Op.GETATTR, nodeid, args))

    def open(self, nodeid: int, flags: int = os.O_RDWR, **kw: Any) -> int:
        fh = open_out(self.ok(Op.OPEN, nodeid, make(k.OpenIn, flags=flags), **kw))
        self.node_of[fh] = nodeid
        return fh

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self.ok(Op.READ, self.node_of.get(fh, ROOT_ID),
                       make(k.ReadIn, fh=fh, offset=offset, size=size))  # fmt: skip

    def write(self, fh: int, offset: int, data: bytes, write_flags: int = 0) -> int:
        args = make(k.WriteIn, fh=fh, offset=offset, size=len(data), write_flags=write_flags)
        nodeid = self.node_of.get(fh, ROOT_ID)
        (size, _pad) = k.WRITE_OUT.unpack(self.ok(Op.WRITE, nodeid, args, data=data))
        # Writes are answered before the server applies them (write-behind); the
        # kernel's FLUSH (close) waits for them, so do that before looking at disk.
        assert self.ok(Op.FLUSH, nodeid, make(k.FlushIn, fh=fh)) == b""
        return int(size)

    def release(self, fh: int, opcode: int = Op.RELEASE) -> None:
        assert self.ok(opcode, self.node_of.pop(fh, ROOT_ID), make(k.ReleaseIn, fh=fh)) == b""

    def forget(self, nodeid: int, nlookup: int) -> None:
        self.no_reply(Op.FORGET, nodeid, make(k.ForgetIn, nlookup=nlookup))


# --- reply decoders ---------------------------------------------------------------------------


def _attr(buf: bytes, at: int) -> SimpleNamespace:
    a = SimpleNamespace(**dict(zip(ATTR_NAMES, k.ATTR.unpack_from(buf, at), strict=True)))
    a.mtime_ns = _signed(a.mtime) * 1_000_000_000 + a.mtimensec
    a.atime_ns = _signed(a.atime) * 1_000_000_000 + a.atimensec
    return a


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def entry(payload: bytes) -> SimpleNamespace:
    assert len(payload) == k.ENTRY_OUT_HEAD.size + k.ATTR.size
    nodeid, gen, ev, av, evn, avn = k.ENTRY_OUT_HEAD.unpack_from(payload)
    return SimpleNamespace(
        nodeid=nodeid,
        generation=gen,
        entry_valid=ev + evn / 1e9,
        attr_valid=av + avn / 1e9,
        attr=_attr(payload, k.ENTRY_OUT_HEAD.size),
    )


def attr_out(payload: bytes) -> SimpleNamespace:
    assert len(payload) == k.ATTR_OUT_HEAD.size + k.ATTR.size
    valid, nsec, _dummy = k.ATTR_OUT_HEAD.unpack_from(payload)
    a = _attr(payload, k.ATTR_OUT_HEAD.size)
    a.valid = valid + nsec / 1e9
    return a


def open_out(payload: bytes) -> int:
    assert len(payload) == k.OPEN_OUT.size
    fh, _flags, _pad = k.OPEN_OUT.unpack(payload)
    assert fh != 0
    return int(fh)


def dirents(payload: bytes, plus: bool) -> list[SimpleNamespace]:
    out, pos = [], 0
    while pos < len(payload):
        e = None
        if plus:
            e = entry(payload[pos : pos + k.ENTRY_OUT_HEAD.size + k.ATTR.size])
            pos += k.ENTRY_OUT_HEAD.size + k.ATTR.size
        ino, off, namelen, type_ = k.DIRENT_HEAD.unpack_from(payload, pos)
        start = pos + k.DIRENT_HEAD.size
        name = payload[start : start + namelen]
        out.append(SimpleNamespace(name=name, ino=ino, off=off, type=type_, entry=e))
        pos = (start + namelen + 7) & ~7
    assert pos == len(payload)
    return out


# --- what the mount tells the kernel ----------------------------------------------------------


class Notifications:
    """The notifications a mount writes to the kernel, decoded, in order: ``("inval",
    nodeid, offset, length)`` (offset -1: attributes only), ``("epoch",)``,
    ``("entry", parent, name)``, ``("delete", parent, child, name)``, ``("store",
    nodeid, offset, data)``. Give :meth:`write` to ``KernelChannel.started``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seen: list[tuple[Any, ...]] = []
        self.errors: list[str] = []  # what was wrong (raised on the mount's threads)

    def write(self, parts: list[Any]) -> None:
        try:
            self._record(parts)
        except Exception as e:
            self.errors.append(repr(e))
            raise

    def _record(self, parts: list[Any]) -> None:
        buf = b"".join(bytes(p) for p in parts)
        length, code, unique = k.OUT_HEADER.unpack_from(buf)
        assert length == len(buf) and unique == 0, (length, len(buf), unique)
        body = buf[k.OUT_HEADER.size :]
        kind = k.Notify(code)
        record: tuple[Any, ...]
        if kind == k.Notify.INVAL_INODE:
            record = ("inval", *k.NOTIFY_INVAL_INODE.unpack(body))
        elif kind == k.Notify.INC_EPOCH:
            assert body == b""
            record = ("epoch",)
        elif kind == k.Notify.INVAL_ENTRY:
            parent, namelen, _pad = k.NOTIFY_INVAL_ENTRY.unpack_from(body)
            record = ("entry", parent, body[k.NOTIFY_INVAL_ENTRY.size :][:namelen])
        elif kind == k.Notify.DELETE:
            parent, child, namelen, _pad = k.NOTIFY_DELETE.unpack_from(body)
            record = ("delete", parent, child, body[k.NOTIFY_DELETE.size :][:namelen])
        elif kind == k.Notify.STORE:
            nodeid, offset, size, _pad = k.NOTIFY_STORE.unpack_from(body)
            data = body[k.NOTIFY_STORE.size :]
            assert len(data) == size
            record = ("store", nodeid, offset, data)
        else:
            raise AssertionError(f"unexpected notification {kind.name}")
        with self._cond:
            self.seen.append(record)
            self._cond.notify_all()

    def take(self) -> list[tuple[Any, ...]]:
        """What came since the last ``take``."""
        with self._cond:
            seen, self.seen = self.seen, []
            return seen

    def wait_for(self, record: tuple[Any, ...], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while record not in self.seen:
                left = deadline - time.monotonic()
                assert left > 0, f"no {record} in {self.seen}"
                self._cond.wait(left)

    def dropped(self, nodeid: int) -> bool:
        """Were the node's pages (all of them) and attributes dropped?"""
        with self._cond:
            return ("inval", nodeid, 0, -1) in self.seen

    def attrs_dropped(self, nodeid: int) -> bool:
        with self._cond:
            return any(r[:2] == ("inval", nodeid) for r in self.seen)


# --- a coherent mount -------------------------------------------------------------------------


@dataclass
class Coherent:
    fk: FakeKernel  # the mount, through its kernel
    heard: Notifications  # what it told the kernel
    client: Client  # the mount's client
    other: Client  # another client of the same server
    export: Path


@contextmanager
def coherent_mount(server: Server, export: Path) -> Iterator[Coherent]:
    """A mount with ``-o coherent`` of ``server``'s export, after INIT as the session
    does it (names cached: the kernel takes INC_EPOCH), and another library client."""
    client = make_client([address_of(server)], timeout=10, umask=0)
    other = make_client([address_of(server)], timeout=10, umask=0)
    heard = Notifications()
    channel = KernelChannel()
    channel.started(heard.write, WANTED_FLAGS, epochs=True)
    ops = Operations(client, Options(coherent=True), channel)
    try:
        yield Coherent(FakeKernel(ops), heard, client, other, export)
    finally:
        ops.close()
        client.close()
        other.close()
    assert not heard.errors, heard.errors


def cached_file(cm: Coherent, name: bytes, content: bytes) -> tuple[int, int]:
    """A file of the export, written there, looked up, opened and read once through
    the mount (so that it holds its lock), with what was heard so far taken:
    (nodeid, handle)."""
    (cm.export / os.fsdecode(name)).write_bytes(content)
    n = cm.fk.lookup(name).nodeid
    fh = cm.fk.open(n, os.O_RDONLY)
    assert cm.fk.read(fh, 0, len(content) + 100) == content
    cm.heard.take()
    return n, fh


def change_through_pohmelfs(cm: Coherent, rounds: int = 20) -> None:
    """Writes by the mount under its locks, and writes, chmods, truncates, links and
    renames of the same file by another client against them: every kind of change
    of pohmelfs' own that moves a file's ctime."""
    (cm.export / "f").write_bytes(b"start")
    n = cm.fk.lookup(b"f").nodeid
    fh = cm.fk.open(n, os.O_RDWR)
    for i in range(rounds):
        cm.fk.write(fh, i * 7, b"mounted")
        assert cm.fk.read(fh, i * 7, 7) == b"mounted"
        cm.fk.getattr(n)
        if i % 5 == 0:
            with cm.other.open("/f", "r+b") as other:
                other.write(b"other %d" % i)
            cm.other.chmod("/f", 0o640 + i % 2)
            cm.other.truncate("/f", 200 - i)
            cm.other.link("/f", "/hard")
            cm.other.unlink("/hard")
            assert cm.fk.read(fh, 0, 7)[:5] == b"other"
        if i % 7 == 0:
            cm.other.rename("/f", "/g")
            cm.other.rename("/g", "/f")
            cm.fk.lookup(b"f")
    cm.fk.release(fh)
