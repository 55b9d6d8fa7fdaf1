"""Which server reads a file's data: balanced over a group's live servers.

Each file opened through a group gets a read server when it opens: among the live
servers (never one being resynced) of the highest priority, in turn. If that is
a replica, the OPEN asks both it and the lock server for a shared cache lock
(the lock server's may be the exclusive one the caller asked for), and, if the
file's versions in the two replies agree, the file's READs go to the replica
while both hold: a change of the file by another
client revokes the lock server's first (whether or not that client still
reaches the replica), and the replica's before the change is applied there, so
a replica never answers with data the lock server would not have given under
the same locks. Once either lock is revoked or given back (or the replica
leaves), the file's reads go to the lock server until it is opened again. A
READ on a replica first sends this client's held writes, as one to the lock
server does. Reads of
this client's own writes stay in order: a replica applies a connection's
requests in the order sent, and every change went to it first.

Lookups, listings and attributes stay with the lock server: they carry the
mount's leases and name locks, which one server grants.

A write-only server (``/w``) is never a file's read server. A read-only server
(``/r``) gets none of this client's changes, so it may be behind: it reads a file
opened read-only only if, besides both cache locks, the file's version there is
the lock server's (each OPEN's reply says it, under the lock it grants), and only
until this client changes the file's data itself (``changing``): that change goes
to the lock server alone.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from typing import Any

from .. import errors
from .. import protocol as p
from ..protocol import Command, Message
from .connection import Connection, Transaction

MAX_EARLY = 4096


def close_on(conn: Connection, its: int) -> None:
    """Close a read-only server's handle (nothing waits for it)."""
    try:
        conn.start(Command.CLOSE, callback=lambda _: None, oid=its)
    except OSError:
        pass  # (its connection is gone, and the handle with it)


