"""Changes to the objects clients hold, watched one by one with inotify, where
fanotify cannot watch the whole filesystem (a server that is not root, or a
filesystem fanotify cannot mark).

Only what somebody caches is watched (``follow`` when the server records an
object's change attribute, ``unfollow`` when its last holder gives it up), each
through a descriptor of its own (``O_PATH``: it opens nothing for reading and
follows the inode through renames). inotify does not say which process made a
change, so an event is not a change made outside: it is a reason to look. The
object's attributes are read again and handed to ``look``, which compares them
with what pohmelfs recorded (``stamps.Stamps.seen``): pohmelfs' own changes look
the same as recorded; anything else revokes. Like ``localwatch.py``, events are
read as they come after a quiet spell and at most every ``BATCH`` in a burst.

Limits: at most ``FOLLOWED`` objects (descriptors of the server), and the
kernel's ``fs.inotify.max_user_watches`` for the user the server runs as; past
either, further objects are only checked when used (``stamps.py``) and a warning
says so, once. A queue overflow (``IN_Q_OVERFLOW``) is changes lost: everything
held is revoked.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable

from . import inotify as ino
from .storage import FileKey
from .watchthread import WatchThread

log = logging.getLogger("pohmelfs.server")

BATCH = 0.02  # seconds between reads of the group: a burst's events merge meanwhile
FOLLOWED = 1 << 16  # objects watched at most (each holds a descriptor)
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
        self._limit = FOLLOWED
        self._group = ino.new_group()  # OSError where inotify cannot serve
        try:
            self._reader = WatchThread(self._group, self._read_all, lost, "pohmelfs-held", BATCH)
        except BaseException:
            os.close(self._group)
            raise
        self._lock = threading.Lock()
        self._by_key: dict[FileKey, tuple[int, int]] = {}  # key -> (watch, descriptor)
        self._by_wd: dict[int, FileKey] = {}
        self._warned = False

    def start(self) -> HeldObjects:
        self._reader.start()
        return self

    def followed(self) -> int:
        return len(self._by_key)

    def follow(self, key: FileKey, where: object) -> None:
        """Watch object ``key``, found at ``where``, until ``unfollow``."""
        if key in self._by_key or len(self._by_key) >= self._limit:  # (a glance first)
            if len(self._by_key) >= self._limit:
                self._warn(f"{self._limit} objects are watched")
            return
        try:
            fd = self._opath(where)
        except OSError:
            return  # gone meanwhile: nobody will cache it long
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
            if e.errno == errno.ENOSPC:
                self._warn("the kernel's fs.inotify.max_user_watches is reached")
            else:
                log.debug("not watching %s: %s", key, e)

    def unfollow(self, key: FileKey) -> None:
        with self._lock:
            entry = self._by_key.pop(key, None)
            if entry is None:
                return
            wd, fd = entry
            del self._by_wd[wd]
            ino.unwatch(self._group, wd)
            os.close(fd)

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s: changes made outside pohmelfs to further objects clients "
                        "cache are found only when they are next used", why)  # fmt: skip

    def stop(self) -> None:
        if self._group < 0 or not self._reader.stop():
            return
        with self._lock:
            for _wd, fd in self._by_key.values():
                os.close(fd)
            self._by_key.clear()
            self._by_wd.clear()
            os.close(self._group)
            self._group = -1

    def _read_all(self) -> None:
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
                if not event.mask & ino.IN_IGNORED:
                    wds.add(event.wd)
        for wd in wds:
            with self._lock:  # (a descriptor is closed only under it: never reused here)
                key = self._by_wd.get(wd)
                if key is None:
                    continue  # given up meanwhile
                try:
                    st = os.fstat(self._by_key[key][1])
                except OSError:
                    continue
            self._look(key, st)
