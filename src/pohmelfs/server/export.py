"""A directory of the local filesystem, exported with every path confined: the
``Storage`` of ``storage.py`` (its open files: ``localfile.py``). Confinement: a client path
is normalised lexically (``..`` may not climb above the root), its parent is
opened with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` relative to the
export's root descriptor, and the last component is acted on with ``*at``
calls that do not follow symlinks. Symlinks are stored and returned, never
followed. Device nodes can be neither created nor opened (as with ``nodev``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..protocol import (
    ATTR_SIZE,
    Attr,
    Cred,
    DirEntry,
    StatFs,
)
from . import linux
from .heldwatch import HeldObjects
from .localfile import XATTR_FLAGS, LocalFile, Space, proc_path, utime_args
from .localwatch import LocalChanges
from .storage import FileKey, Look, ModeFilter, Watched, attr_of, opens_for_writing

log = logging.getLogger("pohmelfs.server")

RESOLVE = linux.RESOLVE_BENEATH | linux.RESOLVE_NO_SYMLINKS | linux.RESOLVE_NO_MAGICLINKS
OPEN_FLAGS_ALLOWED = (
    os.O_ACCMODE
    | os.O_CREAT
    | os.O_EXCL
    | os.O_TRUNC
    | os.O_APPEND
    | os.O_DIRECTORY
    | os.O_NOFOLLOW
    | os.O_SYNC
    | os.O_DSYNC
    | os.O_NONBLOCK
    | os.O_NOATIME
    | os.O_DIRECT
)
RENAME_FLAGS_ALLOWED = linux.RENAME_NOREPLACE | linux.RENAME_EXCHANGE
# A path is walked in steps of at most this many bytes: the kernel takes PATH_MAX
# (4,096) per call, a tree may be deeper than that from the export's root.
PATH_STEP = 4000
TREE_FDS = 64  # directories RMTREE keeps open at once, however deep the tree


def _err(code: int, path: bytes | None = None, detail: str | None = None) -> OSError:
    return OSError(code, detail or os.strerror(code), path)


def split_path(path: bytes) -> list[bytes]:
    """Lexically normalise a client path (relative to the export root)."""
    if b"\0" in path:
        raise _err(errno.EINVAL, path, "NUL byte in path")
    parts: list[bytes] = []
    for comp in path.split(b"/"):
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            if not parts:
                raise _err(errno.EACCES, path, "path escapes the export")
            parts.pop()
        else:
            parts.append(comp)
    return parts


def _mutating(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: LocalExport, *args: Any, **kwargs: Any) -> Any:
        if self.read_only:
            raise _err(errno.EROFS)
        return fn(self, *args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


class LocalExport:
    """``devices``: device nodes may be created (they are never opened here)."""

    def __init__(self, root: str, read_only: bool = False, devices: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.read_only = read_only
        self.devices = devices
        self.root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = os.geteuid() == 0
        self._local = threading.local()
        self._space = Space()
        try:
            os.listxattr(self.root)
            self.xattrs = True
        except OSError:
            self.xattrs = False

    def close(self) -> None:
        os.close(self.root_fd)

    def watch(self, changed: Callable[[set[FileKey]], None], look: Look,
              lost: Callable[[], None], whole: bool = True) -> Watched | None:  # fmt: skip
        """Other processes' changes to the export's filesystem (fanotify:
        ``localwatch.py``), or else (or if not ``whole``) to the objects clients hold
        (inotify: ``heldwatch.py``)."""
        why: str | OSError = "asked for held objects only"
        if whole:
            try:
                return LocalChanges(self.root, changed, lost).start()
            except OSError as e:
                why = e
        try:
            held = HeldObjects(look, lost, self._opath).start()
        except OSError as e:
            log.warning("changes made to %s outside pohmelfs are found only when the "
                        "objects changed are next used (fanotify: %s; inotify: %s)",
                        self.root, why, e)  # fmt: skip
            return None
        log.info("%s is not watched whole (%s): the objects clients hold are watched "
                 "one by one with inotify", self.root, why)  # fmt: skip
        return held

    def _opath(self, where: object) -> int:
        """An O_PATH descriptor of an open file, or of a path (as the caller)."""
        flags = os.O_PATH | os.O_CLOEXEC
        if isinstance(where, LocalFile):
            return os.open(proc_path(where.fd), flags)
        assert isinstance(where, bytes)
        with self._parent(where) as (dfd, name):
            return os.open(name, flags | os.O_NOFOLLOW, dir_fd=dfd)

    # --- credentials and path resolution -----------------------------------

    def act_as(self, cred: Cred) -> None:
        """Give this thread the caller's file-system identity (root servers only)."""
        if not self.as_root or getattr(self._local, "cred", None) == cred:
            return
        self._local.cred = None  # a switch that fails leaves nobody's identity remembered
        linux.set_thread_creds(cred.uid, cred.gid, tuple(cred.groups))
        self._local.cred = cred

    @contextmanager
    def _parent(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        """Yield (directory fd, last component) for a path; root is (root_fd, '.').

        A trailing slash demands a directory, as POSIX has it: ENOTDIR otherwise.
        """
        with self._parent_of(path) as (dfd, name):
            if path.endswith(b"/") and name != b".":
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                else:
                    if not stat.S_ISDIR(st.st_mode):
                        raise _err(errno.ENOTDIR, path)
            yield dfd, name

    @contextmanager
    def _parent_of(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        parts = split_path(path)
        if not parts:
            yield self.root_fd, b"."
            return
        if len(parts) == 1:
            yield self.root_fd, parts[0]
            return
        fd = self._directory(parts[:-1])
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _directory(self, parts: list[bytes]) -> int:
        """An O_PATH descriptor of the directory ``parts`` below the root, walked
        beneath it in steps of at most PATH_STEP bytes (each step confined to the
        directory the last one reached, so the walk never leaves the export)."""
        fd = self.root_fd
        i = 0
        while i < len(parts):
            j, size = i + 1, len(parts[i])
            while j < len(parts) and size + 1 + len(parts[j]) <= PATH_STEP:
                size += 1 + len(parts[j])
                j += 1
            try:
                step = linux.openat2(fd, b"/".join(parts[i:j]), os.O_PATH | os.O_DIRECTORY,
                                     resolve=RESOLVE)  # fmt: skip
            finally:
                if fd != self.root_fd:
                    os.close(fd)
            fd, i = step, j
        return fd

    @contextmanager
    def _object(self, path: bytes) -> Iterator[tuple[int, os.stat_result]]:
        """An O_PATH descriptor of the object itself (never a symlink's target)."""
        with self._parent(path) as (dfd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            yield fd, os.fstat(fd)
        finally:
            os.close(fd)

    # --- reading the namespace ----------------------------------------------

    def statfs(self) -> StatFs:
        s = os.statvfs(self.root_fd)
        return StatFs(
            s.f_bsize,
            s.f_frsize,
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_namemax,
        )

    def lookup(self, path: bytes) -> Attr:
        return attr_of(self.stat(path))

    def stat(self, path: bytes) -> os.stat_result:
        with self._parent(path) as (dfd, name):
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)

    def parent_of(self, path: bytes) -> tuple[FileKey, bytes] | None:
        """(st_dev, st_ino) and path of the nearest existing directory above ``path``:
        the one a create or removal of ``path`` changes. None if there is none."""
        try:
            parts = split_path(path)
        except OSError:
            return None  # the request itself will fail with the reason
        while parts:
            parts.pop()
            try:
                with self._parent_of(b"/".join([*parts, b"x"])) as (dfd, _name):
                    st = os.fstat(dfd)
                return (st.st_dev, st.st_ino), b"/" + b"/".join(parts)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                return None
        return None

    def readdir(self, path: bytes, batch_bytes: int = 256 << 10) -> Iterator[list[DirEntry]]:
        """Yield the directory's entries with attributes, in batches whose
        encoding stays under ``batch_bytes``."""
        with self._parent(path) as (dfd, name):
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
            )
        try:
            out: list[DirEntry] = []
            size = 4
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listing
                    name = os.fsencode(entry.name)
                    cost = 2 + len(name) + ATTR_SIZE
                    if out and size + cost > batch_bytes:
                        yield out
                        out, size = [], 4
                    out.append(DirEntry(name, attr_of(st)))
                    size += cost
            yield out
        finally:
            os.close(fd)

    def readlink(self, path: bytes) -> bytes:
        with self._parent(path) as (dfd, name):
            return os.readlink(name, dir_fd=dfd)

    # --- open files -----------------------------------------------------------

    def open(self, path: bytes, flags: int, mode: int) -> tuple[LocalFile, Attr]:
        """Open (or create) a file; returns it and its attributes."""
        self.check_open(path, flags)
        with self._parent(path) as (dfd, name):
            fd, attr = self._open_at(dfd, name, flags, mode, path)
        return LocalFile(fd, self._space, self.read_only), attr

    def create(self, path: bytes, flags: int, mode: int) -> tuple[LocalFile, Attr, Attr]:
        """``open`` that may create: also the directory's attributes right after."""
        self.check_open(path, flags | os.O_CREAT)
        with self._parent(path) as (dfd, name):
            fd, attr = self._open_at(dfd, name, flags | os.O_CREAT, mode, path)
            try:
                directory = attr_of(os.fstat(dfd))
            except BaseException:
                os.close(fd)
                raise
        return LocalFile(fd, self._space, self.read_only), attr, directory

    def check_open(self, path: bytes, flags: int) -> None:
        if flags & ~OPEN_FLAGS_ALLOWED:
            raise _err(
                errno.EINVAL, path, f"unsupported open flags {flags & ~OPEN_FLAGS_ALLOWED:#o}"
            )
        if self.read_only and opens_for_writing(flags):
            raise _err(errno.EROFS, path)

    def _open_at(self, dfd: int, name: bytes, flags: int, mode: int,
                 path: bytes) -> tuple[int, Attr]:  # fmt: skip
        flags |= os.O_CLOEXEC | os.O_NONBLOCK
        for _ in range(8):  # bounded: a racing create/unlink cannot loop us forever
            try:
                return self._reopen(dfd, name, flags, path)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
            try:
                fd = os.open(name, flags | os.O_EXCL | os.O_NOFOLLOW, mode & 0o7777,
                             dir_fd=dfd)  # fmt: skip
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                continue
            return fd, attr_of(os.fstat(fd))
        raise _err(errno.EAGAIN, path, "file kept changing during open")

    def _reopen(self, dfd: int, name: bytes, flags: int, path: bytes) -> tuple[int, Attr]:
        """Open an existing object through an O_PATH descriptor.

        Refuses symlinks and device nodes without opening them; reopening via
        /proc/self/fd checks permissions again and cannot be redirected by a
        concurrent rename.
        """
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise _err(errno.EEXIST, path)
            st = os.fstat(pfd)
            if stat.S_ISLNK(st.st_mode):
                raise _err(errno.ELOOP, path, "symlinks are not followed by the server")
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                # (Not even with ``devices``: the server's own devices are not exported.)
                raise _err(errno.EACCES, path, "device nodes cannot be opened")
            fd = os.open(proc_path(pfd), flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW))
            return fd, attr_of(os.fstat(fd))
        finally:
            os.close(pfd)

    # --- changing the namespace --------------------------------------------

    @_mutating
    def truncate(self, path: bytes, size: int) -> None:
        with self._parent(path) as (dfd, name):
            fd, _ = self._reopen(dfd, name, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC, path)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    # Each change of names also returns the changed directory as it is right after
    # (fstat of the descriptor it was changed through).

    @_mutating
    def mkdir(self, path: bytes, mode: int) -> tuple[Attr, Attr]:
        with self._parent(path) as (dfd, name):
            os.mkdir(name, mode & 0o7777, dir_fd=dfd)
            return self._made(dfd, name)

    @staticmethod
    def _made(dfd: int, name: bytes) -> tuple[Attr, Attr]:
        return attr_of(os.stat(name, dir_fd=dfd, follow_symlinks=False)), attr_of(os.fstat(dfd))

    @_mutating
    def makedirs(self, path: bytes, mode: int, parent_mode: int = 0o777) -> Attr:
        """Create a directory and every missing parent in one call.

        EEXIST only when the last component already existed.
        """
        parts = split_path(path)
        if not parts:
            raise _err(errno.EEXIST, path)
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    os.mkdir(comp, (mode if last else parent_mode) & 0o7777, dir_fd=fd)
                except FileExistsError:
                    if last:
                        raise
                if last:
                    return attr_of(os.stat(comp, dir_fd=fd, follow_symlinks=False))
                nfd = os.open(
                    comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)
        raise AssertionError("unreachable")

    @_mutating
    def rmdir(self, path: bytes) -> Attr:
        with self._parent(path) as (dfd, name):
            os.rmdir(name, dir_fd=dfd)
            return attr_of(os.fstat(dfd))

    @_mutating
    def rmtree(self, path: bytes) -> set[FileKey]:
        """Remove a directory and everything below it in one call; the keys of the
        objects it unlinked or removed."""
        if not split_path(path):
            raise _err(errno.EBUSY, path, "cannot remove the export root")
        removed: set[FileKey] = set()
        with self._parent(path) as (dfd, name):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise _err(errno.ENOTDIR, path)
            removed.add((st.st_dev, st.st_ino))
            self._remove_tree(split_path(path)[:-1], dfd, name, removed)
        return removed

    def _remove_tree(self, above: list[bytes], dfd: int, name: bytes,
                     removed: set[FileKey]) -> None:  # fmt: skip
        """Remove directory ``name`` of ``dfd`` (which is ``above`` below the root) and
        everything below it, never following a symlink, with a stack instead of
        recursion (any depth: shutil.rmtree stops at Python's recursion limit) that
        keeps at most TREE_FDS directories open: a shallower one is let go, and
        walked to again from the root, confined, when the walk comes back to it."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        stack: list[list[Any]] = []  # [name, descriptor or None, subdirectories left]

        def fd_of(level: int) -> int:
            if level < 0:
                return dfd
            entry = stack[level]
            if entry[1] is None:  # let go: walk to it again
                entry[1] = self._directory([*above, *(e[0] for e in stack[: level + 1])])
            return int(entry[1])

        def push(child: bytes) -> None:
            fd = os.open(child, flags, dir_fd=fd_of(len(stack) - 1))
            subdirs: list[bytes] = []
            try:
                dev = os.fstat(fd).st_dev
                with os.scandir(fd) as it:
                    for entry in it:
                        removed.add((dev, entry.inode()))
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(os.fsencode(entry.name))
                        else:
                            os.unlink(entry.name, dir_fd=fd)
            except BaseException:
                os.close(fd)
                raise
            stack.append([child, fd, subdirs])
            opened = [e for e in stack if e[1] is not None]
            if len(opened) > TREE_FDS:
                os.close(opened[0][1])
                opened[0][1] = None

        try:
            push(name)
            while stack:
                entry = stack[-1]
                if entry[2]:
                    push(entry[2].pop())
                    continue
                stack.pop()
                if entry[1] is not None:
                    os.close(entry[1])
                os.rmdir(entry[0], dir_fd=fd_of(len(stack) - 1))
        finally:
            for entry in stack:
                if entry[1] is not None:
                    os.close(entry[1])

    @_mutating
    def unlink(self, path: bytes) -> Attr:
        with self._parent(path) as (dfd, name):
            os.unlink(name, dir_fd=dfd)
            return attr_of(os.fstat(dfd))

    @_mutating
    def rename(self, old: bytes, new: bytes, flags: int) -> tuple[Attr, Attr]:
        if flags & ~RENAME_FLAGS_ALLOWED or flags == RENAME_FLAGS_ALLOWED:
            raise _err(errno.EINVAL, old, "bad rename flags")
        with self._parent(old) as (odfd, oname), self._parent(new) as (ndfd, nname):
            if flags:
                linux.renameat2(odfd, oname, ndfd, nname, flags)
            else:
                os.rename(oname, nname, src_dir_fd=odfd, dst_dir_fd=ndfd)
            return attr_of(os.fstat(odfd)), attr_of(os.fstat(ndfd))

    @_mutating
    def link(self, old: bytes, new: bytes) -> tuple[Attr, Attr]:
        with self._parent(old) as (odfd, oname), self._parent(new) as (ndfd, nname):
            os.link(oname, nname, src_dir_fd=odfd, dst_dir_fd=ndfd, follow_symlinks=False)
            return self._made(ndfd, nname)

    @_mutating
    def symlink(self, target: bytes, path: bytes) -> tuple[Attr, Attr]:
        if not target:
            raise _err(errno.ENOENT, path, "empty symlink target")
        with self._parent(path) as (dfd, name):
            os.symlink(target, name, dir_fd=dfd)
            return self._made(dfd, name)

    @_mutating
    def mknod(self, path: bytes, mode: int, rdev: int) -> tuple[Attr, Attr]:
        kind = stat.S_IFMT(mode)
        device = kind in (stat.S_IFCHR, stat.S_IFBLK)
        if not (device and self.devices) and kind not in (stat.S_IFIFO, stat.S_IFSOCK,
                                                          stat.S_IFREG, 0):  # fmt: skip
            raise _err(errno.EPERM, path, "only FIFOs, sockets and regular files can be created"
                       " (serve with --allow-devices for device nodes)")  # fmt: skip
        with self._parent(path) as (dfd, name):
            os.mknod(name, mode, rdev if device else 0, dir_fd=dfd)
            return self._made(dfd, name)

    # --- attributes -------------------------------------------------------------

    # (On an open file: ``LocalFile``'s methods of the same names.)

    @_mutating
    def chmod(self, path: bytes, mode: int, allowed: ModeFilter | None = None) -> None:
        """``allowed(mode, st_mode)``: the mode to set instead, given the file's type."""
        with self._object(path) as (fd, st):
            if stat.S_ISLNK(st.st_mode):
                raise _err(errno.EOPNOTSUPP, path, "symlinks have no mode")
            if allowed is not None:
                mode = allowed(mode, st.st_mode)
            os.chmod(proc_path(fd), mode & 0o7777)

    @_mutating
    def chown(self, path: bytes, uid: int, gid: int) -> None:
        uid, gid = (uid if uid != 0xFFFFFFFF else -1), (gid if gid != 0xFFFFFFFF else -1)
        with self._parent(path) as (dfd, name):
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)

    @_mutating
    def utimes(self, path: bytes, atime_ns: int, mtime_ns: int, which: int) -> None:
        with self._parent(path) as (dfd, name):
            linux.utimensat(dfd, name, *utime_args(atime_ns, mtime_ns, which))

    def _xattr_target(self, path: bytes) -> Any:
        if not self.xattrs:
            raise _err(errno.EOPNOTSUPP, path, "the export's filesystem has no xattrs")
        return self._parent(path)

    def getxattr(self, path: bytes, name: bytes) -> bytes:
        with self._xattr_target(path) as (dfd, leaf):
            return os.getxattr(proc_path(dfd, leaf), name, follow_symlinks=False)

    def listxattr(self, path: bytes) -> list[bytes]:
        with self._xattr_target(path) as (dfd, leaf):
            names = os.listxattr(proc_path(dfd, leaf), follow_symlinks=False)
            return [os.fsencode(n) for n in names]

    @_mutating
    def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int) -> None:
        if flags & ~XATTR_FLAGS:
            raise _err(errno.EINVAL, path, f"bad xattr flags {flags:#x}")
        with self._xattr_target(path) as (dfd, leaf):
            os.setxattr(proc_path(dfd, leaf), name, value, flags, follow_symlinks=False)

    @_mutating
    def removexattr(self, path: bytes, name: bytes) -> None:
        with self._xattr_target(path) as (dfd, leaf):
            os.removexattr(proc_path(dfd, leaf), name, follow_symlinks=False)
