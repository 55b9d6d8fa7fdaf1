"""Where the library mirrors Python's ``os``: open modes, stat results, directory
entries, times."""

from __future__ import annotations

import io
import math
import os
import stat as stat_mod
from collections.abc import Callable
from typing import Any

from .. import protocol as p
from ..protocol import Attr


def float_to_ns(t: float) -> int:
    """Seconds as nanoseconds, rounded the way os.utime rounds (towards -inf)."""
    frac, whole = math.modf(t)
    ns = math.floor(frac * 1e9)
    return int(whole) * 1_000_000_000 + ns


def utime_args(times: tuple[float, float] | None,
               ns: tuple[int, int] | None) -> tuple[int, int, int]:  # fmt: skip
    """``os.utime``'s arguments as UTIMES' atime, mtime (ns) and which (``p.UTIME_*``)."""
    if times is not None and ns is not None:
        raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
    if ns is not None:
        return ns[0], ns[1], 0
    if times is None:
        return 0, 0, p.UTIME_ATIME_NOW | p.UTIME_MTIME_NOW
    return float_to_ns(times[0]), float_to_ns(times[1]), 0


def statvfs_result(s: p.StatFs, read_only: bool) -> os.statvfs_result:
    flag = os.ST_RDONLY if read_only else 0
    return os.statvfs_result((s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files,
                              s.ffree, s.ffree, flag, s.namemax))  # fmt: skip


def process_umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def mode_flags(mode: str) -> int:
    kinds = set(mode) - {"b", "t"}
    if not kinds <= set("rwax+") or len(mode) != len(set(mode)) or ("b" in mode and "t" in mode):
        raise ValueError(f"invalid mode: {mode!r}")
    main = kinds & set("rwax")
    if len(main) != 1:
        raise ValueError(f"mode must have exactly one of r, w, a, x: {mode!r}")
    plus = "+" in mode
    acc = os.O_RDWR if plus else (os.O_RDONLY if "r" in main else os.O_WRONLY)
    extra = {
        "r": 0,
        "w": os.O_CREAT | os.O_TRUNC,
        "a": os.O_CREAT | os.O_APPEND,
        "x": os.O_CREAT | os.O_EXCL,
    }[main.pop()]
    return acc | extra


class ScanEntry:
    """Like ``os.DirEntry``; attributes come with the listing (lstat semantics)."""

    __slots__ = ("name", "path", "_attr", "_stat_result")

    def __init__(self, name: str | bytes, path: str | bytes, attr: Attr,
                 stat_result: Callable[[Attr], os.stat_result]) -> None:  # fmt: skip
        self.name, self.path, self._attr, self._stat_result = name, path, attr, stat_result

    def inode(self) -> int:
        return self._attr.ino

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return stat_mod.S_ISDIR(self._attr.mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return stat_mod.S_ISREG(self._attr.mode)

    def is_symlink(self) -> bool:
        return stat_mod.S_ISLNK(self._attr.mode)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return self._stat_result(self._attr)

    def __repr__(self) -> str:
        return f"<ScanEntry {self.name!r}>"


def stat_result(a: Attr, fsid: int) -> os.stat_result:
    """An ``os.stat_result`` of the server's attributes (``st_dev``: the server's id)."""
    dev = fsid & 0xFFFFFFFF
    return os.stat_result(
        (
            a.mode,
            a.ino,
            dev,
            a.nlink,
            a.uid,
            a.gid,
            a.size,
            a.atime_ns // 10**9,
            a.mtime_ns // 10**9,
            a.ctime_ns // 10**9,
            a.atime_ns / 1e9,
            a.mtime_ns / 1e9,
            a.ctime_ns / 1e9,
            a.atime_ns,
            a.mtime_ns,
            a.ctime_ns,
            a.blksize,
            a.blocks,
            a.rdev,
        )
    )


def check_open_args(mode: str, buffering: int, encoding: str | None, errors: str | None,
                    newline: str | None) -> None:  # fmt: skip
    """ValueError for arguments the built-in ``open`` refuses together."""
    binary = "b" in mode
    if binary and (encoding or errors or newline):
        raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    if buffering == 0 and not binary:
        raise ValueError("can't have unbuffered text I/O")


def io_wrapped(raw: Any, mode: str, buffering: int, encoding: str | None, errors: str | None,
               newline: str | None) -> Any:  # fmt: skip
    """``raw`` as the built-in ``open`` would give it: buffered, and as text unless binary."""
    if buffering == 0:
        return raw
    size = buffering if buffering > 1 else 256 << 10
    buffered: io.BufferedIOBase
    if "+" in mode:
        buffered = io.BufferedRandom(raw, size)
    elif raw.readable():
        buffered = io.BufferedReader(raw, size)
    else:
        buffered = io.BufferedWriter(raw, size)
    if "b" in mode:
        return buffered
    return io.TextIOWrapper(buffered, encoding or "utf-8", errors, newline,
                            line_buffering=buffering == 1)  # fmt: skip
