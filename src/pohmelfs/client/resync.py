"""Resync: make a server that missed changes (the target) the same as a current one
(the source), object by object, while clients go on changing the source.

Both are single-server clients; the target's is made ``unversioned`` (its copies
leave versions alone) and as a root the target's key trusts. Each pass walks
the source's tree. An object whose versions differ (``server/versions.py``; a
missing one differs) is copied whole: content, type, mode, owner, times,
extended attributes, symlink target, hard links (by the source's inode). Names
the target has and the source has not are removed. Then the source's version is
read again: if it moved, or a change of the object was under way, the object
goes again in the next pass; else the target's version is set to it with
SETVERSION, refused (the next pass again) if the target's changed since the
copy began. Passes go on until one finds nothing to do, at most ``max_passes``.

Why a change racing the copy is neither lost nor undone: it is counted on the
source (and, when the target is in the clients' write set, on the target)
only once applied. Applied on the source before the version is read again, it
is seen there; after, the target's version either missed it (then it differs
from the source's, and the next pass copies again) or counts it, and then the
target applied it after the copy as the source did.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol import Attr, DirEntry

CHUNK = 1 << 20
# What a copy meets when a client removed, renamed or replaced the object under it.
MOVED_MEANWHILE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                             errno.ENODATA, errno.EEXIST, errno.ENOTEMPTY})  # fmt: skip
NOT_ON_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)  # xattrs of symlinks


class Side(Protocol):
    """What a resync uses of each side: a single-server ``Client``."""

    def version(self, path: bytes) -> tuple[int, int]: ...
    def set_version(self, path: bytes, expect: int, version: int) -> None: ...
    def readdir(self, path: bytes) -> list[DirEntry]: ...
    def stat(self, path: bytes) -> os.stat_result: ...
    def open(self, path: bytes, mode: str, buffering: int) -> Any: ...
    def readlink(self, path: bytes) -> Any: ...
    def mkdir(self, path: bytes, mode: int) -> None: ...
    def symlink(self, target: Any, path: bytes) -> None: ...
    def mknod(self, path: bytes, mode: int, device: int) -> None: ...
    def link(self, src: bytes, dst: bytes) -> None: ...
    def unlink(self, path: bytes) -> None: ...
    def rmtree(self, path: bytes) -> None: ...
    def chown(self, path: bytes, uid: int, gid: int) -> None: ...
    def chmod(self, path: bytes, mode: int) -> None: ...
    def utime(self, path: bytes, *, ns: tuple[int, int]) -> None: ...
    def listxattr(self, path: bytes) -> list[str]: ...
    def getxattr(self, path: bytes, attribute: str) -> bytes: ...
    def setxattr(self, path: bytes, attribute: str, value: bytes) -> None: ...
    def removexattr(self, path: bytes, attribute: str) -> None: ...


class Stopped(Exception):
    """The resync was told to stop (``Resync(stop=...)``)."""


@dataclass
class Progress:
    """Where a resync is: reported after each object."""

    passes: int = 0  # the pass under way (1 is the first)
    seen: int = 0  # objects looked at in this pass
    copied: int = 0  # objects copied in this pass
    removed: int = 0  # names removed from the target in this pass
    again: int = 0  # objects that changed under the copy: the next pass takes them
    bytes: int = 0  # file content copied, in all passes
    started: float = field(default_factory=time.monotonic)

    @property
    def clean(self) -> bool:
        """This pass found the target the same as the source everywhere."""
        return not (self.copied or self.removed or self.again)


class Resync:
    """Resync ``target`` from ``source`` (``progress``: told after each object)."""

    def __init__(self, source: Side, target: Side, *, max_passes: int = 10,
                 progress: Callable[[Progress], None] | None = None,
                 stop: Callable[[], bool] = lambda: False,
                 on_pass: Callable[[int], None] = lambda _: None) -> None:  # fmt: skip
        """``stop()``: give up (``Stopped``) as soon as it says so; ``on_pass(n)``: pass
        ``n`` begins."""
        if max_passes < 1:
            raise ValueError("max_passes must be at least 1")
        self.source, self.target = source, target
        self.max_passes = max_passes
        self._told = progress or (lambda _: None)
        self._stop = stop
        self._on_pass = on_pass
        self.state = Progress()
        # Source inode -> its first name this pass, and whether that copy went through.
        self._links: dict[int, tuple[bytes, bool]] = {}

    def run(self) -> Progress:
        """Passes until one is clean; the last pass's figures (``clean``: done)."""
        for n in range(1, self.max_passes + 1):
            s = self.state
            self.state = Progress(passes=n, bytes=s.bytes, started=s.started)
            self._links.clear()
            self._on_pass(n)
            self._directory(b"", self.source.stat(b"").st_mode)
            if self.state.clean:
                break
        return self.state

    # --- one directory, one object ---------------------------------------------------

    def _directory(self, path: bytes, mode: int) -> None:
        """The directory at ``path``: made on the target, its names and attributes,
        its version (which covers only those), then what it holds."""
        t = self.target
        begun = self._begin(path, mode)
        if begun is None:
            return
        version, expect, same = begun
        # The target's names first: one made on both after this listing is no extra.
        try:
            theirs = {e.name: e.attr for e in t.readdir(path)}
        except FileNotFoundError:
            theirs = {}
        try:
            ours = self.source.readdir(path)
        except (FileNotFoundError, NotADirectoryError):
            self.state.again += 1  # (removed or replaced meanwhile: the next pass)
            return
        names = {e.name for e in ours}
        renamed = bool(theirs.keys() ^ names)  # (the target's times move with its names)
        for name, attr in theirs.items():
            if name not in names:
                self._gone_meanwhile(lambda n=name, m=attr.mode: self._extra(_join(path, n), m))
        if not same or renamed:
            self._gone_meanwhile(lambda: self._copy_attributes(path, self.source.stat(path)))
        self._end(path, version, expect, same)
        copied = self.state.copied
        for e in ours:
            child = _join(path, e.name)
            if stat.S_ISDIR(e.attr.mode):
                self._gone_meanwhile(lambda c=child, m=e.attr.mode: self._directory(c, m))
            else:
                there = theirs.get(e.name)
                self._gone_meanwhile(lambda c=child, e=e, t=there: self._other(c, e, t))
        if self.state.copied != copied:  # (names made here moved the target's times)
            self._gone_meanwhile(lambda: self._copy_times(path))

    def _gone_meanwhile(self, copy: Callable[..., None]) -> None:
        """``copy()``, which finds an object removed, renamed or replaced under it (on
        the source, or on the target by a client): the next pass takes what is there
        then."""
        try:
            copy()
        except OSError as e:
            if e.errno not in MOVED_MEANWHILE:
                raise
            self.state.again += 1

    def _other(self, path: bytes, e: DirEntry, theirs: Attr | None) -> None:
        linked = e.attr.nlink > 1
        first = self._links.get(e.attr.ino) if linked else None
        if first is not None:
            self._another_name(path, e, theirs, *first)
            return
        begun = self._begin(path, e.attr.mode, theirs)
        if begun is None:
            if linked:
                self._links[e.attr.ino] = (path, False)  # (its other names: next pass)
            return
        version, expect, same = begun
        if not same and self._copy(path, e.attr):
            expect = None
        if expect is None:  # (made by the copy: its version is what it is now)
            expect = self.target.version(path)[0]
        done = self._end(path, version, expect, same)
        if linked:
            self._links[e.attr.ino] = (path, done)

    def _another_name(self, path: bytes, e: DirEntry, theirs: Attr | None, first: bytes,
                      done: bool) -> None:  # fmt: skip
        """A name of a file whose first name this pass took: the same file on the
        target (linked to it), set to its version only if that copy went through."""
        s = self.state
        s.seen += 1
        if not done:
            s.again += 1
            return
        try:
            linked = theirs is not None and self.target.stat(path).st_ino == \
                self.target.stat(first).st_ino  # fmt: skip
        except FileNotFoundError:
            linked = False
        if not linked:
            self._remove(path, theirs.mode if theirs is not None else None)
            self.target.link(first, path)
            s.copied += 1
        self._progress(s)

    def _begin(self, path: bytes, mode: int,
               theirs: Attr | None = None) -> tuple[int, int | None, bool] | None:  # fmt: skip
        """The source's version, the target's (what SETVERSION is to expect; None: the
        target has no such object yet, made by the copy), and whether they are the
        same. None: the object is gone from the source, or busy (the next pass
        takes it). A directory is made on the target here, before its names."""
        s = self.state
        s.seen += 1
        try:
            version, busy = self.source.version(path)
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed meanwhile: its name goes in the next pass
        if busy:
            s.again += 1
            return None
        try:
            there, _ = self.target.version(path)
            kind = theirs.mode if theirs is not None else self.target.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            there, kind = None, None
        if there == version and kind is not None and stat.S_IFMT(kind) == stat.S_IFMT(mode):
            return version, there, True
        if stat.S_ISDIR(mode):
            if kind is not None and not stat.S_ISDIR(kind):
                self._remove(path, kind)
                kind = None
            if kind is None:
                self.target.mkdir(path, 0o700)  # (its mode is set once its names are)
            there, _ = self.target.version(path)
        elif kind is None or stat.S_IFMT(kind) != stat.S_IFMT(mode):
            there = None  # made anew by the copy
        return version, there, False

    def _end(self, path: bytes, version: int, expect: int | None, same: bool) -> bool:
        """The object's version on the target is the source's if it did not move
        meanwhile (True), else the next pass takes it again."""
        s = self.state
        done = True
        if not same:
            s.copied += 1
            again, busy = self.source.version(path)
            try:
                if again != version or busy:
                    raise OSError(errno.ESTALE, "changed under the copy")
                self.target.set_version(path, expect or 0, version)
            except OSError as e:
                if e.errno not in (errno.ESTALE, errno.ENOENT):
                    raise
                s.again += 1
                done = False
        self._progress(s)
        return done

    # --- copies ------------------------------------------------------------------------

    def _copy(self, path: bytes, attr: Attr) -> bool:
        """A regular file, symlink, or special file: made anew (True) unless it is a
        regular file with one name on the target (rewritten in place)."""
        src, dst = self.source, self.target
        try:
            st = dst.stat(path)
        except FileNotFoundError:
            st = None
        mode, anew = attr.mode, True
        if stat.S_ISREG(mode):
            if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_nlink > 1):
                self._remove(path, st.st_mode)
            else:
                anew = st is None
            self._content(path)
        else:
            self._remove(path, st.st_mode if st is not None else None)
            if stat.S_ISLNK(mode):
                dst.symlink(src.readlink(path), path)
            else:
                dst.mknod(path, mode, attr.rdev)
        self._copy_attributes(path, src.stat(path))
        return anew

    def _content(self, path: bytes) -> None:
        with self.source.open(path, "rb", buffering=0) as f, \
                self.target.open(path, "wb", buffering=0) as g:  # fmt: skip
            offset = 0
            while True:
                if self._stop():
                    raise Stopped("the resync was stopped")
                data = f.pread(CHUNK, offset)
                if not data:
                    break
                if data.count(0) != len(data):  # (holes stay holes)
                    g.pwrite(data, offset)
                offset += len(data)
                self.state.bytes += len(data)
            g.truncate(offset)

    def _copy_attributes(self, path: bytes, st: os.stat_result) -> None:
        src, dst = self.source, self.target
        link = stat.S_ISLNK(st.st_mode)
        dst.chown(path, st.st_uid, st.st_gid)
        if not link:
            dst.chmod(path, stat.S_IMODE(st.st_mode))
        try:
            wanted = {n: src.getxattr(path, n) for n in src.listxattr(path)}
            for name in dst.listxattr(path):
                if name not in wanted:
                    dst.removexattr(path, name)
            for name, value in wanted.items():
                dst.setxattr(path, name, value)
        except OSError as e:
            if not (link and e.errno in NOT_ON_LINKS) and e.errno not in (errno.ENOTSUP,):
                raise
        dst.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _progress(self, s: Progress) -> None:
        if self._stop():
            raise Stopped("the resync was stopped")
        self._told(s)

    def _extra(self, path: bytes, mode: int) -> None:
        """A name the target has and the source had not when listed: it goes, unless
        the source has it now (a client's create that reached the target first)."""
        try:
            self.source.version(path)
        except (FileNotFoundError, NotADirectoryError):
            self._remove(path, mode)
            return
        self.state.again += 1

    def _copy_times(self, path: bytes) -> None:
        st = self.source.stat(path)
        self.target.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _remove(self, path: bytes, mode: int | None) -> None:
        """The target's object at ``path`` goes (``mode``: its; None: there is none)."""
        if mode is None:
            return
        try:
            if stat.S_ISDIR(mode):
                self.target.rmtree(path)
            else:
                self.target.unlink(path)
        except FileNotFoundError:
            pass
        self.state.removed += 1


def count_objects(client: Side, limit: int = 10_000_000) -> int:
    """How many objects the export holds (for a progress bar; at most ``limit``)."""
    n, dirs = 1, [b""]
    while dirs and n < limit:
        path = dirs.pop()
        try:
            entries = client.readdir(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        n += len(entries)
        dirs.extend(_join(path, e.name) for e in entries if stat.S_ISDIR(e.attr.mode))
    return n


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name
