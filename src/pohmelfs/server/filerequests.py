"""Requests on files: opening (O_CREAT and O_TRUNC as changes other clients'
caches make way for, a cache lock granted with the open), closing, leases,
lookups, and the data and size of open files under range locks.

A WRITE is applied only once its whole payload has arrived, with one write of
the storage: a connection that dies mid-frame never leaves half of it applied.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from typing import Any

from .. import protocol as p
from ..protocol import HEADER_SIZE, TAG_SIZE, Message
from ..protocol.exchange import data_reply_header
from . import cachelocks
from .context import Context
from .handles import Handle
from .rangelock import END
from .sizes import EMPTY
from .stamps import at_path
from .storage import OpenFile, attr_of

READ_BUFFER = 1 << 20  # a reading thread's buffer, at least
NO_ATTR = p.Attr(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # OPEN's ``dir`` when nothing was made


# Bytes one COPY may copy: it runs on the session's reader, as a WRITE does, and holds
# the range locks of both files while it runs.
MAX_COPY = 16 << 20
MAX_OFFSET = (1 << 63) - 1  # a file offset, as the kernel's loff_t
COPY_CHUNK = 1 << 20


def copy_range(src: OpenFile, dst: OpenFile, src_offset: int, offset: int,
               length: int) -> tuple[int, bytes]:  # fmt: skip
    """Copy up to ``length`` bytes (fewer at the source's end); how many were copied,
    and the last one (for RESIZE). Through a buffer and the storage's own read and
    write (a write all or nothing, as ever), so any storage can do it."""
    buf = memoryview(bytearray(min(length, COPY_CHUNK)))
    done, last = 0, EMPTY
    while done < length:
        got = src.read_into(buf[: min(len(buf), length - done)], src_offset + done)
        if got <= 0:
            break
        dst.write(buf[:got], offset + done)
        done += got
        last = bytes(buf[got - 1 : got])
    return done, last


class FileRequests:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sid = ctx.sid
        self.export = ctx.shared.export
        self.handles = ctx.handles
        self.policy = ctx.policy
        self.ranges = ctx.shared.ranges
        self.sizes = ctx.shared.sizes
        self._frames = threading.local()  # .frame: each thread's READ reply buffer

    # --- opening and closing ----------------------------------------------------

    def open(self, m: Message) -> Message | None:
        path, flags, mode = m["path"], m["flags"], m["mode"]
        self.handles.check_room()
        if m["fid"] != p.ANY_FILE and flags & (os.O_CREAT | os.O_EXCL | os.O_TRUNC):
            # A reopen of a file it had: it must change nothing before the check.
            raise OSError(errno.EINVAL, "a file id is for reopening: no O_CREAT, O_EXCL, O_TRUNC")
        if flags & os.O_CREAT:  # creating a name changes its directory; opening one does not
            try:
                if flags & os.O_EXCL:
                    raise FileNotFoundError
                return self._open_existing(m, path, flags & ~os.O_CREAT, mode)
            except FileNotFoundError:
                return self.policy.naming(m, (path,), lambda: self._created(m, path, flags, mode))
        return self._open_existing(m, path, flags, mode)

    def _open_existing(self, m: Message, path: bytes, flags: int, mode: int) -> Message | None:
        if not flags & os.O_TRUNC:
            file, attr = self.export.open(path, flags, mode)
            oid, h = self._new_handle(file, m["flags"])
            return self._open_reply(m, oid, h, attr)
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
                with self.ranges.hold(h.key, 0, END, True):
                    h.file.empty()
                if self.sizes.elsewhere(h.key, self.sid):
                    self.policy.resized(h.key, h.file.stat(), before, 0)
                return self._open_reply(m, oid, h, attr_of(h.file.stat()))
            except BaseException:
                self._drop_handle(oid)  # the client never learns of this handle
                raise

        try:
            return self.policy.change(m, h, (h.key,), truncate)
        except BaseException:
            self._drop_handle(oid)
            raise

    def _created(self, m: Message, path: bytes, flags: int, mode: int) -> Message:
        """An open that may create: its reply carries the directory after it."""
        file, attr, directory = self.export.create(path, flags, mode)
        oid, h = self._new_handle(file, m["flags"])
        return self._open_reply(m, oid, h, attr, directory)

    def _new_handle(self, file: OpenFile, flags: int) -> tuple[int, Handle]:
        oid, h, gone = self.handles.add(file, flags)
        if h.regular and self.ctx.notices & p.NOTICE_RESIZE:  # (its kernel may map it)
            self.sizes.opened(h.key, self.sid, oid)
        if gone:
            self._drop_handle(oid)
        return oid, h

    def _drop_handle(self, oid: int) -> None:
        h = self.handles.pop(oid)
        if h is not None:
            self.sizes.closed(h.key, self.sid, oid)
            self.ctx.shared.cache.forget(h.key, (self.sid, oid))
            self.handles.release(h)

    def _open_reply(self, m: Message, oid: int, h: Handle, attr: p.Attr,
                    directory: p.Attr = NO_ATTR) -> Message:  # fmt: skip
        fid = h.file.file_id()
        if m["fid"] != p.ANY_FILE and m["fid"] != fid:
            # A reopen (after a lost connection) that found another file by that name:
            # the client's handle is stale, and nothing may be done to this one.
            self._drop_handle(oid)
            raise OSError(errno.ESTALE, "the file was replaced or removed")
        cache = self.ctx.shared.cache
        cached = m["cache"]
        if cached > cachelocks.EXCLUSIVE:
            cached = cachelocks.RELEASE
        elif cache.try_acquire(h.key, (self.sid, oid), cached, 0, END):
            attr = self._looked_at(h)  # as it is now that the lock is ours
        else:
            cached = cachelocks.RELEASE  # someone to revoke: the client asks with CACHE
        if cached == cachelocks.RELEASE:
            self.ctx.shared.stamps.seen(h.key, attr, h.file)
        writers = self.ctx.shared.writers.elsewhere(h.key, self.sid)
        watchers = self.sizes.count_elsewhere(h.key, self.sid)
        version = p.UNKNOWN_VERSION
        if cached != cachelocks.RELEASE:  # (a change from now on revokes the lock first)
            value, busy = self.ctx.shared.versions.get(h.key)
            if not busy:
                version = value
        return p.reply(m, oid=oid, attr=attr, writers=writers, cached=cached, dir=directory,
                       fid=fid, watchers=watchers, version=version)  # fmt: skip

    def close(self, m: Message) -> Message:
        h = self.handles.pop(m.oid)
        if h is None:
            if self._forget_lease(m.oid):
                return p.reply(m)
            raise OSError(errno.EBADF, "unknown file handle")
        self.sizes.closed(h.key, self.sid, m.oid)
        self.ctx.shared.cache.forget(h.key, (self.sid, m.oid))
        self.handles.release(h)
        return p.reply(m)

    def close_all(self) -> None:
        """The session ends: every handle goes."""
        for oid, h in self.handles.close():
            self.sizes.closed(h.key, self.sid, oid)
            self.handles.release(h)

    # --- attributes under cache locks ---------------------------------------------

    def lookup(self, m: Message, st: os.stat_result | None = None,
               **extra: Any) -> Message | None:  # fmt: skip
        """``st``: the path's, if already read; ``extra``: more reply fields (LEASE)."""
        if st is None:
            st = self.export.stat(m["path"])
        key = (st.st_dev, st.st_ino)
        self.ctx.shared.stamps.seen(key, st, m["path"])
        if not self.ctx.shared.cache.conflicting(key, self.sid, 0, END):
            return p.reply(m, attr=attr_of(st), **extra)  # the common case: no second stat
        again = lambda: p.reply(m, attr=self.export.lookup(m["path"]), **extra)  # noqa: E731
        return self.policy.plain(m, None, key, False, 0, END, again)

    def lease(self, m: Message) -> Message | None:
        """LOOKUP, and for a regular file a shared cache lock on it with no handle
        (a lease on its attributes), if one can be had without revoking anybody."""
        path = m["path"]
        st = self.export.stat(path)
        if stat.S_ISREG(st.st_mode) and self.handles.lease_room():
            key = st.st_dev, st.st_ino
            oid = self.handles.new_lease(key)
            try:
                if self.ctx.shared.cache.try_acquire(key, (self.sid, oid), cachelocks.SHARED, 0,
                                                     END):  # fmt: skip
                    # as it is now that the lock is ours
                    now = self.ctx.shared.stamps.look(key, lambda: self.export.stat(path), path)
                    if (now.st_dev, now.st_ino) == key:
                        return p.reply(m, oid=oid, attr=attr_of(now), cached=cachelocks.SHARED)
            except BaseException:
                self._forget_lease(oid)
                raise
            self._forget_lease(oid)
        return self.lookup(m, st, cached=cachelocks.RELEASE)

    def _forget_lease(self, oid: int) -> bool:
        """Give lease ``oid`` up (by its key: no walk through every lock)."""
        key = self.handles.pop_lease(oid)
        if key is None:
            return False
        self.ctx.shared.cache.forget(key, (self.sid, oid))
        return True

    def fstat(self, m: Message) -> Message | None:
        with self.handles.using(m.oid) as h:
            get = lambda: p.reply(m, attr=self._looked_at(h))  # noqa: E731
            return self.policy.plain(m, h, h.key, False, 0, END, get)

    def _looked_at(self, h: Handle) -> p.Attr:
        """The file's attributes now, compared with what its holders cached."""
        return attr_of(self.ctx.shared.stamps.look(h.key, h.file.stat, h.file))

    # --- data and size ------------------------------------------------------------

    def _writable(self, m: Message) -> None:
        self.policy.check_not_fenced(m)
        if self.export.read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def truncate(self, m: Message) -> Message | None:
        st = self.export.stat(m["path"])
        key = (st.st_dev, st.st_ino)

        def truncate() -> Message:
            self.export.truncate(m["path"], m.offset)
            if self.sizes.elsewhere(key, self.sid):
                self.policy.resized(key, self.export.stat(m["path"]), st.st_size, 0)
            return p.reply(m)

        touches = [at_path(self.export, key, m["path"])]
        return self.policy.plain(m, None, key, True, 0, END, truncate, touches)

    def ftruncate(self, m: Message) -> Message | None:
        self._writable(m)

        def truncate(h: Handle) -> Message:
            before = h.file.stat().st_size
            with self.ranges.hold(h.key, min(m.offset, before), END, True):
                self.policy.check_not_fenced(m)
                h.file.truncate(m.offset)
            if self.sizes.elsewhere(h.key, self.sid):
                self.policy.resized(h.key, h.file.stat(), before, 0)  # (new bytes are zeros)
            return p.reply(m)

        with self.handles.using(m.oid) as h:
            return self.policy.plain(m, h, h.key, True, 0, END, lambda: truncate(h))

    def fallocate(self, m: Message) -> Message | None:
        self._writable(m)

        def allocate(h: Handle) -> Message:
            watched = self.sizes.elsewhere(h.key, self.sid)
            before = h.file.stat().st_size if watched else 0
            with self.ranges.hold(h.key, m.offset, m.offset + m.length, True):
                self.policy.check_not_fenced(m)
                h.file.allocate(m["mode"], m.offset, m.length)
            if watched:
                self.policy.resized(h.key, h.file.stat(), before, 0)
            return p.reply(m)

        with self.handles.using(m.oid) as h:
            return self.policy.plain(m, h, h.key, True, 0, END, lambda: allocate(h))

    def fsync(self, m: Message) -> Message:
        with self.handles.using(m.oid) as h:
            h.file.sync(m["datasync"])
        return p.reply(m)

    def write(self, m: Message) -> Message | None:
        self.policy.check_not_fenced(m)

        def write(h: Handle) -> Message:
            data = memoryview(m["data"])
            watched = self.sizes.elsewhere(h.key, self.sid)
            before = h.file.stat().st_size if watched or h.append else 0
            if h.append:  # where it lands is known only once written: lock the tail
                with self.ranges.hold(h.key, before, END, True):
                    self.policy.check_not_fenced(m)
                    done, end = h.file.write(data, None)
            else:
                with self.ranges.hold(h.key, m.offset, m.offset + len(data), True):
                    self.policy.check_not_fenced(m)
                    done, end = h.file.write(data, m.offset)
            if watched:
                st = h.file.stat()
                last = data[-1] if done and st.st_size == end else EMPTY
                self.policy.resized(h.key, st, before, last)
            return p.reply(m, length=done, offset=end)

        with self.handles.using(m.oid) as h:
            start, end = (0, END) if h.append else (m.offset, m.offset + len(m["data"]))
            return self.policy.plain(m, h, h.key, True, start, end, lambda: write(h))

    def copy(self, m: Message) -> Message | None:
        """COPY: ``length`` bytes of the file open as ``src`` from ``src_offset`` into
        the one open as ``oid`` at ``offset``, here (the data never crosses the
        network). A change of the target, as a WRITE is; the source is read as a plain
        read is, but its client must hold it from other writers (a cache lock: its
        ``Client.copy_file`` takes one), since a copy cannot wait for them to write
        back on the reader: EAGAIN while another client may keep its data back."""
        self.policy.check_not_fenced(m)
        so, off, n = m["src_offset"], m.offset, m.length
        if n > MAX_COPY:
            raise OSError(errno.EINVAL, f"a COPY of {n} bytes exceeds {MAX_COPY}")
        if max(so, off) + n > MAX_OFFSET:
            raise OSError(errno.EINVAL, "a COPY past the largest file offset")
        if m.flags & p.FLAG_BEHIND:  # (it may wait, holding the source: not in the queue)
            raise OSError(errno.EINVAL, "a COPY is not sent behind")
        with self.handles.using(m["src"]) as s, self.handles.using(m.oid) as h:
            if s.key == h.key:
                raise OSError(errno.EINVAL, "a COPY within one file")
            if h.append:
                raise OSError(errno.EINVAL, "a COPY into a file open for appending")
            if self.ctx.shared.cache.conflicting(s.key, self.sid, so, so + n):
                raise OSError(errno.EAGAIN, "another client may keep the source's data back")
            source = self.handles.hold(s)  # (a copy that waits keeps its source open)

            def copy() -> Message:
                try:
                    return copy_held()
                finally:
                    self.handles.release(source)

            def copy_held() -> Message:
                watched = self.sizes.elsewhere(h.key, self.sid)
                before = h.file.stat().st_size if watched else 0
                # (in one order of the files, whichever is which: two COPYs each way
                # between the same two files must not each wait for the other)
                (k1, o1, w1), (k2, o2, w2) = sorted([(s.key, so, False), (h.key, off, True)])
                with self.ranges.hold(k1, o1, o1 + n, w1), self.ranges.hold(k2, o2, o2 + n, w2):
                    self.policy.check_not_fenced(m)
                    if self.ctx.shared.cache.conflicting(s.key, self.sid, so, so + n):
                        # (taken by another writer while this waited for the target's)
                        raise OSError(errno.EAGAIN, "another client took the source meanwhile")
                    done, last = copy_range(s.file, h.file, so, off, n)
                if watched:
                    st = h.file.stat()
                    self.policy.resized(h.key, st, before,
                                        last if st.st_size == off + done else EMPTY)  # fmt: skip
                return p.reply(m, length=done, offset=off + done)

            try:
                return self.policy.plain(m, h, h.key, True, off, off + n, copy)
            except BaseException:
                self.handles.release(source)  # (it never ran)
                raise

    def read(self, m: Message) -> Message | None:
        if m.length > self.ctx.max_payload:
            raise OSError(errno.EINVAL, f"read of {m.length} bytes exceeds {self.ctx.max_payload}")
        with self.handles.using(m.oid) as h:
            send = lambda: self._send_read(m, h)  # noqa: E731
            return self.policy.plain(m, h, h.key, False, m.offset, m.offset + m.length, send)

    def _send_read(self, m: Message, h: Handle) -> None:
        # The data is copied under the range lock (an atomic snapshot: no write can
        # tear it) and sent with one sendmsg. sendfile would send page-cache pages
        # that a write after the lock can still change while they wait in the
        # socket queues (on loopback, until the receiver has read them), and it
        # measured no faster: the receiving client is the bottleneck.
        # The reply is laid out in one buffer, header first: see FrameWriter.send_frame.
        if self.ctx.shared.cache.has_holders(h.key):  # somebody may cache what it reads
            self.ctx.shared.stamps.look(h.key, h.file.stat, h.file)
        frame = getattr(self._frames, "frame", None)
        if frame is None or len(frame) < HEADER_SIZE + m.length + TAG_SIZE:
            size = HEADER_SIZE + max(m.length, READ_BUFFER) + TAG_SIZE
            frame = self._frames.frame = memoryview(bytearray(size))
        with self.ranges.hold(h.key, m.offset, m.offset + m.length, False):
            got = h.file.read_into(frame[HEADER_SIZE : HEADER_SIZE + m.length], m.offset)
        frame[:HEADER_SIZE] = data_reply_header(m.cmd, m.xid, got, m.offset)
        self.ctx.writer.send_frame(frame, HEADER_SIZE + got)
