"""Changes made to the exported directory by other processes of the server's
machine (a build, a restore, an editor over SSH), as the files they concern.

A thread reads a fanotify group on the export's whole filesystem
(``fanotify.py``), skips what this process did (pohmelfs's own changes revoke
others' caches where they are made) and turns each other change into the keys
(st_dev, st_ino) of the objects it touched: the file written, truncated or
chmodded; the directory a name was created, removed or renamed in, and the
object so named. Keys outside the export are passed on too: nobody holds a
lock on them, and telling them apart would cost a path walk per event. A lost
event (the kernel's queue overflowed) is reported as such, once per overflow.

Events are read as soon as they come after a quiet spell, and in a burst at
most every ``BATCH`` seconds, so that a burst of writes to one file is one
revocation, not one per write(2).
"""

from __future__ import annotations

import errno
import logging
import os
from collections import OrderedDict
from collections.abc import Callable

from . import fanotify as fa
from .storage import FileKey
from .watchthread import WatchThread

log = logging.getLogger("pohmelfs.server")

BATCH = 0.02  # seconds between reads of the group: a burst's events merge meanwhile
KEYS_KEPT = 4096  # file handles whose keys are remembered
READ_SIZE = 1 << 16
DIRENT = fa.FAN_CREATE | fa.FAN_DELETE | fa.FAN_MOVED_FROM | fa.FAN_MOVED_TO | fa.FAN_RENAME


class LocalChanges:
    """``changed(keys)``: other processes changed these objects; ``lost()``: some
    changes went unseen (revoke everything). Both run on the watching thread."""

    def __init__(self, root: str, changed: Callable[[set[FileKey]], None],
                 lost: Callable[[], None]) -> None:  # fmt: skip
        self._changed = changed
        self._lost = lost
        self._pid = os.getpid()
        self._group = fa.watch_filesystem(root)  # OSError where fanotify cannot serve
        try:
            # open_by_handle_at takes no O_PATH descriptor: a plain one of the root.
            self._mount_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(self._group)
            raise
        try:
            self._reader = WatchThread(self._group, self._read_all, lost, "pohmelfs-watch",
                                       BATCH)  # fmt: skip
        except BaseException:
            os.close(self._group)
            os.close(self._mount_fd)
            raise
        self._keys: OrderedDict[bytes, FileKey] = OrderedDict()

    def start(self) -> LocalChanges:
        self._reader.start()
        return self

    def follow(self, key: FileKey, where: object) -> None:
        pass  # the whole filesystem is watched

    def unfollow(self, key: FileKey) -> None:
        pass

    def stop(self) -> None:
        if self._group >= 0 and self._reader.stop():
            os.close(self._group)
            os.close(self._mount_fd)
            self._group = self._mount_fd = -1

    def _read_all(self) -> None:
        keys: set[FileKey] = set()
        overflowed = False
        for _ in range(64):  # bounded: a storm of changes is read in turns
            try:
                buf = os.read(self._group, READ_SIZE)
            except BlockingIOError:
                break
            for event in fa.parse(buf, skip_pid=self._pid):
                if event.mask & fa.FAN_Q_OVERFLOW:
                    overflowed = True
                else:
                    keys.update(self._keys_of(event))
        if overflowed:
            log.warning("changes to the export went unseen (the kernel's queue overflowed): "
                        "every client's cache of it is revoked")  # fmt: skip
            self._lost()
        elif keys:
            self._changed(keys)

    def _keys_of(self, event: fa.Event) -> list[FileKey]:
        # Every event names the object's directory too; only a change of names
        # (a create, remove, rename) changes the directory. A directory's own change
        # (chmod, utime) names it as its own entry ".", with no record of its own.
        names = bool(event.mask & DIRENT)
        keys = []
        for record in event.records:
            if not names and record.kind != fa.INFO_FID and record.name != b".":
                continue
            key = self._keys.get(record.handle)
            if key is None:
                try:
                    fd = fa.open_by_handle(self._mount_fd, record.handle)
                except OSError as e:
                    if e.errno in (errno.ESTALE, errno.ENOENT):
                        continue  # gone (its directory's change says the rest)
                    raise  # (out of descriptors, say): seen as changes lost
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                key = self._keys[record.handle] = (st.st_dev, st.st_ino)
                if len(self._keys) > KEYS_KEPT:
                    self._keys.popitem(last=False)
            else:
                self._keys.move_to_end(record.handle)
            keys.append(key)
        return keys
