"""Open handles of a session: opening (O_CREAT and O_TRUNC as changes other
clients' caches make way for, a cache lock granted with the open), closing, and
the reference counts that keep a handle's descriptor open while work on it
runs, also work that waits in the session's queue."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import protocol as p
from ..protocol import Message
from . import cachelocks
from .rangelock import END
from .storage import OpenFile, Storage, attr_of

MAX_LEASES = 1 << 17  # per session: beyond, LEASE is a LOOKUP
MAX_HANDLES = 16384  # open files per session: each holds a descriptor of the server
NO_ATTR = p.Attr(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # OPEN's ``dir`` when nothing was made
ANY_FILE = bytes(p.FID_SIZE)  # OPEN's ``fid`` when any file of that name will do

if TYPE_CHECKING:
    from .service import Server


class Handle:
    """A file the session has open: references counted, closed at the last."""

    __slots__ = ("file", "refs", "append", "regular", "directory", "key", "writable")

    def __init__(self, file: OpenFile, append: bool, st: os.stat_result, writable: bool) -> None:
        self.file, self.refs, self.append = file, 1, append
        self.regular, self.directory = stat.S_ISREG(st.st_mode), stat.S_ISDIR(st.st_mode)
        self.key = st.st_dev, st.st_ino  # which file the range and cache locks apply to
        self.writable = writable


class Handles:
    """Mixed into the session: needs ``server``, ``sid``, ``export``, ``closed``,
    and from LockRequests ``_change`` and ``_naming``."""

    server: Server
    export: Storage
    sid: int
    closed: bool
    handles: dict[int, Handle]
    handles_lock: threading.Lock
    leases: dict[int, tuple[int, int]]
    next_handle: int
    _change: Callable[..., Message | None]
    _lookup: Callable[..., Message | None]
    _naming: Callable[..., Message | None]
    _resized: Callable[..., None]
    notices: int

    def _acquire(self, oid: int) -> Handle:
        with self.handles_lock:
            h = self.handles.get(oid)
            if h is None:
                raise OSError(errno.EBADF, "unknown file handle")
            h.refs += 1
            return h

    def _release(self, h: Handle) -> None:
        with self.handles_lock:
            h.refs -= 1
            last = h.refs == 0
        if last:
            if h.writable:
                self.server.writer_closed(h.key, self.sid)
            h.file.close()

    def _on_object(self, m: Message, by_path: Callable[[], object],
                   on_file: Callable[[OpenFile], object],
                   field: str | None = None) -> Message | None:  # fmt: skip
        """Run ``on_file`` on the open handle m.oid or, without one, ``by_path``.
        A change of attributes (no ``field`` to return) makes other clients that
        cache the object's attributes, under its cache lock, give them up first."""

        def reply(result: object) -> Message:
            return p.reply(m, **({field: result} if field else {}))

        if not m.oid:
            run = lambda: reply(by_path())  # noqa: E731
            if field is not None:
                return run()
            try:
                st = self.export.stat(m["path"])
            except OSError:
                return run()  # it fails there, with the reason
            return self._change(m, None, ((st.st_dev, st.st_ino),), run)

        def on_handle(h: Handle) -> Message | None:
            run = lambda: reply(on_file(h.file))  # noqa: E731
            return run() if field is not None else self._change(m, h, (h.key,), run)

        return self._with_handle(m, on_handle)

    def _open(self, m: Message) -> Message | None:
        path, flags, mode = m["path"], m["flags"], m["mode"]
        if len(self.handles) >= MAX_HANDLES:  # one client must not take every descriptor
            raise OSError(errno.EMFILE, f"more than {MAX_HANDLES} files open on this connection")
        if m["fid"] != ANY_FILE and flags & (os.O_CREAT | os.O_EXCL | os.O_TRUNC):
            # A reopen of a file it had: it must change nothing before the check.
            raise OSError(errno.EINVAL, "a file id is for reopening: no O_CREAT, O_EXCL, O_TRUNC")
        if flags & os.O_CREAT:  # creating a name changes its directory; opening one does not
            try:
                if flags & os.O_EXCL:
                    raise FileNotFoundError
                return self._open_existing(m, path, flags & ~os.O_CREAT, mode)
            except FileNotFoundError:
                return self._naming(m, (path,), lambda: self._created(m, path, flags, mode))
        return self._open_existing(m, path, flags, mode)

    def _open_existing(self, m: Message, path: bytes, flags: int, mode: int) -> Message | None:
        if not flags & os.O_TRUNC:
            return self._opened(m, *self.export.open(path, flags, mode))
        # O_TRUNC changes the file (even opened read-only, as Linux has it): other
        # clients' caches of it go first (rule 5).
        self.export.check_open(path, flags)
        file, attr = self.export.open(path, flags & ~os.O_TRUNC, mode)
        oid, h = self._new_handle(file, flags)  # the session owns the file from here on
        if not h.regular:
            return self._open_reply(m, oid, h, attr)

        def truncate() -> Message | None:
            try:
                before = h.file.stat().st_size
                with self.server.ranges.hold(h.key, 0, END, True):
                    h.file.empty()
                if self.server.sizes.elsewhere(h.key, self.sid):
                    self._resized(h.key, h.file.stat(), before, 0)
                return self._open_reply(m, oid, h, attr_of(h.file.stat()))
            except BaseException:
                self._drop_handle(oid)  # the client never learns of this handle
                raise

        try:
            return self._change(m, h, (h.key,), truncate)
        except BaseException:
            self._drop_handle(oid)
            raise

    def _opened(self, m: Message, file: OpenFile, attr: p.Attr) -> Message:
        oid, h = self._new_handle(file, m["flags"])
        return self._open_reply(m, oid, h, attr)

    def _created(self, m: Message, path: bytes, flags: int, mode: int) -> Message:
        """An open that may create: its reply carries the directory after it."""
        file, attr, directory = self.export.create(path, flags, mode)
        oid, h = self._new_handle(file, m["flags"])
        return self._open_reply(m, oid, h, attr, directory)

    def _new_handle(self, file: OpenFile, flags: int) -> tuple[int, Handle]:
        """Make ``file`` a handle of this session (closed with it from now on)."""
        try:
            st = file.stat()
        except OSError:
            file.close()
            raise
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        h = Handle(file, bool(flags & os.O_APPEND), st, writable)
        if writable:
            self.server.writer_opened(h.key, self.sid)
        with self.handles_lock:
            oid = self.next_handle
            self.next_handle += 1
            self.handles[oid] = h
            gone = self.closed  # close() took its snapshot of the handles already
        if h.regular and self.notices & p.NOTICE_RESIZE:  # (its kernel may map it)
            self.server.sizes.opened(h.key, self.sid, oid)
        if gone:
            self._drop_handle(oid)
        return oid, h

    def _drop_handle(self, oid: int) -> None:
        with self.handles_lock:
            h = self.handles.pop(oid, None)
        if h is not None:
            self.server.sizes.closed(h.key, self.sid, oid)
            self.server.cache.forget(h.key, (self.sid, oid))
            self._release(h)

    def _hold(self, h: Handle) -> Handle:
        """One more reference to a handle (for work that runs later)."""
        with self.handles_lock:
            h.refs += 1
        return h

    def _open_reply(self, m: Message, oid: int, h: Handle, attr: p.Attr,
                    directory: p.Attr = NO_ATTR) -> Message:  # fmt: skip
        fid = h.file.file_id()
        if m["fid"] != ANY_FILE and m["fid"] != fid:
            # A reopen (after a lost connection) that found another file by that name:
            # the client's handle is stale, and nothing may be done to this one.
            self._drop_handle(oid)
            raise OSError(errno.ESTALE, "the file was replaced or removed")
        cached = m["cache"]
        if cached > cachelocks.EXCLUSIVE:
            cached = cachelocks.RELEASE
        elif self.server.cache.try_acquire(h.key, (self.sid, oid), cached, 0, END):
            attr = attr_of(h.file.stat())  # as it is now that the lock is ours
        else:
            cached = cachelocks.RELEASE  # someone to revoke: the client asks with CACHE
        writers = self.server.writers_elsewhere(h.key, self.sid)
        watchers = self.server.sizes.count_elsewhere(h.key, self.sid)
        return p.reply(m, oid=oid, attr=attr, writers=writers, cached=cached, dir=directory,
                       fid=fid, watchers=watchers)  # fmt: skip

    def _close(self, m: Message) -> Message:
        with self.handles_lock:
            h = self.handles.pop(m.oid, None)
        if h is None:
            if self._forget_lease(m.oid):
                return p.reply(m)
            raise OSError(errno.EBADF, "unknown file handle")
        self.server.sizes.closed(h.key, self.sid, m.oid)
        self.server.cache.forget(h.key, (self.sid, m.oid))
        self._release(h)
        return p.reply(m)

    def _lease(self, m: Message) -> Message | None:
        """LOOKUP, and for a regular file a shared cache lock on it with no handle
        (a lease on its attributes), if one can be had without revoking anybody."""
        path = m["path"]
        st = self.export.stat(path)
        if stat.S_ISREG(st.st_mode) and len(self.leases) < MAX_LEASES:
            key = st.st_dev, st.st_ino
            with self.handles_lock:
                oid = self.next_handle
                self.next_handle += 1
                self.leases[oid] = key
            try:
                if self.server.cache.try_acquire(key, (self.sid, oid), cachelocks.SHARED, 0,
                                                 cachelocks.END):  # fmt: skip
                    now = self.export.stat(path)  # as it is now that the lock is ours
                    if (now.st_dev, now.st_ino) == key:
                        return p.reply(m, oid=oid, attr=attr_of(now), cached=cachelocks.SHARED)
            except BaseException:
                self._forget_lease(oid)
                raise
            self._forget_lease(oid)
        return self._lookup(m, st, cached=cachelocks.RELEASE)

    def _forget_lease(self, oid: int) -> bool:
        """Give lease ``oid`` up (by its key: no walk through every lock)."""
        with self.handles_lock:
            key = self.leases.pop(oid, None)
        if key is None:
            return False
        self.server.cache.forget(key, (self.sid, oid))
        return True

    def key_of(self, oid: int) -> object:
        """The file of handle or lease ``oid`` (None if it is gone)."""
        h = self.handles.get(oid)
        return h.key if h is not None else self.leases.get(oid)

    def _with_handle(self, m: Message, fn: Callable[[Handle], Message | None]) -> Message | None:
        h = self._acquire(m.oid)
        try:
            return fn(h)
        finally:
            self._release(h)
