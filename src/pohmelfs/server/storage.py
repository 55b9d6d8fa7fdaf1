"""What the server asks of the storage it exports: the one boundary between the
network service and the files.

``Storage`` is a namespace of paths relative to the export (each call confined to
it); ``open`` and ``create`` return an ``OpenFile``, through which the service
reads, writes and changes that file whatever names it has meanwhile. The service
(``service.py``, ``handles.py``, ``lockrequests.py``) holds storage only through
these two interfaces: the local directory (``export.py``, ``localfile.py``) is the
first implementation, an in-memory one in the tests (``tests/memory_storage.py``)
the second. Errors are ``OSError`` with the errno a local call would give.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol

from ..protocol import Attr, Cred, DirEntry, StatFs

FileKey = tuple[int, int]  # (st_dev, st_ino): which file locks and changes apply to

# A watcher's ``look(key, stat)``: the object changed, by whoever; ``stat()`` reads
# its attributes (stamps.Stamps.look).
Look = Callable[[FileKey, Callable[[], os.stat_result]], object]

# chmod's ``allowed(mode, st_mode)``: the mode to set instead, given the file's type
ModeFilter = Callable[[int, int], int]


def attr_of(st: os.stat_result) -> Attr:
    return Attr(
        st.st_ino,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_rdev,
        st.st_size,
        st.st_blocks,
        st.st_blksize,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def opens_for_writing(flags: int) -> bool:
    """An open with these flags may change the file (O_CREAT and O_TRUNC count)."""
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & (os.O_CREAT | os.O_TRUNC))


class Watched(Protocol):
    """A watch of the storage for changes made outside the server."""

    def follow(self, key: FileKey, where: OpenFile | bytes) -> None:
        """Somebody caches object ``key`` (open as ``where``, or at that path): watch
        it, where the storage watches objects one by one."""
        ...

    def unfollow(self, key: FileKey) -> None: ...

    def stop(self) -> None: ...


class OpenFile(Protocol):
    """A file (or directory) the storage opened: closed once, by its owner."""

    def stat(self) -> os.stat_result: ...

    def file_id(self) -> bytes:
        """The file's identity across reconnects and restarts (16 bytes)."""
        ...

    def read_into(self, buf: memoryview, offset: int) -> int: ...

    def write(self, data: memoryview, offset: int | None) -> tuple[int, int]:
        """All of ``data`` at ``offset`` (None: at the end), or nothing; returns
        (bytes written, end of the write)."""
        ...

    def truncate(self, size: int) -> None: ...

    def empty(self) -> None:
        """O_TRUNC of the open: also of one opened read-only."""
        ...

    def allocate(self, mode: int, offset: int, length: int) -> None: ...

    def sync(self, datasync: bool) -> None: ...

    def chmod(self, mode: int, allowed: ModeFilter | None = None) -> None: ...

    def chown(self, uid: int, gid: int) -> None: ...

    def utimes(self, atime_ns: int, mtime_ns: int, which: int) -> None: ...

    def getxattr(self, name: bytes) -> bytes: ...

    def listxattr(self) -> list[bytes]: ...

    def setxattr(self, name: bytes, value: bytes, flags: int) -> None: ...

    def removexattr(self, name: bytes) -> None: ...

    def close(self) -> None: ...


class Storage(Protocol):
    """An exported tree. Calls that change it return the changed directories as
    they are right after (their attributes)."""

    read_only: bool
    xattrs: bool  # extended attributes are kept
    root: str  # what the export is called in logs

    def act_as(self, cred: Cred) -> None:
        """Act for this identity (its permission checks) on this thread from now on."""
        ...

    def close(self) -> None: ...

    def watch(self, changed: Callable[[set[FileKey]], None], look: Look,
              lost: Callable[[], None], whole: bool = True) -> Watched | None:  # fmt: skip
        """Tell ``changed`` the keys (st_dev, st_ino) of objects that something other
        than this server changed, or, where the storage cannot tell who changed
        them, ``look`` the objects followed (``Watched.follow``) that changed and how
        they are now; ``lost`` when changes went unseen. ``whole``: watch the whole
        storage if it can (else only what is followed). None where changes from
        outside cannot be seen."""
        ...

    def statfs(self) -> StatFs: ...

    def stat(self, path: bytes) -> os.stat_result: ...

    def lookup(self, path: bytes) -> Attr: ...

    def parent_of(self, path: bytes) -> tuple[FileKey, bytes] | None:
        """(st_dev, st_ino) and path of the nearest existing directory above ``path``."""
        ...

    def readdir(self, path: bytes, batch_bytes: int = ...) -> Iterator[list[DirEntry]]: ...

    def readlink(self, path: bytes) -> bytes: ...

    def check_open(self, path: bytes, flags: int) -> None:
        """Raises what ``open`` with these flags would for the flags alone."""
        ...

    def open(self, path: bytes, flags: int, mode: int) -> tuple[OpenFile, Attr]: ...

    def create(self, path: bytes, flags: int, mode: int) -> tuple[OpenFile, Attr, Attr]:
        """``open`` that may create: also the directory's attributes right after."""
        ...

    def truncate(self, path: bytes, size: int) -> None: ...

    def mkdir(self, path: bytes, mode: int) -> tuple[Attr, Attr]: ...

    def makedirs(self, path: bytes, mode: int, parent_mode: int = ...) -> Attr: ...

    def rmdir(self, path: bytes) -> Attr: ...

    def rmtree(self, path: bytes) -> set[FileKey]:
        """Remove a directory and everything below it; the keys of what went."""
        ...

    def unlink(self, path: bytes) -> Attr: ...

    def rename(self, old: bytes, new: bytes, flags: int) -> tuple[Attr, Attr]: ...

    def link(self, old: bytes, new: bytes) -> tuple[Attr, Attr]: ...

    def symlink(self, target: bytes, path: bytes) -> tuple[Attr, Attr]: ...

    def mknod(self, path: bytes, mode: int, rdev: int) -> tuple[Attr, Attr]: ...

    def chmod(self, path: bytes, mode: int, allowed: ModeFilter | None = None) -> None: ...

    def chown(self, path: bytes, uid: int, gid: int) -> None: ...

    def utimes(self, path: bytes, atime_ns: int, mtime_ns: int, which: int) -> None: ...

    def getxattr(self, path: bytes, name: bytes) -> bytes: ...

    def listxattr(self, path: bytes) -> list[bytes]: ...

    def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int) -> None: ...

    def removexattr(self, path: bytes, name: bytes) -> None: ...
