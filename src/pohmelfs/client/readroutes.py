"""Which server reads a file's data: balanced over a group's live servers.

Each file opened through a group gets a read server when it opens: among the live
servers (never one being resynced) of the highest priority, in turn. If that is
a replica, the OPEN asks both it and the lock server for a shared cache lock
(the lock server's may be the exclusive one the caller asked for), and the
file's READs go to the replica while both hold: a change of the file by another
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
"""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

MAX_EARLY = 4096


class ReadRoutes:
    """``prio``: each server's priority (higher is read first)."""

    def __init__(self, prio: dict[str, int]) -> None:
        self._prio = dict(prio)
        self._turns = itertools.count(random.randrange(1 << 16))  # (clients spread out)
        self._lock = threading.Lock()
        self._routes: dict[int, tuple[Any, int]] = {}  # lock server handle -> (conn, its)
        self._locks: dict[tuple[str, int], int] = {}  # (replica, its handle) -> ours
        # Revocations heard before the grant they take back was told (an OPEN's lock
        # revoked before its reply was looked at), oldest first, bounded.
        self._early: dict[tuple[str, int], None] = {}

    def __bool__(self) -> bool:
        return bool(self._routes)

    def add_server(self, address: str, prio: int) -> None:
        with self._lock:
            self._prio[address] = prio

    def pick(self, candidates: list[str]) -> str:
        """The read server of a file opening now, of ``candidates`` (the live ones)."""
        with self._lock:
            top = max(self._prio.get(a, 0) for a in candidates)
            best = [a for a in candidates if self._prio.get(a, 0) == top]
            return best[next(self._turns) % len(best)]

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

    def closed(self, oid: int) -> None:
        with self._lock:
            route = self._routes.pop(oid, None)
            if route is not None:
                self._locks.pop((route[0].address, route[1]), None)

    def left(self, address: str) -> None:
        """A replica left: no read goes there any more."""
        with self._lock:
            for oid, (conn, its) in list(self._routes.items()):
                if conn.address == address:
                    del self._routes[oid]
                    self._locks.pop((address, its), None)

    def counts(self) -> dict[str, int]:
        """Files reading from each replica now."""
        with self._lock:
            out: dict[str, int] = {}
            for conn, _ in self._routes.values():
                out[conn.address] = out.get(conn.address, 0) + 1
            return out
