"""``pohmelfs cp``, ``put`` and ``get``: bulk copies through the library, in either
direction, with a progress bar on a terminal (quiet otherwise).

Remote paths start with ``:`` (``pohmelfs cp SERVER -r ./src :/dst``); with ``-r`` a
tree is copied (directories made first, then the files on ``-j`` threads; symlinks
are copied as symlinks), and each file keeps its permission bits (not setuid, setgid
or sticky ones). The data goes
through one buffer per thread, read straight into it (``RemoteFile.preadinto``,
``readinto`` locally).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from .errors import UserError

CHUNK = 4 << 20
DEFAULT_JOBS = 4


class ProgressBar:
    """Bytes and files done of a total, drawn on stderr at most every 0.1 s when it is
    a terminal (``shown``); ``add`` is thread-safe."""

    def __init__(self, total_bytes: int, total_files: int, what: str,
                 shown: bool | None = None) -> None:  # fmt: skip
        self.total_bytes, self.total_files, self.what = total_bytes, total_files, what
        self.shown = sys.stderr.isatty() if shown is None else shown
        self.bytes = self.files = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()

    def add(self, nbytes: int = 0, files: int = 0) -> None:
        with self._lock:
            self.bytes += nbytes
            self.files += files
            now = time.monotonic()
            if self.shown and now - self._drawn >= 0.1:
                self._drawn = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        done = min(self.bytes, self.total_bytes) * 30 // max(self.total_bytes, 1)
        rate = self.bytes / max(now - self.started, 1e-6) / 2**20
        print(f"\r{self.what} [{'#' * done}{'.' * (30 - done)}] {self.files}/{self.total_files}"
              f" files, {self.bytes >> 20}/{self.total_bytes >> 20} MiB, {rate:.0f} MiB/s ",
              end="", file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.shown:
            self._draw(time.monotonic())
            print(file=sys.stderr)


def copy_stream(read_into: Callable[[memoryview, int], int],
                write: Callable[[memoryview], Any], bar: ProgressBar) -> int:  # fmt: skip
    """Copy until ``read_into(buffer, offset)`` gives 0; the bytes copied."""
    buf = memoryview(bytearray(CHUNK))
    offset = 0
    while n := read_into(buf, offset):
        view = buf[:n]
        while view:
            view = view[write(view) :]
        offset += n
        bar.add(n)
    return offset


class Side:
    """One end of a copy: the local filesystem, or the export through a client."""

    def __init__(self, client: Any = None) -> None:
        self.client = client

    @property
    def remote(self) -> bool:
        return self.client is not None

    def lstat(self, path: str) -> os.stat_result:
        return self.client.stat(path) if self.remote else os.lstat(path)

    def scandir(self, path: str) -> Iterator[tuple[str, os.stat_result]]:
        if self.remote:
            for e in self.client.scandir(path):
                yield e.name, e.stat()
        else:
            with os.scandir(path) as it:
                for e in it:
                    yield e.name, e.stat(follow_symlinks=False)

    def makedirs(self, path: str) -> None:
        if self.remote:
            self.client.makedirs(path, exist_ok=True)
        else:
            os.makedirs(path, exist_ok=True)

    def readlink(self, path: str) -> str:
        return os.fsdecode(self.client.readlink(path) if self.remote else os.readlink(path))

    def symlink(self, target: str, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.client.unlink if self.remote else os.unlink)(path)
        (self.client.symlink if self.remote else os.symlink)(target, path)

    def reader(self, path: str) -> AbstractContextManager[Any]:
        return self.client.open(path, "rb", buffering=0) if self.remote else open(path, "rb", 0)

    def writer(self, path: str, mode: int) -> AbstractContextManager[Any]:
        if self.remote:
            f = self.client.open(path, "wb", buffering=0)
            self.client.chmod(path, mode)
            return f  # type: ignore[no-any-return]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)
        return open(fd, "wb", 0)

    def read_into(self, f: Any) -> Callable[[memoryview, int], int]:
        if self.remote:
            return f.preadinto  # type: ignore[no-any-return]
        return lambda buf, _offset: f.readinto(buf)


def plan(src: Side, source: str, dest: str, recursive: bool
         ) -> tuple[list[str], list[tuple[str, str, os.stat_result]]]:  # fmt: skip
    """The directories to make and the entries to copy (source, destination, stat)."""
    st = src.lstat(source)
    if not stat.S_ISDIR(st.st_mode):
        return [], [(source, dest, st)]
    if not recursive:
        raise UserError(f"{source} is a directory (use -r)")
    dirs, entries, todo = [dest], [], [(source, dest)]
    while todo:
        here, there = todo.pop()
        for name, est in src.scandir(here):
            a, b = f"{here.rstrip('/')}/{name}", f"{there.rstrip('/')}/{name}"
            if stat.S_ISDIR(est.st_mode):
                dirs.append(b)
                todo.append((a, b))
            elif stat.S_ISREG(est.st_mode) or stat.S_ISLNK(est.st_mode):
                entries.append((a, b, est))
    return dirs, entries


def copy(src: Side, dst: Side, source: str, dest: str, recursive: bool, jobs: int,
         shown: bool | None = None) -> ProgressBar:  # fmt: skip
    """Copy ``source`` (a file, or with ``recursive`` a tree) to ``dest``."""
    if _is_dir(dst, dest):
        dest = f"{dest.rstrip('/')}/{os.path.basename(source.rstrip('/')) or 'root'}"
    dirs, entries = plan(src, source, dest, recursive)
    total = sum(st.st_size for _, _, st in entries if stat.S_ISREG(st.st_mode))
    bar = ProgressBar(total, len(entries), "copying", shown)
    for d in dirs:
        dst.makedirs(d)

    def one(entry: tuple[str, str, os.stat_result]) -> None:
        a, b, st = entry
        if stat.S_ISLNK(st.st_mode):
            dst.symlink(src.readlink(a), b)
        else:
            # (permission bits only: a copy makes no setuid or setgid file)
            with src.reader(a) as f, dst.writer(b, st.st_mode & 0o777) as g:
                copy_stream(src.read_into(f), g.write, bar)
        bar.add(files=1)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        for done in [pool.submit(one, e) for e in entries]:
            done.result()
    finally:
        pool.shutdown(cancel_futures=True)  # (after an error: the rest are not copied)
        bar.close()
    return bar


def _is_dir(side: Side, path: str) -> bool:
    try:
        return stat.S_ISDIR(side.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def run_cp(args: argparse.Namespace, client: Any) -> int:
    """``pohmelfs cp``: remote paths start with ':'."""
    source, dest = args.source, args.dest
    src = Side(client if source.startswith(":") else None)
    dst = Side(client if dest.startswith(":") else None)
    if not src.remote and not dst.remote:
        raise UserError("one of SOURCE and DEST must be remote (start it with ':')")
    if args.jobs < 1:
        raise UserError("-j must be at least 1")
    bar = copy(src, dst, source.removeprefix(":") or "/", dest.removeprefix(":") or "/",
               args.recursive, args.jobs)  # fmt: skip
    took = time.monotonic() - bar.started
    print(f"pohmelfs: copied {bar.files} files, {bar.bytes >> 20} MiB in {took:.1f} s")
    return 0
