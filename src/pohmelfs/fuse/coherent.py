"""Kernel caching under the server's cache locks (mount option ``coherent``).

A node's data and attributes may stay in the kernel's caches only while the
mount holds a cache lock on the file: shared to read, exclusive to write. The
lock is taken through one open handle of the node. When the server revokes
it, every handle of the node writes back, reads still in flight finish, and
(unless the lock is only downgraded) the kernel's pages and attributes are
dropped, before the server is answered. So a read or an open on any mount
sees the latest write that returned on any other.

The kernel's own I/O must never wait for a lock: a page being read or written
back is locked (or under writeback) until we answer, and dropping the pages
during a revocation waits for exactly those pages. So while a revocation of a
node runs, a page-cache READ of it is sent without a lock (the revocation's
lock still covers it: the server applies nothing that conflicts until we
answer) and the pages are dropped again until no such READ came meanwhile; a
write-back from the page cache (a shared mapping) is always sent as it is.
New read(2) calls are held at the door instead: the revocation drops the
kernel's attributes first, so each asks GETATTR before it locks a page, and
GETATTR waits for the revocation to end.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable

from ..client.file import RemoteFile
from ..protocol import CacheMode
from .nodes import Node

log = logging.getLogger("pohmelfs.fuse")

NONE = -1  # (no lock: this mount's own state, never on the wire)
SHARED, EXCLUSIVE, RELEASE = CacheMode
# Seconds after a revocation during which a file (or directory) counts as shared.
CONTENDED = 2.0
PAGE = 4096
# How a page-cache READ goes (read_started): under the node's lock; without one while
# the lock is being revoked (the revocation drops its pages); without one and no
# revocation under way (the lock was taken back each time it was granted: its pages
# are dropped once it is answered).
LOCKED, BORROWED, UNCOVERED = 0, 1, 2
# Passes of dropping pages in one revocation, each after READs sent without a lock
# came during the last: they end when a pass saw none (only a program faulting in
# pages of a mapping the whole time keeps them going).
DROP_PASSES = 16


class CacheState:
    def __init__(self, invalidate: Callable[..., None],
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
        self._revoking: dict[int, int] = {}  # nodeid -> revocations under way
        self._borrowed: dict[int, int] = {}  # nodeid -> READs sent without a lock, in flight
        self._borrow_done: dict[int, int] = {}  # nodeid -> such READs answered, ever
        # Nodes that other mounts had open at the last grant: they learn of a new size
        # only from the server (RESIZE), so writes are not kept back from it.
        self._watched: set[int] = set()

    def held(self) -> int:
        """How many files the mount holds a cache lock of (the kernel may cache them)."""
        with self._cond:
            return sum(1 for mode in self._state.values() if mode)

    def ensure(self, node: Node, f: RemoteFile, exclusive: bool, page_io: bool = False) -> None:
        """Hold at least a shared (or an exclusive) lock on the node's file. Waits for a
        revocation of it under way to end first. ``page_io``: for the kernel's own page
        I/O (see the module's doc), which must not wait for a revocation: then it
        returns without the lock as soon as one of the node begins."""
        want = EXCLUSIVE if exclusive else SHARED
        nodeid = node.nodeid
        with self._cond:
            if self._state.get(node.nodeid, NONE) >= want:
                return
            via = self._via.get(node.nodeid)
            if via is None or via.closed:
                via = self._via[node.nodeid] = f
        via.on_revoke = lambda keep, _start, _length: self._revoked(node.nodeid, keep)
        revoking = lambda: bool(self._revoking.get(nodeid))  # noqa: E731
        for _ in range(5):  # a lock taken back as soon as granted was never ours to use
            with self._cond:
                if page_io and revoking():
                    return
                self._cond.wait_for(lambda: not revoking(), timeout=30)
            revokes = self._revokes.get(node.nodeid, 0)
            try:
                grant = via.granted_at_open(exclusive) or via.cache_lock(
                    exclusive=exclusive, abandon=revoking if page_io else None
                )
            except (ValueError, OSError) as e:
                # That handle was closed meanwhile (here: ValueError; its CLOSE went
                # first: EBADF from the server): take the lock through ours.
                if via is f or (isinstance(e, OSError) and e.errno != errno.EBADF):
                    raise
                with self._cond:
                    if self._via.get(nodeid) is via:
                        self._via[nodeid] = f
                via = f
                via.on_revoke = lambda keep, _start, _length: self._revoked(nodeid, keep)
                continue
            if grant is None:  # abandoned: the server may grant it later, and revoke it
                return
            attr = grant.attr
            version = (attr.size, attr.mtime_ns, attr.ctime_ns)
            if grant.watchers:
                self._watched.add(nodeid)
            else:
                self._watched.discard(nodeid)
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
        log.debug("node %d: its cache lock was taken back each time it was granted",
                  node.nodeid)  # fmt: skip

    def locked(self, nodeid: int) -> bool:
        return self._state.get(nodeid, NONE) != NONE

    def exclusive(self, nodeid: int) -> bool:
        return self._state.get(nodeid, NONE) == EXCLUSIVE

    def watched(self, nodeid: int) -> bool:
        """Do other mounts have the file open (at the last grant)? Then a write must
        reach the server before it is answered: their kernels learn the file's new
        size from it, and a mapping checks that size, asking nobody."""
        return nodeid in self._watched

    def hold(self, nodeid: int, f: RemoteFile, data: memoryview, offset: int) -> bool:
        """Keep a write back in ``f`` if the node's exclusive lock is held through
        ``f`` (False if not: the server fences the handle the lock was taken through,
        so only its held writes are refused once the lease is lost). Atomic with
        revocations, which mark the lock gone before writing back."""
        with self._cond:
            if (self._state.get(nodeid, NONE) != EXCLUSIVE or self._via.get(nodeid) is not f
                    or nodeid in self._watched):  # fmt: skip
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

    def read_started(self, node: Node, f: RemoteFile, exclusive: bool = False) -> int:
        """A page-cache READ of the node begins: LOCKED (under its lock, taken first if
        need be), BORROWED (while the lock is being revoked: the revocation drops the
        pages it fills) or UNCOVERED (see LOCKED). Pass it to ``read_done``."""
        nodeid = node.nodeid
        want = EXCLUSIVE if exclusive else SHARED
        for _ in range(5):
            with self._cond:
                if self._state.get(nodeid, NONE) >= want:
                    _count(self._reads, nodeid, 1)
                    return LOCKED
                if self._revoking.get(nodeid):
                    _count(self._borrowed, nodeid, 1)
                    return BORROWED
            self.ensure(node, f, exclusive, page_io=True)
        return UNCOVERED

    def read_done(self, nodeid: int, how: int, offset: int, size: int) -> None:
        """The kernel has the READ's answer (on the receive thread: never blocks)."""
        with self._cond:
            if how == LOCKED:
                _count(self._reads, nodeid, -1)
            elif how == BORROWED:
                _count(self._borrowed, nodeid, -1)
                _count(self._borrow_done, nodeid, 1)
            self._cond.notify_all()
        if how == UNCOVERED:  # no lock covers what it filled: it goes again
            start = offset - offset % PAGE
            drop = (nodeid, True, start, offset + size - start)
            threading.Thread(target=self._invalidate, args=drop, daemon=True,
                             name="pohmelfs-uncovered").start()  # fmt: skip

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
            for table in (self._version, self._revoked_at, self._revokes, self._borrow_done):
                table.pop(nodeid, None)
            self._valid.discard(nodeid)
            self._watched.discard(nodeid)

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
            _count(self._revoking, nodeid, 1)
        started = time.monotonic()
        times = []
        ended = False
        try:
            handles = self._handles(nodeid)
            # A file open for writing here may have pages dirtied through a shared
            # mapping, which the kernel tells us nothing of: they go (written back) too.
            drop = keep == RELEASE or any(f.writable() for f in handles)
            if drop:  # new read(2) calls now ask GETATTR first, which waits for us
                self._invalidate(nodeid, False)
            for f in handles:
                f.write_back()  # a failure stays with the file for its flush/fsync/close
            times.append(time.monotonic())
            with self._cond:
                self._cond.wait_for(lambda: not self._reads.get(nodeid), timeout=10)
                if keep == RELEASE:
                    self._valid.discard(nodeid)
            times.append(time.monotonic())
            ended = self._drop_pages(nodeid) if drop else False
        finally:
            if not ended:
                with self._cond:
                    _count(self._revoking, nodeid, -1)
                    self._cond.notify_all()
            took = time.monotonic() - started
            if took > 1.0:
                steps = ", ".join(f"{t - started:.2f}" for t in times)
                log.warning("node %d: a revocation took %.2f s (steps at %s)", nodeid, took, steps)

    def _drop_pages(self, nodeid: int) -> bool:
        """Drop the kernel's pages of the node (dirty ones are written back first,
        as WRITEs we send without waiting), again while READs sent without a lock
        filled some meanwhile. True once done: the revocation is then over, in the
        same breath as the last look (a READ after it asks for a lock again)."""
        for _ in range(DROP_PASSES):
            with self._cond:
                before = self._borrow_done.get(nodeid, 0)
            self._invalidate(nodeid, True)
            for f in self._handles(nodeid):
                f.write_back()  # what the kernel wrote back while its pages went
            with self._cond:
                self._cond.wait_for(lambda: not self._borrowed.get(nodeid), timeout=10)
                if self._borrow_done.get(nodeid, 0) == before:
                    _count(self._revoking, nodeid, -1)
                    self._cond.notify_all()
                    return True
        log.warning("node %d: pages kept being read while its lock was revoked", nodeid)
        return False


def _count(table: dict[int, int], key: int, delta: int) -> None:
    left = table.get(key, 0) + delta
    if left > 0:
        table[key] = left
    else:
        table.pop(key, None)
