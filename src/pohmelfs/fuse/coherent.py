"""Kernel caching under the server's cache locks (mount option ``coherent``).

A node's data and attributes may stay in the kernel's caches only while the
mount holds a cache lock on the file: shared to read, exclusive to write. The
lock is taken through one open handle of the node. When the server revokes
it, every handle of the node writes back, reads still in flight finish, and
(unless the lock is only downgraded) the kernel's pages and attributes are
dropped, before the server is answered. So a read or an open on any mount
sees the latest write that returned on any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..client.file import RemoteFile
from .nodes import Node

log = logging.getLogger("pohmelfs.fuse")

NONE, SHARED, EXCLUSIVE = -1, 0, 1
RELEASE = 2
# Seconds after a revocation during which a file (or directory) counts as shared.
CONTENDED = 2.0


class CacheState:
    def __init__(self, invalidate: Callable[[int, bool], None],
                 handles: Callable[[int], list[RemoteFile]]) -> None:  # fmt: skip
        self._invalidate = invalidate
        self._handles = handles  # a node's open files
        self._cond = threading.Condition()
        self._state: dict[int, int] = {}  # nodeid -> NONE/SHARED/EXCLUSIVE
        self._via: dict[int, RemoteFile] = {}  # nodeid -> the handle the lock is held by
        self._valid: set[int] = set()  # nodes whose kernel page cache may be kept on open
        self._reads: dict[int, int] = {}  # nodeid -> READs in flight
        # nodeid -> (size, mtime, ctime) at the last grant: the file's version, as the
        # server sees it once every other holder has written back
        self._version: dict[int, tuple[int, int, int]] = {}
        self._revoked_at: dict[int, float] = {}  # nodeid -> when its lock was last revoked
        self._revokes: dict[int, int] = {}  # nodeid -> revocations so far

    def ensure(self, node: Node, f: RemoteFile, exclusive: bool) -> None:
        """Hold at least a shared (or an exclusive) lock on the node's file."""
        want = EXCLUSIVE if exclusive else SHARED
        with self._cond:
            if self._state.get(node.nodeid, NONE) >= want:
                return
            via = self._via.get(node.nodeid)
            if via is None or via.closed:
                via = self._via[node.nodeid] = f
        via.on_revoke = lambda keep, _start, _length: self._revoked(node.nodeid, keep)
        for _ in range(5):  # a lock taken back as soon as granted was never ours to use
            revokes = self._revokes.get(node.nodeid, 0)
            attr = (via.granted_at_open(exclusive) or via.cache_lock(exclusive=exclusive)).attr
            version = (attr.size, attr.mtime_ns, attr.ctime_ns)
            with self._cond:
                if self._revokes.get(node.nodeid, 0) != revokes:
                    continue
                if self._via.get(node.nodeid) is None:  # cleared by a lost connection
                    self._via[node.nodeid] = via
                elif self._via[node.nodeid] is not via:
                    continue
                self._state[node.nodeid] = max(self._state.get(node.nodeid, NONE), want)
                if self._version.get(node.nodeid) != version:
                    # Changed since our pages were read: the next open must not keep
                    # them (an open without KEEP_CACHE drops them). Not invalidated
                    # here: this may run inside a GETATTR, whose fresh reply the
                    # kernel would ignore.
                    self._valid.discard(node.nodeid)
                self._version[node.nodeid] = version
                return
        log.warning("node %d: its cache lock was taken back each time it was granted",
                    node.nodeid)  # fmt: skip

    def locked(self, nodeid: int) -> bool:
        return self._state.get(nodeid, NONE) != NONE

    def exclusive(self, nodeid: int) -> bool:
        return self._state.get(nodeid, NONE) == EXCLUSIVE

    def hold(self, nodeid: int, f: RemoteFile, data: memoryview, offset: int) -> bool:
        """Keep a write back in ``f`` if the node's exclusive lock is held through
        ``f`` (False if not: the server fences the handle the lock was taken through,
        so only its held writes are refused once the lease is lost). Atomic with
        revocations, which mark the lock gone before writing back."""
        with self._cond:
            if self._state.get(nodeid, NONE) != EXCLUSIVE or self._via.get(nodeid) is not f:
                return False
            if not f.hold(data, offset):
                return False
        f.push_if_due()
        return True

    def contended(self, nodeid: int) -> bool:
        """Did another client take the lock back lately? Then the clients take turns,
        and a lock taken for each write would bounce on every turn."""
        return time.monotonic() - self._revoked_at.get(nodeid, -CONTENDED) < CONTENDED

    def keep_cache(self, nodeid: int) -> bool:
        """On open (after ``ensure``): may the kernel keep the pages it has? Yes if no
        revoke dropped them and the file has not changed since they were read."""
        with self._cond:
            keep = nodeid in self._valid
            self._valid.add(nodeid)
            return keep

    def read_started(self, nodeid: int) -> None:
        with self._cond:
            self._reads[nodeid] = self._reads.get(nodeid, 0) + 1

    def read_done(self, nodeid: int) -> None:
        with self._cond:
            left = self._reads.get(nodeid, 1) - 1
            if left:
                self._reads[nodeid] = left
            else:
                self._reads.pop(nodeid, None)
            self._cond.notify_all()

    def lost_all(self) -> None:
        """The connection went, and every lock with it: nothing cached is ours now."""
        with self._cond:
            nodes = [n for n, state in self._state.items() if state != NONE]
            for nodeid in nodes:
                self._state[nodeid] = NONE
                self._revokes[nodeid] = self._revokes.get(nodeid, 0) + 1
                self._valid.discard(nodeid)
            self._via.clear()
        for nodeid in nodes:
            self._invalidate(nodeid, True)

    def forget(self, nodeid: int) -> None:
        """The kernel forgot the node: nothing of it is cached any more."""
        with self._cond:
            for table in (self._version, self._revoked_at, self._revokes):
                table.pop(nodeid, None)
            self._valid.discard(nodeid)

    def handle_closed(self, nodeid: int, f: RemoteFile) -> None:
        """The lock goes with the handle it was taken through (the server drops it)."""
        with self._cond:
            if self._via.get(nodeid) is not f:
                return
            del self._via[nodeid]
            self._state.pop(nodeid, None)
        # Attributes were kept long because the lock was held: not any more. Pages may
        # stay; the next grant's version tells whether they are still right.
        self._invalidate(nodeid, False)

    def _revoked(self, nodeid: int, keep: int) -> None:
        """Revocation thread: write back, let reads land, drop the kernel's cache."""
        with self._cond:
            # First, so that no write is held back once the held ones went (``hold``).
            # New reads now ask the server for a lock again (and wait for the writer).
            # Never raised here: the handle may have closed, or the connection gone.
            now = self._state.get(nodeid, NONE)
            self._state[nodeid] = NONE if keep == RELEASE else min(now, SHARED)
            self._revoked_at[nodeid] = time.monotonic()
            self._revokes[nodeid] = self._revokes.get(nodeid, 0) + 1
        for f in self._handles(nodeid):
            f.write_back()  # a failure stays with the file for its flush/fsync/close
        with self._cond:
            self._cond.wait_for(lambda: not self._reads.get(nodeid), timeout=10)
            if keep == RELEASE:
                self._valid.discard(nodeid)
        if keep == RELEASE:
            self._invalidate(nodeid, True)
