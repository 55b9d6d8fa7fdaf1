"""A session's open files and leases, by the ids its client knows them by.

A handle's reference count keeps its file open while work on it runs, also work
that waits in the session's queue: the last release closes it."""

from __future__ import annotations

import collections
import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .storage import FileKey, OpenFile

MAX_HANDLES = 16384  # open files per session: each holds a descriptor of the server
MAX_LEASES = 1 << 17  # per session: beyond, LEASE is a LOOKUP


class Handle:
    """A file the session has open: references counted, closed at the last."""

    __slots__ = ("file", "refs", "append", "regular", "directory", "key", "writable")

    def __init__(self, file: OpenFile, append: bool, st: os.stat_result, writable: bool) -> None:
        self.file, self.refs, self.append = file, 1, append
        self.regular, self.directory = stat.S_ISREG(st.st_mode), stat.S_ISDIR(st.st_mode)
        self.key: FileKey = (st.st_dev, st.st_ino)
        self.writable = writable


class OpenWriters:
    """How many handles have each file open for writing, and of which session
    (OPEN and CACHE tell a client how many write it elsewhere)."""

    def __init__(self) -> None:
        self._all = collections.Counter[FileKey]()
        self._by_session = collections.Counter[tuple[FileKey, int]]()
        self._lock = threading.Lock()

    def opened(self, key: FileKey, sid: int) -> None:
        with self._lock:
            self._all[key] += 1
            self._by_session[key, sid] += 1

    def closed(self, key: FileKey, sid: int) -> None:
        with self._lock:
            self._all[key] -= 1
            if self._all[key] <= 0:
                del self._all[key]
            self._by_session[key, sid] -= 1
            if self._by_session[key, sid] <= 0:
                del self._by_session[key, sid]

    def elsewhere(self, key: FileKey, sid: int) -> int:
        """How many handles of other sessions have the file open for writing."""
        with self._lock:
            return self._all[key] - self._by_session[key, sid]


class HandleTable:
    """Handles and leases of session ``sid``; one id space for both (a client
    closes either with CLOSE)."""

    def __init__(self, sid: int, writers: OpenWriters) -> None:
        self.sid = sid
        self._writers = writers
        self._handles: dict[int, Handle] = {}
        self._leases: dict[int, FileKey] = {}
        self._lock = threading.Lock()
        self._next = 1
        self.closed = False

    def __len__(self) -> int:
        return len(self._handles)

    def lease_room(self) -> bool:
        return len(self._leases) < MAX_LEASES

    def get(self, oid: int) -> Handle | None:
        return self._handles.get(oid)

    def check_room(self) -> None:
        if len(self._handles) >= MAX_HANDLES:  # one client must not take every descriptor
            raise OSError(errno.EMFILE, f"more than {MAX_HANDLES} files open on this connection")

    def add(self, file: OpenFile, flags: int) -> tuple[int, Handle, bool]:
        """Make ``file`` a handle (closed with the session from now on): its id,
        the handle, and whether the session closed meanwhile (then drop it)."""
        try:
            st = file.stat()
        except OSError:
            file.close()
            raise
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        h = Handle(file, bool(flags & os.O_APPEND), st, writable)
        if writable:
            self._writers.opened(h.key, self.sid)
        with self._lock:
            oid = self._new_id()
            self._handles[oid] = h
            return oid, h, self.closed  # close() took its snapshot of the handles already

    def new_lease(self, key: FileKey) -> int:
        with self._lock:
            oid = self._new_id()
            self._leases[oid] = key
            return oid

    def _new_id(self) -> int:
        oid = self._next
        self._next += 1
        return oid

    def acquire(self, oid: int) -> Handle:
        """One more reference to handle ``oid``; EBADF if there is none."""
        with self._lock:
            h = self._handles.get(oid)
            if h is None:
                raise OSError(errno.EBADF, "unknown file handle")
            h.refs += 1
            return h

    def hold(self, h: Handle) -> Handle:
        """One more reference to a handle (for work that runs later)."""
        with self._lock:
            h.refs += 1
        return h

    def release(self, h: Handle) -> None:
        with self._lock:
            h.refs -= 1
            last = h.refs == 0
        if last:
            if h.writable:
                self._writers.closed(h.key, self.sid)
            h.file.close()

    @contextmanager
    def using(self, oid: int) -> Iterator[Handle]:
        h = self.acquire(oid)
        try:
            yield h
        finally:
            self.release(h)

    def pop(self, oid: int) -> Handle | None:
        """Take handle ``oid`` out of the table (its owner releases it)."""
        with self._lock:
            return self._handles.pop(oid, None)

    def pop_lease(self, oid: int) -> FileKey | None:
        with self._lock:
            return self._leases.pop(oid, None)

    def key_of(self, oid: int) -> FileKey | None:
        """The file of handle or lease ``oid`` (None if it is gone)."""
        h = self._handles.get(oid)
        return h.key if h is not None else self._leases.get(oid)

    def close(self) -> list[tuple[int, Handle]]:
        """No more handles: those open now, each for its owner to release."""
        with self._lock:
            self.closed = True
            handles, self._handles = list(self._handles.items()), {}
        return handles
