"""fsx-style random file operations on one file through several paths (mounts),
every read checked against a model of the file.

Like LTP's fsx (which is not in the package registries): reads, writes, reads
and writes through shared mappings, and truncates up and down, each through a
path picked at random, so that with two mounts of one export every operation
may be the other client's. Run as a child process (a SIGBUS must not take the
test runner with it):

    python fsx_model.py SEED OPS PATH [PATH...]

Prints "ok N" after N operations, or the failure and the last operations, and
exits 1.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

MAX_SIZE = 256 << 10  # fsx's default file length
MAX_OP = 64 << 10
PAGE = mmap.PAGESIZE
TRACE = bool(os.environ.get("FSX_TRACE"))  # print each operation as it is done
OPERATIONS = ("read", "read", "write", "write", "mapread", "mapwrite", "truncate")


class Failure(Exception):
    pass


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value
MS_SYNC = 4


@contextmanager
def mapped(fd: int, offset: int, length: int, write: bool) -> Iterator[ctypes.Array[ctypes.c_char]]:
    """mmap(2) itself, as fsx calls it: Python's mmap.mmap asks fstat first, which
    would refresh the kernel's idea of the file's size and hide what a mapping sees."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
    addr = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if addr == MAP_FAILED:
        raise OSError(ctypes.get_errno(), "mmap")
    try:
        yield (ctypes.c_char * length).from_address(addr)
    finally:
        _libc.munmap(addr, length)


def msync(buf: ctypes.Array[ctypes.c_char]) -> None:
    if _libc.msync(ctypes.addressof(buf), len(buf), MS_SYNC) != 0:
        raise OSError(ctypes.get_errno(), "msync")


class Fsx:
    def __init__(self, seed: int, paths: list[str]) -> None:
        self.rng = random.Random(seed)
        self.paths = paths
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) for p in paths]
        self.good = bytearray()
        self.log: deque[str] = deque(maxlen=25)
        self.counter = 0

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def _pick(self) -> tuple[int, int]:
        i = self.rng.randrange(len(self.fds))
        return i, self.fds[i]

    def _range(self, within: bool) -> tuple[int, int]:
        limit = len(self.good) if within else MAX_SIZE
        if limit == 0:
            return 0, 0
        offset = self.rng.randrange(limit)
        size = self.rng.randrange(1, MAX_OP + 1)
        return offset, min(size, limit - offset)

    def _check(self, what: str, offset: int, got: bytes) -> None:
        want = bytes(self.good[offset : offset + len(got)])
        if got != want:
            bad = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
            raise Failure(f"{what} at {offset:#x}+{len(got):#x}: first difference at "
                          f"{'length' if bad is None else hex(offset + bad)}")  # fmt: skip

    def step(self) -> None:
        self.counter += 1
        getattr(self, "_" + self.rng.choice(OPERATIONS))()

    def _note(self, what: str) -> None:
        self.log.append(what)
        if TRACE:
            print(what, f"(size {len(self.good):#x})", flush=True)

    def _read(self) -> None:
        i, fd = self._pick()
        offset, size = self._range(within=True)
        self._note(f"{self.counter} read {i} {offset:#x}+{size:#x}")
        got = os.pread(fd, size, offset)
        if len(got) != size:
            raise Failure(f"read at {offset:#x}: {len(got)} bytes of {size}")
        self._check("read", offset, got)

    def _write(self) -> None:
        i, fd = self._pick()
        offset, size = self._range(within=False)
        data = self.rng.randbytes(size)
        self._note(f"{self.counter} write {i} {offset:#x}+{size:#x}")
        if os.pwrite(fd, data, offset) != size:
            raise Failure("short write")
        self._grow(offset + size)
        self.good[offset : offset + size] = data

    def _grow(self, end: int) -> None:
        if end > len(self.good):
            self.good.extend(bytes(end - len(self.good)))

    def _mapread(self) -> None:
        i, fd = self._pick()
        offset, size = self._range(within=True)
        if not size:
            return
        self._note(f"{self.counter} mapread {i} {offset:#x}+{size:#x}")
        start = offset - offset % PAGE
        with mapped(fd, start, offset + size - start, write=False) as mm:
            got = mm.raw[offset - start : offset - start + size]
        self._check("mapread", offset, got)

    def _mapwrite(self) -> None:
        i, fd = self._pick()
        offset, size = self._range(within=False)
        if not size:
            return
        data = self.rng.randbytes(size)
        sync = self.rng.random() < 0.5
        self._note(f"{self.counter} mapwrite {i} {offset:#x}+{size:#x}{' msync' * sync}")
        if offset + size > len(self.good):  # as fsx does: extend it first
            os.ftruncate(fd, offset + size)
            self._grow(offset + size)
        start = offset - offset % PAGE
        with mapped(fd, start, offset + size - start, write=True) as mm:
            ctypes.memmove(ctypes.addressof(mm) + offset - start, data, size)
            if sync:
                msync(mm)
        self.good[offset : offset + size] = data

    def _truncate(self) -> None:
        i, fd = self._pick()
        size = self.rng.randrange(MAX_SIZE + 1)
        self._note(f"{self.counter} truncate {i} {len(self.good):#x} -> {size:#x}")
        os.ftruncate(fd, size)
        if size < len(self.good):
            del self.good[size:]
        else:
            self._grow(size)

    def check_whole(self) -> None:
        for i, fd in enumerate(self.fds):
            if os.fstat(fd).st_size != len(self.good):
                raise Failure(f"path {i}: size {os.fstat(fd).st_size:#x}, not {len(self.good):#x}")
            self._check(f"whole file through path {i}", 0, os.pread(fd, MAX_SIZE + MAX_OP, 0))


def main(argv: list[str]) -> int:
    seed, ops, paths = int(argv[1]), int(argv[2]), argv[3:]
    fsx = Fsx(seed, paths)
    try:
        for _ in range(ops):
            fsx.step()
        fsx.check_whole()
    except (Failure, OSError) as e:
        print(f"failed at operation {fsx.counter}: {e}")
        print("\n".join(fsx.log))
        return 1
    finally:
        fsx.close()
    print(f"ok {fsx.counter}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
