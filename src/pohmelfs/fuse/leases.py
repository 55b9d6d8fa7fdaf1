"""Attributes of files the mount has not open, kept under leases (coherent mounts).

A lookup of a regular file asks for a lease with it (LEASE): a shared cache lock
on the file with no open handle, granted when nobody writes it. While the mount
holds it the kernel keeps the file's attributes as long as a locked file's, so
``stat``, ``ls -l`` and ``make`` need no request. Another client's write,
truncate or attribute change revokes it first (cache lock rules 5 and 6): the
mount drops the kernel's attributes of the node, then answers. This mount's own
changes of the file give its lease back first (attributes, xattrs, an open for
writing, names of it made or removed), since the server revokes only others.

Leases are kept per node, at most ``limit`` (least recently used go first, and
the kernel's attributes of theirs with them), and given back when the kernel
forgets the node; they go with the connection.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..client.client import Client
from ..client.connection import Connection
from ..protocol import Attr, Cred

LIMIT = 16384  # leases held at once
# Another client's link, unlink or rename does not revoke a lease (only its
# directories' locks): its link count and ctime are read again this often.
MAX_AGE = 60.0


class Lease:
    """What the server's REVOKE of one lease reaches."""

    __slots__ = ("_owner", "attr", "conn", "gen", "gone", "nodeid", "oid", "taken")

    def __init__(self, owner: Leases, gen: int) -> None:
        self._owner = owner
        self.gen = gen  # the owner's changes counter when it was asked for
        self.taken = time.monotonic()
        self.conn: Connection | None = None
        self.oid = 0
        self.attr: Attr | None = None
        self.nodeid = 0
        self.gone = False

    def revoked(self, _keep: int, _start: int, _length: int) -> None:
        self._owner._revoked(self)


class Leases:
    def __init__(self, client: Client, invalidate_attrs: Callable[[int], None],
                 limit: int = LIMIT) -> None:  # fmt: skip
        self._client = client
        self._invalidate_attrs = invalidate_attrs
        self._limit = limit
        self._lock = threading.Lock()
        self._by_node: OrderedDict[int, Lease] = OrderedDict()
        # This mount's own changes of files: counted at their start and end, and those
        # under way; a lease asked for across one may hold what it replaced.
        self._changes = 0
        self._busy = 0
        client.when_disconnected(self._lost_all)

    def lookup(self, cred: Cred, path: bytes) -> tuple[Attr, Lease | None]:
        """A path's attributes, with a lease on them if the server grants one."""
        lease = Lease(self, self._changes)
        attr, conn, oid = self._client.lease(path, cred, lease)
        if not oid:
            return attr, None
        lease.conn, lease.oid, lease.attr = conn, oid, attr
        return attr, lease

    def bind(self, lease: Lease | None, nodeid: int, ino: int, open_here: bool) -> None:
        """Keep ``lease`` as the node's, unless it went meanwhile, is not of it, or
        this mount has the file open (its writes there would not revoke it) or
        changed a file since it was asked for."""
        if lease is None:
            return
        dropped: list[Lease] = []
        with self._lock:
            if (lease.gone or lease.attr is None or lease.attr.ino != ino or _lost(lease)
                    or open_here or self._busy or lease.gen != self._changes):  # fmt: skip
                lease.gone = True
                dropped.append(lease)
            else:
                old = self._by_node.pop(nodeid, None)
                if old is not None:
                    old.gone = True
                    dropped.append(old)
                lease.nodeid = nodeid
                self._by_node[nodeid] = lease
                while len(self._by_node) > self._limit:
                    _, evicted = self._by_node.popitem(last=False)
                    evicted.gone = True
                    dropped.append(evicted)
        for gone in dropped:
            if gone is not lease and gone.nodeid != nodeid:
                self._invalidate_attrs(gone.nodeid)  # the kernel kept them under it
            self._give_back(gone)

    def held(self, nodeid: int) -> bool:
        return nodeid in self._by_node

    def attr(self, nodeid: int, ino: int) -> Attr | None:
        """The node's attributes under its lease, if it has one."""
        with self._lock:
            lease = self._by_node.get(nodeid)
            if lease is None or lease.attr is None or lease.attr.ino != ino or _lost(lease):
                return None  # (a lost connection's are dropped by _lost_all)
            if time.monotonic() - lease.taken > MAX_AGE:
                return None  # asked again (and replaced)
            self._by_node.move_to_end(nodeid)
            return lease.attr

    @contextmanager
    def changing(self, *nodeids: int) -> Iterator[None]:
        """This mount changes these nodes' files (the server revokes only others'
        leases): theirs go, with the kernel's attributes, and no lease asked for
        across the change is kept."""
        with self._lock:
            self._changes += 1
            self._busy += 1
        try:
            for nodeid in nodeids:
                self.drop(nodeid)
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._changes += 1

    def drop(self, nodeid: int) -> None:
        """Give the node's lease back, and the kernel's attributes it kept."""
        lease = self._pop(nodeid)
        if lease is not None:
            self._invalidate_attrs(nodeid)
            self._give_back(lease)

    def forget(self, nodeid: int) -> None:
        """The kernel forgot the node (and its attributes)."""
        lease = self._pop(nodeid)
        if lease is not None:
            self._give_back(lease)

    def _pop(self, nodeid: int) -> Lease | None:
        with self._lock:
            lease = self._by_node.pop(nodeid, None)
            if lease is not None:
                lease.gone = True
            return lease

    def _revoked(self, lease: Lease) -> None:
        """Revocation thread: the kernel's attributes go before the server is answered."""
        with self._lock:
            lease.gone = True
            if self._by_node.get(lease.nodeid) is lease:
                del self._by_node[lease.nodeid]
        if lease.nodeid:
            self._invalidate_attrs(lease.nodeid)
        self._give_back(lease)

    def _give_back(self, lease: Lease) -> None:
        if lease.conn is not None and lease.oid:
            self._client.unlease(lease.conn, lease.oid)
            lease.oid = 0

    def _lost_all(self) -> None:
        """The connection went, and every lease with it."""
        with self._lock:
            leases = list(self._by_node.values())
            self._by_node.clear()
        for lease in leases:
            lease.gone = True
            self._invalidate_attrs(lease.nodeid)


def _lost(lease: Lease) -> bool:
    """Did the lease go with its connection (which ``_lost_all`` may not know yet)?"""
    return lease.conn is None or lease.conn.closed
