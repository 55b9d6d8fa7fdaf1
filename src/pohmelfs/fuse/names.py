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
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable

from ..client.client import Client
from ..client.file import RemoteFile
from .nodes import Node

log = logging.getLogger("pohmelfs.fuse")

HELD = 86400.0  # entry time-out while the directory's lock is held: until revoked
LIMIT = 1024  # directories whose names are cached at once (one server handle each)


class NameLocks:
    def __init__(self, client: Client, bump_epoch: Callable[[], None],
                 drop_attrs: Callable[[int], None], limit: int = LIMIT) -> None:  # fmt: skip
        self._client = client
        self._bump_epoch = bump_epoch
        self._drop_attrs = drop_attrs
        self._limit = limit
        self._lock = threading.Lock()
        self._dirs: dict[int, RemoteFile] = {}  # nodeid -> its open directory handle
        self._held: set[int] = set()  # nodeids whose lock is held
        self._revokes: dict[int, int] = {}  # nodeid -> revocations so far
        client.on_disconnect.append(self._lost_all)

    def held(self, nodeid: int) -> float:
        """Entry time-out for names in the directory: HELD if its lock is held."""
        return HELD if nodeid in self._held else 0.0

    def take(self, node: Node) -> float:
        """Like ``held``, but first take the directory's lock if need be (and if
        it can be had: the directory may be unreadable, or too many are held)."""
        nodeid = node.nodeid
        if nodeid in self._held:
            return HELD
        d = self._handle(node)
        if d is None:
            return 0.0
        with self._lock:
            before = self._revokes.get(nodeid, 0)
        d.on_revoke = lambda _keep, _start, _length: self._revoked(nodeid)
        try:
            d.cache_lock(exclusive=False)
        except OSError as e:
            log.debug("no name lock on %r: %s", node.path(), e)
            return 0.0
        with self._lock:
            if self._revokes.get(nodeid, 0) != before or self._dirs.get(nodeid) is not d:
                return 0.0  # taken back already: it was never ours to use
            self._held.add(nodeid)
        return HELD

    def _handle(self, node: Node) -> RemoteFile | None:
        with self._lock:
            d = self._dirs.get(node.nodeid)
            if d is not None and not d.closed and not d.handle_lost():
                return d
            if len(self._dirs) >= self._limit:
                return None
        try:  # the handle only names the directory to lock: the mount's own identity
            d = RemoteFile(self._client, node.path(), os.O_RDONLY, 0, "")
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

    def _revoked(self, nodeid: int) -> None:
        """Revocation thread: stop trusting the kernel's names, before answering."""
        with self._lock:
            self._revokes[nodeid] = self._revokes.get(nodeid, 0) + 1
            self._held.discard(nodeid)
        self._drop_attrs(nodeid)
        self._bump_epoch()

    def _lost_all(self) -> None:
        """The connection (and with it every lock) is gone."""
        with self._lock:
            held, self._held = self._held, set()
            for nodeid in held:
                self._revokes[nodeid] = self._revokes.get(nodeid, 0) + 1
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
            self._revokes.pop(nodeid, None)
        if d is not None:
            d.close_async()  # the server drops the lock with the handle

    def close(self) -> None:
        self._lost_all()
