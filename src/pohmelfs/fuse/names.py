"""Names the kernel may keep (coherent mounts): under a directory cache lock.

While the mount holds a shared cache lock on a directory, the kernel may keep
the names it looked up there, found or not found, for as long as it likes,
and the directory's own attributes. Another client that creates, removes or
renames a name there, or changes the directory's attributes, makes the server
revoke the lock first (and grant none until its change is done).

On revocation the mount marks the directory unlocked, drops its attributes,
makes every name the kernel holds stale at once with FUSE_NOTIFY_INC_EPOCH,
and only then answers. That notification takes no inode lock, so it cannot
deadlock against a local create that holds its directory locked while it
waits for the server (FUSE_NOTIFY_INVAL_ENTRY could). A lookup the kernel
began before the bump is stamped with the old epoch and is never trusted,
whichever way it raced the reply; a reply built after the directory was
marked unlocked carries no time-out at all.

A directory where lookups keep missing (an unpacker, a build creating its
outputs) is read whole once under its lock, if small: later misses there are
answered by the mount, and its own changes keep that listing true.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable

from ..client.client import Client
from ..client.file import RemoteFile
from .coherent import CONTENDED, RELEASE
from .nodes import Node

log = logging.getLogger("pohmelfs.fuse")

HELD = 86400.0  # entry time-out while the directory's lock is held: until revoked
LIMIT = 1024  # directories whose names are cached at once (one server handle each)
RUN = 1.0  # a change this soon after the last one in a directory continues a run
LISTED = 100_000  # names of one directory known at most (see ``missed``)
LISTING_BYTES = 1 << 20  # directories larger than this (st_size) are not read whole


class NameLocks:
    def __init__(self, client: Client, bump_epoch: Callable[[], None],
                 drop_attrs: Callable[[int], None], limit: int = LIMIT) -> None:  # fmt: skip
        self._client = client
        self._bump_epoch = bump_epoch
        self._drop_attrs = drop_attrs
        self._limit = limit
        self._lock = threading.Condition()
        self._dirs: dict[int, RemoteFile] = {}  # nodeid -> its open directory handle
        self._held: set[int] = set()  # nodeids whose lock is held
        self._exclusive: set[int] = set()  # ... and held exclusively
        self._ahead: dict[int, int] = {}  # nodeid -> changes sent ahead, unanswered
        self._revokes: dict[int, int] = {}  # nodeid -> releases so far (names went stale)
        self._downgrades: dict[int, int] = {}  # nodeid -> exclusive taken back, shared kept
        self._revoked_at: dict[int, float] = {}
        self._changed_at: dict[int, float] = {}  # nodeid -> this mount's last change there
        self._listed: dict[int, set[bytes]] = {}  # nodeid -> all its names (lock held)
        self._noted: dict[int, int] = {}  # nodeid -> changes of this mount noted there
        self._missed: set[int] = set()  # nodeids where a lookup missed under this lock
        client.when_disconnected(self._lost_all)

    def held(self, nodeid: int) -> float:
        """Entry time-out for names in the directory: HELD if its lock is held."""
        return HELD if nodeid in self._held else 0.0

    def generation(self, nodeid: int) -> int:
        """Changes when names learnt in the directory may have gone stale."""
        return self._revokes.get(nodeid, 0)

    def take(self, node: Node, exclusive: bool = False) -> float:
        """Like ``held``, but first take the directory's lock if need be (and if
        it can be had: the directory may be unreadable, or too many are held).
        ``exclusive``: a lock under which this mount may change names without
        waiting for the server (see ``send_ahead``); not while other clients
        change the directory too."""
        nodeid = node.nodeid
        if nodeid in (self._exclusive if exclusive else self._held):
            return HELD
        if exclusive and self._contended(nodeid):
            return 0.0
        d = self._handle(node)
        if d is None:
            return 0.0
        with self._lock:
            before = self._revokes.get(nodeid, 0), self._downgrades.get(nodeid, 0)
        d.on_revoke = lambda keep, _start, _length: self._revoked(nodeid, keep)
        try:
            d.cache_lock(exclusive=exclusive)
        except OSError as e:
            log.debug("no name lock on %r: %s", node.path(), e)
            return 0.0
        with self._lock:
            if self._revokes.get(nodeid, 0) != before[0] or self._dirs.get(nodeid) is not d:
                return 0.0  # taken back already: it was never ours to use
            self._held.add(nodeid)
            if exclusive and self._downgrades.get(nodeid, 0) == before[1]:
                self._exclusive.add(nodeid)  # (else only a shared lock is left)
        return HELD

    def missing(self, nodeid: int, name: bytes) -> bool:
        """Is ``name`` known not to be in the directory (its lock held)?"""
        names = self._listed.get(nodeid)
        return names is not None and name not in names

    def missed(self, nodeid: int, path: bytes) -> None:
        """A lookup in the directory found nothing. At the second miss under one
        lock, read the directory whole (if small), so that later misses need no
        request. Any change of names there since the read began, by another client
        (a revocation) or by this mount, makes the listing useless."""
        with self._lock:
            if nodeid not in self._held or nodeid in self._listed or self._ahead.get(nodeid):
                return
            if nodeid not in self._missed:
                self._missed.add(nodeid)
                return
            d = self._dirs.get(nodeid)
            if d is None or d.attr.size > LISTING_BYTES:
                return
            self._missed.discard(nodeid)
            before = self._revokes.get(nodeid, 0), self._noted.get(nodeid, 0)
        try:
            names = {e.name for e in self._client.readdir(path)}
        except OSError as e:
            log.debug("cannot list %r: %s", path, e)
            return
        with self._lock:
            now = self._revokes.get(nodeid, 0), self._noted.get(nodeid, 0)
            if (now == before and nodeid in self._held and not self._ahead.get(nodeid)
                    and len(names) <= LISTED):  # fmt: skip
                self._listed[nodeid] = names

    def note(self, nodeid: int, name: bytes, present: bool | None) -> None:
        """This mount changed ``name`` in the directory: it is there now (``present``),
        or gone; None: the change failed, so the listing may be wrong."""
        with self._lock:
            self._noted[nodeid] = self._noted.get(nodeid, 0) + 1
            names = self._listed.get(nodeid)
            if names is None:
                return
            if present is None or (present and len(names) >= LISTED):
                del self._listed[nodeid]
            elif present:
                names.add(name)
            else:
                names.discard(name)

    def _unlisted(self, nodeid: int) -> None:
        self._listed.pop(nodeid, None)
        self._missed.discard(nodeid)

    def _contended(self, nodeid: int) -> bool:
        return time.monotonic() - self._revoked_at.get(nodeid, -CONTENDED) < CONTENDED

    def send_ahead(self, parent: Node, send: Callable[[Callable[[], None]], None]) -> bool:
        """Change a name in ``parent`` without waiting for the server, if this mount
        holds the directory exclusively: nobody else can look at the name until
        they revoke the lock, and a revocation waits for every change sent ahead
        to be answered. ``send(done)`` sends the request; ``done`` must run when it
        is answered. False (nothing sent): the caller waits for the server.

        Only a run of changes (``rm -r``, an unpacker) goes ahead: for one change
        alone, taking the lock would cost the round trip it saves."""
        nodeid = parent.nodeid
        now = time.monotonic()
        last, self._changed_at[nodeid] = self._changed_at.get(nodeid, -RUN), now
        if nodeid not in self._exclusive and now - last >= RUN:
            return False
        if not self.take(parent, exclusive=True):
            return False
        with self._lock:
            if nodeid not in self._exclusive:
                return False
            self._ahead[nodeid] = self._ahead.get(nodeid, 0) + 1

        def done() -> None:
            with self._lock:
                left = self._ahead.get(nodeid, 1) - 1
                if left:
                    self._ahead[nodeid] = left
                else:
                    self._ahead.pop(nodeid, None)
                self._lock.notify_all()

        try:
            send(done)
        except BaseException:
            done()
            raise
        return True

    def _handle(self, node: Node) -> RemoteFile | None:
        with self._lock:
            d = self._dirs.get(node.nodeid)
            if d is not None and not d.closed and not d.handle_lost():
                return d
            if len(self._dirs) >= self._limit:
                return None
        try:  # the handle only names the directory to lock: the mount's own identity
            d = RemoteFile(self._client.services, node.path(), os.O_RDONLY, 0, "")
        except OSError:
            return None
        if not stat.S_ISDIR(d.attr.mode) or d.attr.ino != node.ino:  # renamed elsewhere
            d.close_async()
            return None
        with self._lock:
            old = self._dirs.get(node.nodeid)
            self._dirs[node.nodeid] = d
        if old is not None:
            old.close_async()
        return d

    def _revoked(self, nodeid: int, keep: int) -> None:
        """Revocation thread: changes sent ahead reach the server first; then, unless
        a shared lock is kept, stop trusting the kernel's names before answering."""
        with self._lock:
            # Counted first: a grant being taken meanwhile must not be trusted.
            self._exclusive.discard(nodeid)
            self._revoked_at[nodeid] = time.monotonic()
            if keep != RELEASE:
                self._downgrades[nodeid] = self._downgrades.get(nodeid, 0) + 1
            else:
                self._revokes[nodeid] = self._revokes.get(nodeid, 0) + 1
                self._held.discard(nodeid)
                self._unlisted(nodeid)
            if not self._lock.wait_for(lambda: not self._ahead.get(nodeid), timeout=30):
                log.warning("changes sent ahead in directory %d were not answered", nodeid)
        if keep == RELEASE:
            self._drop_attrs(nodeid)
            self._bump_epoch()

    def _lost_all(self) -> None:
        """The connection (and with it every lock) is gone."""
        with self._lock:
            held, self._held = self._held, set()
            self._exclusive.clear()
            for nodeid in held:
                self._revokes[nodeid] = self._revokes.get(nodeid, 0) + 1
            self._listed.clear()
            self._missed.clear()
            dirs, self._dirs = list(self._dirs.values()), {}
        for nodeid in held:
            self._drop_attrs(nodeid)
        self._bump_epoch()
        for d in dirs:
            d.close_async()

    def forget(self, nodeid: int) -> None:
        """The kernel forgot the directory (and so every name in it)."""
        with self._lock:
            d = self._dirs.pop(nodeid, None)
            self._held.discard(nodeid)
            self._exclusive.discard(nodeid)
            self._revokes.pop(nodeid, None)
            self._downgrades.pop(nodeid, None)
            self._revoked_at.pop(nodeid, None)
            self._changed_at.pop(nodeid, None)
            self._noted.pop(nodeid, None)
            self._unlisted(nodeid)
        if d is not None:
            d.close_async()  # the server drops the lock with the handle

    def close(self) -> None:
        self._lost_all()
