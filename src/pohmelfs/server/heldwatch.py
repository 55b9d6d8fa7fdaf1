"""Changes to the objects clients hold, watched one by one with inotify, where
fanotify cannot watch the whole filesystem (a server that is not root, or a
filesystem fanotify cannot mark).

Only what somebody caches is watched (``follow`` when the server looks at an
object for a client, ``unfollow`` when its last holder gives it up), each through
a descriptor of its own (``O_PATH``: it opens nothing for reading and follows the
inode through renames). inotify does not say which process made a change, so an
event is not a change made outside: it is a reason to look. The object's
attributes are read again and handed to ``look``, which compares them with what
pohmelfs recorded (``stamps.Stamps.look``): pohmelfs' own changes look the same as
recorded; anything else revokes. Like ``localwatch.py``, events are read as they
come after a quiet spell and at most every ``BATCH`` in a burst.

Limits: at most ``FOLLOWED`` objects, and a quarter of the server's descriptors
(each watch holds one), and the kernel's ``fs.inotify.max_user_watches`` for the
user the server runs as; past either, further objects are only checked when used
(``stamps.py``) and a warning says so, once. An object that cannot be watched is
not tried again while it is held. A queue overflow (``IN_Q_OVERFLOW``) is changes
lost: everything held is revoked. Descriptors given up are closed on the watching
thread (``unfollow`` runs under the lock table's lock, and the last close of a
removed file frees its blocks).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading
import time
from collections.abc import Callable

from . import inotify as ino
from .storage import FileKey
from .watchthread import WatchThread

log = logging.getLogger("pohmelfs.server")

BATCH = 0.02  # seconds between reads of the group: a burst's events merge meanwhile
FOLLOWED = 1 << 16  # objects watched at most (each holds a descriptor)
RETRY = 30.0  # seconds before watching is tried again once the kernel's limits were hit
READ_SIZE = 1 << 16

Look = Callable[[FileKey, os.stat_result], None]


class HeldObjects:
    """``opath(where)``: an O_PATH descriptor of an object (an open file or a path,
    as the storage knows it), for ``follow``."""

    def __init__(self, look: Look, lost: Callable[[], None],
                 opath: Callable[[object], int]) -> None:  # fmt: skip
        self._look = look
        self._lost = lost
        self._opath = opath
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._limit = min(FOLLOWED, soft // 4 if soft != resource.RLIM_INFINITY else FOLLOWED)
        self._group = ino.new_group()  # OSError where inotify cannot serve
        try:
            self._reader = WatchThread(self._group, self._read_all, lost, "pohmelfs-held", BATCH)
        except BaseException:
            os.close(self._group)
            raise
        self._lock = threading.Lock()
        self._by_key: dict[FileKey, tuple[int, int]] = {}  # key -> (watch, descriptor)
        self._by_wd: dict[int, FileKey] = {}
        self._refused: set[FileKey] = set()  # held, and could not be watched
        self._full_until = 0.0  # the kernel's watches or descriptors ran out: not before
        self._closing: list[int] = []  # descriptors given up, for the watching thread
        self._warned = False

    def start(self) -> HeldObjects:
        self._reader.start()
        return self

    def followed(self) -> int:
        return len(self._by_key)

    def follow(self, key: FileKey, where: object) -> None:
        """Watch object ``key``, found at ``where``, until ``unfollow``."""
        if key in self._by_key or key in self._refused:  # (glances first: most looks)
            return
        if len(self._by_key) >= self._limit or time.monotonic() < self._full_until:
            self._warn(f"{self._limit} objects are watched")
            return
        try:
            fd = self._opath(where)
        except OSError as e:
            self._refuse(key, e)
            return
        try:
            st = os.fstat(fd)
            with self._lock:
                if (st.st_dev, st.st_ino) != key or key in self._by_key or self._group < 0:
                    os.close(fd)
                    return
                wd = ino.watch(self._group, fd)
                self._by_key[key] = (wd, fd)
                self._by_wd[wd] = key
        except OSError as e:
            os.close(fd)
            self._refuse(key, e)

    def _refuse(self, key: FileKey, e: OSError) -> None:
        if e.errno in (errno.ENOSPC, errno.EMFILE, errno.ENFILE):
            self._full_until = time.monotonic() + RETRY
            ran_out = "fs.inotify.max_user_watches" if e.errno == errno.ENOSPC else "descriptors"
            self._warn(f"the server ran out of {ran_out}")
        elif e.errno not in (errno.ENOENT, errno.ESTALE):  # (gone: nobody caches it long)
            with self._lock:
                self._refused.add(key)
            log.debug("not watching %s: %s", key, e)

    def unfollow(self, key: FileKey) -> None:
        with self._lock:
            self._refused.discard(key)
            entry = self._by_key.pop(key, None)
            if entry is None:
                return
            wd, fd = entry
            del self._by_wd[wd]
            ino.unwatch(self._group, wd)  # (its IN_IGNORED wakes the thread, which closes fd)
            self._closing.append(fd)
            self._full_until = 0.0  # (a watch given back: room for another)

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s: changes made outside pohmelfs to further objects clients "
                        "cache are found only when they are next used", why)  # fmt: skip

    def stop(self) -> None:
        if self._group < 0 or not self._reader.stop():
            return
        with self._lock:
            closing = [fd for _wd, fd in self._by_key.values()] + self._closing
            self._by_key.clear()
            self._by_wd.clear()
            self._closing = []
            group, self._group = self._group, -1
        for fd in (*closing, group):
            os.close(fd)

    def _close_given_up(self) -> None:
        """Outside the lock: a last close may take long (it frees a removed file)."""
        with self._lock:
            closing, self._closing = self._closing, []
        for fd in closing:
            os.close(fd)

    def _read_all(self) -> None:
        self._close_given_up()
        wds: set[int] = set()
        for _ in range(64):  # bounded: a storm of changes is read in turns
            try:
                buf = os.read(self._group, READ_SIZE)
            except BlockingIOError:
                break
            for event in ino.parse(buf):
                if event.mask & ino.IN_Q_OVERFLOW:
                    log.warning("changes to held objects went unseen (the kernel's queue "
                                "overflowed): every client's cache is revoked")  # fmt: skip
                    self._lost()
                    return
                if event.mask & ino.IN_IGNORED:
                    continue
                if event.named and not event.mask & ~(ino.ENTRY_ONLY | ino.IN_ISDIR):
                    continue  # an entry's own change: its own watch, if held, says so
                wds.add(event.wd)
        for wd in wds:
            key = self._by_wd.get(wd)
            if key is not None:
                try:
                    self._look(key, lambda key=key: self._stat(key))  # type: ignore[misc]
                except OSError:
                    continue  # given up meanwhile

    def _stat(self, key: FileKey) -> os.stat_result:
        """The object's attributes, read through a copy of its descriptor (never under
        the lock: on a network filesystem a stat may take long)."""
        with self._lock:
            entry = self._by_key.get(key)
            if entry is None:
                raise OSError(errno.ENOENT, "not watched any more")
            fd = os.dup(entry[1])
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)
