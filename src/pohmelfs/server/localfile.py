"""A file of the local export, open: the ``OpenFile`` of ``export.LocalExport``.

It owns one descriptor and acts on the file whatever names it has meanwhile.
Writes are all or nothing where the file system allows it to be known in advance
(``Space``: reserve the blocks first when space runs short, cut a failed write
back to the old end).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time

from ..protocol import UTIME_ATIME_NOW, UTIME_ATIME_OMIT, UTIME_MTIME_NOW, UTIME_MTIME_OMIT
from . import linux
from .storage import ModeFilter

XATTR_FLAGS = os.XATTR_CREATE | os.XATTR_REPLACE
# With less room than this (and at most SPACE_CHECK seconds ago), writes reserve their
# blocks first: well above the largest write (8 MiB) times the writers at once.
ROOMY = 1 << 30
SPACE_CHECK = 0.5


def proc_path(fd: int, name: bytes | None = None) -> bytes:
    base = b"/proc/self/fd/%d" % fd
    return base if name is None else base + b"/" + name


def utime_args(atime_ns: int, mtime_ns: int, which: int) -> tuple[int | None, int | None,
                                                                 bool, bool]:  # fmt: skip
    return (
        None if which & UTIME_ATIME_OMIT else atime_ns,
        None if which & UTIME_MTIME_OMIT else mtime_ns,
        bool(which & UTIME_ATIME_NOW),
        bool(which & UTIME_MTIME_NOW),
    )


def read_only_error() -> OSError:
    return OSError(errno.EROFS, os.strerror(errno.EROFS))


class Space:
    """Whether the export's file systems are short of space, asked at most every
    SPACE_CHECK seconds (reserving blocks for every write would cost sequential
    writers a tenth of their speed), and which of them cannot reserve at all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._no_fallocate: set[int] = set()
        self._known: dict[int, tuple[float, bool]] = {}  # device -> (asked when, tight)

    def tight(self, fd: int, dev: int) -> bool:
        now = time.monotonic()
        known = self._known.get(dev)
        if known is None or now - known[0] > SPACE_CHECK:
            s = os.fstatvfs(fd)
            known = (now, s.f_bavail * s.f_frsize < ROOMY)
            with self._lock:
                self._known[dev] = known
        return known[1]

    def reserve(self, fd: int, dev: int, offset: int, length: int) -> None:
        if dev in self._no_fallocate or not length:
            return
        try:
            linux.fallocate(fd, linux.FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                with self._lock:
                    self._no_fallocate.add(dev)  # this file system has no reservations
                return
            raise


class LocalFile:
    __slots__ = ("fd", "_space", "_read_only")

    def __init__(self, fd: int, space: Space, read_only: bool) -> None:
        self.fd = fd
        self._space = space
        self._read_only = read_only

    def _changing(self) -> None:
        if self._read_only:
            raise read_only_error()

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def file_id(self) -> bytes:
        """The file system's handle (inode and generation) with the device; where the
        file system has no handles, device and inode number only (a reused inode is
        then not told apart)."""
        st = os.fstat(self.fd)
        handle = linux.file_handle(self.fd)
        ident = st.st_dev.to_bytes(8, "big") + (
            handle if handle is not None else b"ino" + st.st_ino.to_bytes(8, "big")
        )
        return hashlib.blake2b(ident, digest_size=16).digest()

    def read_into(self, buf: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [buf], offset)

    def write(self, data: memoryview, offset: int | None) -> tuple[int, int]:
        """Write all of ``data`` at ``offset`` (None: at the end, for an O_APPEND
        descriptor), or nothing: when its file system is short of space, a write
        that needs new blocks reserves them first (fallocate, keeping the size), so
        that it fails with ENOSPC before a byte is written; one that still fails
        part-way after growing the file is cut back to the old end. (Not covered: a
        device error, a user's quota running out while the disk has room,
        copy-on-write file systems running out of space while overwriting.)"""
        fd = self.fd
        st = os.fstat(fd)
        start = st.st_size if offset is None else offset
        end = start + len(data)
        if (end > st.st_size or st.st_blocks * 512 < st.st_size) and self._space.tight(
            fd, st.st_dev
        ):
            self._space.reserve(fd, st.st_dev, start, len(data))  # it may need new blocks
        done = 0
        try:
            while done < len(data):
                if offset is None:
                    done += os.write(fd, data[done:])
                else:
                    done += os.pwrite(fd, data[done:], offset + done)
        except OSError:
            if done and end > st.st_size:
                self._cut_back(st.st_size, start, start + done)
            raise
        return done, (os.lseek(fd, 0, os.SEEK_CUR) if offset is None else end)

    def _cut_back(self, old_end: int, start: int, written_to: int) -> None:
        """A write that grew the file failed part-way: what it added past the old end
        goes again, unless another client wrote past it meanwhile (only our range
        was locked), nor what another client wrote between the old end and ours."""
        fd = self.fd
        if os.fstat(fd).st_size > written_to:
            return
        keep = old_end
        if start > old_end:
            try:
                first_data = os.lseek(fd, old_end, os.SEEK_DATA)
            except OSError:
                first_data = start
            if first_data < start:
                keep = start
        os.ftruncate(fd, keep)

    def truncate(self, size: int) -> None:
        self._changing()
        os.ftruncate(self.fd, size)

    def empty(self) -> None:
        """One opened read-only (O_RDONLY | O_TRUNC) is emptied through a second
        descriptor, opened for writing with the caller's rights."""
        self._changing()
        try:
            os.ftruncate(self.fd, 0)
            return
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.EINVAL):
                raise
        wfd = os.open(proc_path(self.fd), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.ftruncate(wfd, 0)
        finally:
            os.close(wfd)

    def allocate(self, mode: int, offset: int, length: int) -> None:
        self._changing()
        linux.fallocate(self.fd, mode, offset, length)

    def sync(self, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(self.fd)

    def chmod(self, mode: int, allowed: ModeFilter | None = None) -> None:
        self._changing()
        if allowed is not None:
            mode = allowed(mode, os.fstat(self.fd).st_mode)
        os.chmod(self.fd, mode & 0o7777)

    def chown(self, uid: int, gid: int) -> None:
        self._changing()
        os.chown(self.fd, uid if uid != 0xFFFFFFFF else -1, gid if gid != 0xFFFFFFFF else -1)

    def utimes(self, atime_ns: int, mtime_ns: int, which: int) -> None:
        self._changing()
        linux.utimensat(self.fd, None, *utime_args(atime_ns, mtime_ns, which))

    def getxattr(self, name: bytes) -> bytes:
        return os.getxattr(self.fd, name)

    def listxattr(self) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self.fd)]

    def setxattr(self, name: bytes, value: bytes, flags: int) -> None:
        self._changing()
        if flags & ~XATTR_FLAGS:
            raise OSError(errno.EINVAL, f"bad xattr flags {flags:#x}")
        os.setxattr(self.fd, name, value, flags)

    def removexattr(self, name: bytes) -> None:
        self._changing()
        os.removexattr(self.fd, name)

    def close(self) -> None:
        os.close(self.fd)
