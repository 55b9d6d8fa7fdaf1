"""A second ``Storage`` (``pohmelfs.server.storage``): a tree in memory.

It exists to prove the server's storage boundary holds: the service runs on it
unchanged (tests/test_storage_boundary.py). Trivial on purpose: one lock for the
whole tree, no permission checks beyond the export's read-only flag, timestamps
from the clock.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pohmelfs.protocol import Attr, Cred, DirEntry, StatFs
from pohmelfs.server.export import split_path
from pohmelfs.server.storage import ModeFilter, attr_of, opens_for_writing

DEV = 0x4D454D  # every node's st_dev
_inodes = itertools.count(2)


def _err(code: int, path: bytes | None = None) -> OSError:
    return OSError(code, os.strerror(code), path)


class Node:
    def __init__(self, mode: int, cred: Cred) -> None:
        self.ino = next(_inodes)
        self.mode, self.uid, self.gid, self.nlink = mode, cred.uid, cred.gid, 1
        self.data = bytearray()
        self.target = b""  # of a symlink
        self.children: dict[bytes, Node] = {}
        self.xattrs: dict[bytes, bytes] = {}
        self.atime = self.mtime = self.ctime = time.time_ns()

    def stat(self) -> os.stat_result:
        size = len(self.target) if stat.S_ISLNK(self.mode) else len(self.data)
        seconds = (self.atime // 10**9, self.mtime // 10**9, self.ctime // 10**9)
        return os.stat_result(
            (self.mode, self.ino, DEV, self.nlink, self.uid, self.gid, size, *seconds),
            {"st_atime_ns": self.atime, "st_mtime_ns": self.mtime, "st_ctime_ns": self.ctime,
             "st_blocks": (size + 511) // 512, "st_blksize": 4096, "st_rdev": 0},
        )  # fmt: skip

    def touch(self) -> None:
        self.mtime = self.ctime = time.time_ns()


class MemoryFile:
    def __init__(self, tree: MemoryStorage, node: Node, flags: int) -> None:
        self._tree, self._node = tree, node
        self._append = bool(flags & os.O_APPEND)
        self._writable = (flags & os.O_ACCMODE) != os.O_RDONLY

    def stat(self) -> os.stat_result:
        with self._tree.lock:
            return self._node.stat()

    def file_id(self) -> bytes:
        return DEV.to_bytes(8, "big") + self._node.ino.to_bytes(8, "big")

    def read_into(self, buf: memoryview, offset: int) -> int:
        with self._tree.lock:
            data = self._node.data[offset : offset + len(buf)]
        buf[: len(data)] = data
        return len(data)

    def write(self, data: memoryview, offset: int | None) -> tuple[int, int]:
        if not self._writable:
            raise _err(errno.EBADF)
        with self._tree.lock:
            node = self._node
            start = len(node.data) if offset is None or self._append else offset
            if start > len(node.data):
                node.data.extend(bytes(start - len(node.data)))
            node.data[start : start + len(data)] = data
            node.touch()
            return len(data), start + len(data)

    def truncate(self, size: int) -> None:
        self._tree.changing()
        with self._tree.lock:
            self._node.data = self._node.data[:size] + bytes(max(0, size - len(self._node.data)))
            self._node.touch()

    def empty(self) -> None:
        self.truncate(0)

    def allocate(self, mode: int, offset: int, length: int) -> None:
        if mode:
            raise _err(errno.EOPNOTSUPP)
        with self._tree.lock:
            grow = offset + length - len(self._node.data)
        if grow > 0:
            self.truncate(offset + length)

    def sync(self, datasync: bool) -> None:
        pass

    def chmod(self, mode: int, allowed: ModeFilter | None = None) -> None:
        self._tree.set_mode(self._node, mode, allowed)

    def chown(self, uid: int, gid: int) -> None:
        self._tree.set_owner(self._node, uid, gid)

    def utimes(self, atime_ns: int, mtime_ns: int, which: int) -> None:
        self._tree.set_times(self._node, atime_ns, mtime_ns, which)

    def getxattr(self, name: bytes) -> bytes:
        return self._tree.xattr(self._node, name)

    def listxattr(self) -> list[bytes]:
        return list(self._node.xattrs)

    def setxattr(self, name: bytes, value: bytes, flags: int) -> None:
        self._tree.set_xattr(self._node, name, value, flags)

    def removexattr(self, name: bytes) -> None:
        self._tree.remove_xattr(self._node, name)

    def close(self) -> None:
        pass


class MemoryStorage:
    def __init__(self, read_only: bool = False) -> None:
        self.read_only = read_only
        self.xattrs = True
        self.root = "(memory)"
        self.lock = threading.RLock()
        self._local = threading.local()
        self._top = Node(stat.S_IFDIR | 0o777, Cred(0, 0, ()))
        self._top.nlink = 2

    # --- helpers ----------------------------------------------------------------

    def changing(self) -> None:
        if self.read_only:
            raise _err(errno.EROFS)

    def _cred(self) -> Cred:
        return getattr(self._local, "cred", Cred(0, 0, ()))

    def _node(self, path: bytes) -> Node:
        node = self._top
        for part in split_path(path):
            if not stat.S_ISDIR(node.mode):
                raise _err(errno.ENOTDIR, path)
            child = node.children.get(part)
            if child is None:
                raise _err(errno.ENOENT, path)
            node = child
        return node

    def _parent(self, path: bytes) -> tuple[Node, bytes]:
        parts = split_path(path)
        if not parts:
            raise _err(errno.EBUSY, path)  # the export's root has no name to change
        parent = self._node(b"/".join(parts[:-1]))
        if not stat.S_ISDIR(parent.mode):
            raise _err(errno.ENOTDIR, path)
        return parent, parts[-1]

    def _add(self, path: bytes, node: Node) -> tuple[Attr, Attr]:
        self.changing()
        with self.lock:
            parent, name = self._parent(path)
            if name in parent.children:
                raise _err(errno.EEXIST, path)
            parent.children[name] = node
            if stat.S_ISDIR(node.mode):
                parent.nlink += 1
            parent.touch()
            return attr_of(node.stat()), attr_of(parent.stat())

    # --- Storage ------------------------------------------------------------------

    def act_as(self, cred: Cred) -> None:
        self._local.cred = cred

    def close(self) -> None:
        pass

    def watch(self, changed: Callable[[set[tuple[int, int]]], None], look: Any,
              lost: Callable[[], None], whole: bool = True) -> None:  # fmt: skip
        return None  # nothing but the server changes memory

    def statfs(self) -> StatFs:
        return StatFs(4096, 4096, 1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, 255)

    def stat(self, path: bytes) -> os.stat_result:
        with self.lock:
            return self._node(path).stat()

    def lookup(self, path: bytes) -> Attr:
        return attr_of(self.stat(path))

    def parent_of(self, path: bytes) -> tuple[tuple[int, int], bytes] | None:
        parts = split_path(path)
        with self.lock:
            for n in range(len(parts) - 1, -1, -1):
                try:
                    node = self._node(b"/".join(parts[:n]))
                except OSError:
                    continue
                if stat.S_ISDIR(node.mode):
                    return (DEV, node.ino), b"/" + b"/".join(parts[:n])
        return None

    def readdir(self, path: bytes, batch_bytes: int = 256 << 10) -> Iterator[list[DirEntry]]:
        with self.lock:
            node = self._node(path)
            if not stat.S_ISDIR(node.mode):
                raise _err(errno.ENOTDIR, path)
            entries = [DirEntry(name, attr_of(child.stat()))
                       for name, child in node.children.items()]  # fmt: skip
        for i in range(0, len(entries), 256):
            yield entries[i : i + 256]

    def readlink(self, path: bytes) -> bytes:
        with self.lock:
            node = self._node(path)
            if not stat.S_ISLNK(node.mode):
                raise _err(errno.EINVAL, path)
            return node.target

    def check_open(self, path: bytes, flags: int) -> None:
        if self.read_only and opens_for_writing(flags):
            raise _err(errno.EROFS, path)

    def open(self, path: bytes, flags: int, mode: int) -> tuple[MemoryFile, Attr]:
        self.check_open(path, flags)
        with self.lock:
            try:
                node = self._node(path)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                return self.create(path, flags, mode)[:2]
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise _err(errno.EEXIST, path)
            if stat.S_ISLNK(node.mode):
                raise _err(errno.ELOOP, path)
            if stat.S_ISDIR(node.mode) and (flags & os.O_ACCMODE) != os.O_RDONLY:
                raise _err(errno.EISDIR, path)
            return MemoryFile(self, node, flags), attr_of(node.stat())

    def create(self, path: bytes, flags: int, mode: int) -> tuple[MemoryFile, Attr, Attr]:
        self.check_open(path, flags | os.O_CREAT)
        with self.lock:
            try:
                file, attr = self.open(path, flags & ~os.O_CREAT, mode)
            except FileNotFoundError:
                node = Node(stat.S_IFREG | (mode & 0o7777), self._cred())
                attr, directory = self._add(path, node)
                return MemoryFile(self, node, flags), attr, directory
            if flags & os.O_EXCL:
                raise _err(errno.EEXIST, path)
            return file, attr, attr_of(self._parent(path)[0].stat())

    def truncate(self, path: bytes, size: int) -> None:
        with self.lock:
            MemoryFile(self, self._node(path), os.O_WRONLY).truncate(size)

    def mkdir(self, path: bytes, mode: int) -> tuple[Attr, Attr]:
        node = Node(stat.S_IFDIR | (mode & 0o7777), self._cred())
        node.nlink = 2
        return self._add(path, node)

    def makedirs(self, path: bytes, mode: int, parent_mode: int = 0o777) -> Attr:
        parts = split_path(path)
        with self.lock:
            for n in range(1, len(parts) + 1):
                sub = b"/".join(parts[:n])
                try:
                    self._node(sub)
                except FileNotFoundError:
                    self.mkdir(sub, mode if n == len(parts) else parent_mode)
            return attr_of(self._node(path).stat())

    def _remove(self, path: bytes, directory: bool) -> Attr:
        self.changing()
        with self.lock:
            parent, name = self._parent(path)
            node = parent.children.get(name)
            if node is None:
                raise _err(errno.ENOENT, path)
            if directory != stat.S_ISDIR(node.mode):
                raise _err(errno.ENOTDIR if directory else errno.EISDIR, path)
            if directory and node.children:
                raise _err(errno.ENOTEMPTY, path)
            del parent.children[name]
            node.nlink -= 2 if directory else 1
            parent.nlink -= directory
            parent.touch()
            return attr_of(parent.stat())

    def rmdir(self, path: bytes) -> Attr:
        return self._remove(path, True)

    def unlink(self, path: bytes) -> Attr:
        return self._remove(path, False)

    def rmtree(self, path: bytes) -> set[tuple[int, int]]:
        self.changing()
        with self.lock:
            parent, name = self._parent(path)
            if name not in parent.children:
                raise _err(errno.ENOENT, path)
            removed, below = set(), [parent.children.pop(name)]
            while below:
                node = below.pop()
                removed.add((DEV, node.ino))
                below.extend(getattr(node, "children", {}).values())
            parent.touch()
            return removed

    def rename(self, old: bytes, new: bytes, flags: int) -> tuple[Attr, Attr]:
        self.changing()
        if flags:
            raise _err(errno.EINVAL, old)
        with self.lock:
            src, a = self._parent(old)
            dst, b = self._parent(new)
            node = src.children.get(a)
            if node is None:
                raise _err(errno.ENOENT, old)
            there = dst.children.get(b)
            if there is not None and stat.S_ISDIR(there.mode) and there.children:
                raise _err(errno.ENOTEMPTY, new)
            del src.children[a]
            dst.children[b] = node
            src.touch()
            dst.touch()
            return attr_of(src.stat()), attr_of(dst.stat())

    def link(self, old: bytes, new: bytes) -> tuple[Attr, Attr]:
        with self.lock:
            node = self._node(old)
            if stat.S_ISDIR(node.mode):
                raise _err(errno.EPERM, old)
            made = self._add(new, node)
            node.nlink += 1
            return attr_of(node.stat()), made[1]

    def symlink(self, target: bytes, path: bytes) -> tuple[Attr, Attr]:
        node = Node(stat.S_IFLNK | 0o777, self._cred())
        node.target = target
        return self._add(path, node)

    def mknod(self, path: bytes, mode: int, rdev: int) -> tuple[Attr, Attr]:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise _err(errno.EPERM, path)
        return self._add(path, Node(kind | (mode & 0o7777), self._cred()))

    def set_mode(self, node: Node, mode: int, allowed: ModeFilter | None) -> None:
        self.changing()
        with self.lock:
            if allowed is not None:
                mode = allowed(mode, node.mode)
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            node.ctime = time.time_ns()

    def set_owner(self, node: Node, uid: int, gid: int) -> None:
        self.changing()
        with self.lock:
            node.uid = node.uid if uid == 0xFFFFFFFF else uid
            node.gid = node.gid if gid == 0xFFFFFFFF else gid
            node.ctime = time.time_ns()

    def set_times(self, node: Node, atime_ns: int, mtime_ns: int, which: int) -> None:
        from pohmelfs.server.localfile import utime_args

        self.changing()
        atime, mtime, atime_now, mtime_now = utime_args(atime_ns, mtime_ns, which)
        now = time.time_ns()
        with self.lock:
            node.atime = now if atime_now else node.atime if atime is None else atime
            node.mtime = now if mtime_now else node.mtime if mtime is None else mtime
            node.ctime = now

    def xattr(self, node: Node, name: bytes) -> bytes:
        value = node.xattrs.get(name)
        if value is None:
            raise _err(errno.ENODATA)
        return value

    def set_xattr(self, node: Node, name: bytes, value: bytes, flags: int) -> None:
        self.changing()
        with self.lock:
            if flags & os.XATTR_CREATE and name in node.xattrs:
                raise _err(errno.EEXIST)
            if flags & os.XATTR_REPLACE and name not in node.xattrs:
                raise _err(errno.ENODATA)
            node.xattrs[name] = bytes(value)

    def remove_xattr(self, node: Node, name: bytes) -> None:
        self.changing()
        with self.lock:
            if node.xattrs.pop(name, None) is None:
                raise _err(errno.ENODATA)

    def chmod(self, path: bytes, mode: int, allowed: ModeFilter | None = None) -> None:
        with self.lock:
            self.set_mode(self._node(path), mode, allowed)

    def chown(self, path: bytes, uid: int, gid: int) -> None:
        with self.lock:
            self.set_owner(self._node(path), uid, gid)

    def utimes(self, path: bytes, atime_ns: int, mtime_ns: int, which: int) -> None:
        with self.lock:
            self.set_times(self._node(path), atime_ns, mtime_ns, which)

    def getxattr(self, path: bytes, name: bytes) -> bytes:
        with self.lock:
            return self.xattr(self._node(path), name)

    def listxattr(self, path: bytes) -> list[bytes]:
        with self.lock:
            return list(self._node(path).xattrs)

    def setxattr(self, path: bytes, name: bytes, value: bytes, flags: int) -> None:
        with self.lock:
            self.set_xattr(self._node(path), name, value, flags)

    def removexattr(self, path: bytes, name: bytes) -> None:
        with self.lock:
            self.remove_xattr(self._node(path), name)