class ReadRoutes:
    """``prio``: each server's priority (higher is read first)."""

    def __init__(self, prio: dict[str, int], unread: set[str] | None = None,
                 leave: Callable[[str, str], None] = lambda *_: None) -> None:  # fmt: skip
        """``unread``: the write-only servers; ``leave(address, why)``: a read server
        that failed a READ leaves the group."""
        self._leave = leave
        self._prio = dict(prio)
        self._unread = set(unread or ())
        self._readers: dict[str, Connection] = {}  # the read-only servers' connections
        # Our handles -> the file's identity on the lock server (while there are
        # read-only servers: which routes a change of the file takes back), and the
        # read-only server's connection and handle (to close with ours).
        self._objects: dict[int, bytes] = {}
        self._on_readers: dict[int, tuple[Any, int]] = {}
        self.changes = 0  # this client's changes of file data so far (``changing``)
        self._turns = itertools.count(random.randrange(1 << 16))  # (clients spread out)
        self._lock = threading.Lock()
        self._routes: dict[int, tuple[Any, int]] = {}  # lock server handle -> (conn, its)
        self._locks: dict[tuple[str, int], int] = {}  # (replica, its handle) -> ours
        # Revocations heard before the grant they take back was told (an OPEN's lock
        # revoked before its reply was looked at), oldest first, bounded.
        self._early: dict[tuple[str, int], None] = {}

    def __bool__(self) -> bool:
        return bool(self._routes)

    def add_server(self, address: str, prio: int, read: bool = True) -> None:
        """A server of the group, with its priority and whether files are read there."""
        with self._lock:
            self._prio[address] = prio
            (self._unread.discard if read else self._unread.add)(address)

    def set_prio(self, address: str, prio: int) -> None:
        """A server's new priority, for the files opened from now on."""
        with self._lock:
            self._prio[address] = prio

    def add_reader(self, conn: Connection, prio: int) -> None:
        """A read-only server joins the group."""
        with self._lock:
            self._readers[conn.address] = conn
        self.add_server(conn.address, prio)

    def readers(self) -> dict[str, Connection]:
        with self._lock:
            return dict(self._readers)

    def take_reader(self, address: str) -> Connection | None:
        """A read-only server leaves: its connection (None if it was not one); no read
        goes there any more."""
        with self._lock:
            conn = self._readers.pop(address, None)
        if conn is not None:
            self.left(address)
        return conn

    def take_readers(self) -> list[Connection]:
        with self._lock:
            conns, self._readers = list(self._readers.values()), {}
        return conns

    @property
    def read_only(self) -> bool:
        """Has the group a read-only server?"""
        return bool(self._readers)

    def pick(self, candidates: list[str]) -> str:
        """The read server of a file opening now, of ``candidates`` (the live ones,
        the lock server first: it reads what no other server can)."""
        with self._lock:
            fit = [a for a in candidates if a not in self._unread] or candidates[:1]
            top = max(self._prio.get(a, 0) for a in fit)
            best = [a for a in fit if self._prio.get(a, 0) == top]
            return best[next(self._turns) % len(best)]

    def opened(self, oid: int, fid: bytes) -> None:
        """A file opened as ``oid`` is ``fid`` on the lock server (read-only servers)."""
        with self._lock:
            self._objects[oid] = fid

    def reader_opened(self, answer: Message | None, conn: Connection, reply: Message,
                      changes: int) -> None:  # fmt: skip
        """A read-only server's answer to an OPEN (``answer``: the lock server's), sent
        when this client had made ``changes`` changes of file data: the file is read
        there while both cache locks hold if the versions agree (it has every change
        the lock server has of it) and this client changed no file's data since (the
        lock server's version may not count it, and the read-only server never
        will); its handle there closes with the file (at once if the OPEN failed, or
        the server left meanwhile)."""
        if reply.status:
            return
        with self._lock:
            ours = self._readers.get(conn.address) is conn
            if ours and answer is not None and not answer.status:
                self._on_readers[answer.oid] = (conn, reply.oid)
        if not ours or answer is None or answer.status:
            close_on(conn, reply.oid)
        elif changes == self.changes:
            self.replied(answer, conn, reply)

    def replied(self, answer: Message, conn: Connection, reply: Message) -> None:
        """The file the lock server opened (``answer``) is read on ``conn`` (``reply``:
        its OPEN's) while both cache locks hold, if both were granted and the versions
        agree: it has every change the lock server has of the file, and no other
        client changes it on either without revoking the lock first."""
        version = answer["version"]
        if (answer["cached"] != p.CacheMode.RELEASE and reply["cached"] == p.CacheMode.SHARED
                and version == reply["version"]
                and version not in (0, p.UNKNOWN_VERSION)):  # fmt: skip
            self.granted(answer.oid, conn, reply.oid)

    def changing(self, oid: int) -> None:
        """This client is about to change the data of the file open as ``oid`` (0: of
        a file named by path): the change goes to the lock server alone, so no read
        of that file (of any, when which is not known) goes to a read-only server
        from now on."""
        if not self._readers:
            return
        with self._lock:
            self.changes += 1  # (an OPEN under way when it began reads there no more)
            fid = self._objects.get(oid) if oid else None
            for ours, (conn, its) in list(self._routes.items()):
                if conn.address in self._readers and (
                        fid is None or self._objects.get(ours) == fid):  # fmt: skip
                    del self._routes[ours]
                    self._locks.pop((conn.address, its), None)

    def granted(self, oid: int, conn: Any, its: int) -> None:
        """``conn``'s server holds a shared cache lock of the file open as our ``oid``
        (its handle ``its``): the file's reads may go there."""
        with self._lock:
            if self._early.pop((conn.address, its), 0) is None:
                return  # taken back already
            if self._early.pop(("", oid), 0) is None:
                return  # the lock server's lock too
            self._routes[oid] = (conn, its)
            self._locks[conn.address, its] = oid

    def route(self, oid: int) -> tuple[Any, int] | None:
        """Where a READ of ``oid`` goes: a replica's connection and handle, or None
        (the lock server)."""
        return self._routes.get(oid)

    def read_on(self, route: tuple[Connection, int], callback: Callable[[Transaction], None]
                | None, xid: int | None, kw: dict[str, Any]) -> Transaction:  # fmt: skip
        """A READ on the file's read server (``route``). One that does not answer
        leaves, and the read goes again to the lock server (``errors.Rerouted``)."""
        conn, its = route
        if callback is not None:
            given = callback

            def callback(t: Transaction) -> None:
                if isinstance(t.error, (ConnectionError, TimeoutError)):
                    self._leave(conn.address, f"a READ failed: {t.error}")
                    t.error = errors.rerouted_error(conn.address, "its READ failed")
                given(t)

        try:
            tx = conn.start(Command.READ, callback=callback, xid=xid, oid=its, **kw)
        except OSError as e:
            self._leave(conn.address, f"a READ could not be sent: {e}")
            raise errors.rerouted_error(conn.address, "its READ failed") from None
        tx.via = conn
        return tx

    def wait_on(self, tx: Transaction, path: Any, path2: Any) -> Message:
        """The answer to a READ of ``read_on``."""
        conn = tx.via
        try:
            return conn.wait(tx, path, path2)  # type: ignore[no-any-return]
        except (ConnectionError, TimeoutError) as e:
            self._leave(conn.address, f"a READ failed: {e}")
            raise errors.rerouted_error(conn.address, "its READ failed") from None

    def revoked(self, address: str, its: int) -> bool:
        """The replica revokes the lock of its handle ``its``: reads go back to the
        lock server. True if it was one of ours."""
        with self._lock:
            oid = self._locks.pop((address, its), None)
            if oid is None:
                self._early[address, its] = None
                if len(self._early) > MAX_EARLY:
                    del self._early[next(iter(self._early))]
                return False
            self._routes.pop(oid, None)
            return True

    def lock_server_revoked(self, oid: int) -> None:
        """The lock server takes back the file's cache lock (another client changes
        it, maybe without the replica: one it lost): reads go to the lock server,
        for as long as the file stays open."""
        with self._lock:
            route = self._routes.pop(oid, None)
            if route is None:
                self._early["", oid] = None
                if len(self._early) > MAX_EARLY:
                    del self._early[next(iter(self._early))]
                return
            self._locks.pop((route[0].address, route[1]), None)

    def closed(self, oid: int) -> tuple[Any, int] | None:
        """The file open as ``oid`` closes: the read-only server's connection and
        handle it has there, if any (to close)."""
        with self._lock:
            route = self._routes.pop(oid, None)
            if route is not None:
                self._locks.pop((route[0].address, route[1]), None)
            self._objects.pop(oid, None)
            return self._on_readers.pop(oid, None)

    def left(self, address: str) -> None:
        """A replica left: no read goes there any more."""
        with self._lock:
            for oid, (conn, its) in list(self._routes.items()):
                if conn.address == address:
                    del self._routes[oid]
                    self._locks.pop((address, its), None)
            for oid, (conn, _) in list(self._on_readers.items()):
                if conn.address == address:
                    del self._on_readers[oid]

    def counts(self) -> dict[str, int]:
        """Files reading from each replica now."""
        with self._lock:
            out: dict[str, int] = {}
            for conn, _ in self._routes.values():
                out[conn.address] = out.get(conn.address, 0) + 1
            return out
