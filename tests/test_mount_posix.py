"""POSIX behaviour of the FUSE mount: real system calls through the mount point,
checked against the export on disk.

Most tests share the module's mount (allow_other, default_permissions) and work
in a fresh directory each (the ``mnt`` fixture). Tests that stop, restart or
unmount things build a private server and mount and always stop both.
Processes acting as other users run ``/usr/bin/python3`` as uid 1000/1001; they
get the directory to work in as an inherited descriptor (``fchdir``), because
pytest's temporary directories are not searchable by other users.
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import hashlib
import json
import mmap
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Mounted, ServerProcess, requires_fuse, stop_process
from pohmelfs.fuse import device

pytestmark = requires_fuse

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]  # fmt: skip

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
MiB = 1 << 20

USER = 1000
OTHER = 1001
CHILD_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root (mode 0700)


# --- helpers -----------------------------------------------------------------------


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old), None, str(new))


def errno_of(fn: Callable[[], Any]) -> int:
    """The errno ``fn`` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as ei:
        fn()
    assert ei.value.errno is not None
    return ei.value.errno


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


CHILD_PRELUDE = """\
import errno, json, os, stat, sys
os.fchdir(int(sys.argv[1]))
os.umask(0o022)
results = {}
def attempt(key, fn, *args, **kw):
    try:
        value = fn(*args, **kw)
    except OSError as e:
        results[key] = errno.errorcode.get(e.errno, str(e.errno))
        return None
    results[key] = "ok"
    return value
def write_file(name, data, mode=0o644):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
def read_file(name):
    fd = os.open(name, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)
def append_to(name, data):
    fd = os.open(name, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
"""


def as_user(uid: int, workdir: Path, code: str, groups: tuple[int, ...] = ()) -> dict[str, Any]:
    """Run ``code`` as ``uid`` in ``workdir``; returns its ``results`` dict.

    ``attempt(key, fn, ...)`` in the child records "ok" or the errno name.
    """
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        script = CHILD_PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(results))\n"
        proc = subprocess.run(
            [CHILD_PYTHON, "-I", "-c", script, str(fd)],
            user=uid, group=uid, extra_groups=list(groups),
            pass_fds=(fd,), cwd="/", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert proc.returncode == 0, f"child as uid {uid} failed: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def listdir_at(dir_fd: int, rel: str) -> list[str]:
    fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Mounted]:
    """A server and mount of our own, with a 2 s request timeout."""
    m = Mounted(tmp_path, "allow_other", "timeout=2")
    try:
        yield m
    finally:
        m.stop()


# --- files: create, open, read, write -------------------------------------------------


def test_create_write_read(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    old = os.umask(0o022)
    try:
        fd = os.open(m / "f", os.O_WRONLY | os.O_CREAT, 0o666)
    finally:
        os.umask(old)
    try:
        assert os.write(fd, b"hello, ") == 7
        assert os.write(fd, b"world\n") == 6
    finally:
        os.close(fd)
    assert (e / "f").read_bytes() == b"hello, world\n"
    assert stat.S_IMODE(os.stat(e / "f").st_mode) == 0o644
    assert (m / "f").read_bytes() == b"hello, world\n"
    st = os.stat(m / "f")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 13
    # and the other way: a file made in the export is read through the mount
    (e / "g").write_bytes(b"from the export")
    assert (m / "g").read_bytes() == b"from the export"


def test_o_excl(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    fd = os.open(m / "x", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    assert (e / "x").exists()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert errno_of(lambda: os.open(m / "x", flags, 0o600)) == errno.EEXIST
    (e / "y").write_bytes(b"made behind the mount's back")
    assert errno_of(lambda: os.open(m / "y", flags, 0o600)) == errno.EEXIST
    assert (e / "y").read_bytes() == b"made behind the mount's back"


def test_o_trunc(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "t").write_bytes(b"some content to lose")
    fd = os.open(m / "t", os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.path.getsize(e / "t") == 0
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"new")
    finally:
        os.close(fd)
    assert (e / "t").read_bytes() == b"new"
    assert (m / "t").read_bytes() == b"new"


def test_o_append(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    a = os.open(m / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    b = os.open(m / "log", os.O_WRONLY)
    try:
        os.write(a, b"one,")
        os.lseek(a, 0, os.SEEK_SET)
        os.write(a, b"two,")  # O_APPEND: at the end, whatever the offset
        os.write(b, b"ONE")  # a plain descriptor writes at its own offset 0
        os.write(a, b"three")
    finally:
        os.close(a)
        os.close(b)
    assert (e / "log").read_bytes() == b"ONE,two,three"
    assert (m / "log").read_bytes() == b"ONE,two,three"


def test_pread_pwrite(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    fd = os.open(m / "p", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"tail", 3 * MiB + 5) == 4
        assert os.pwrite(fd, b"head", 0) == 4
        assert os.pwrite(fd, b"middle", MiB - 3) == 6  # across a page and a MiB boundary
        assert os.fstat(fd).st_size == 3 * MiB + 9
        assert os.pread(fd, 4, 3 * MiB + 5) == b"tail"
        assert os.pread(fd, 100, 3 * MiB + 5) == b"tail"  # short read at end of file
        assert os.pread(fd, 10, 4 * MiB) == b""
        assert os.pread(fd, 10, 0) == b"head" + bytes(6)
        assert os.pread(fd, 6, MiB - 3) == b"middle"
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pread/pwrite leave the offset alone
    finally:
        os.close(fd)
    data = (e / "p").read_bytes()
    assert len(data) == 3 * MiB + 9
    assert data[:4] == b"head" and data[MiB - 3 : MiB + 3] == b"middle"
    assert data[3 * MiB + 5 :] == b"tail"
    assert data.count(0) == len(data) - 14


def test_truncate_and_ftruncate(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "t").write_bytes(b"0123456789" * 10)
    os.truncate(m / "t", 25)
    assert (e / "t").read_bytes() == (b"0123456789" * 3)[:25]
    assert os.stat(m / "t").st_size == 25
    os.truncate(m / "t", 100_000)
    assert os.path.getsize(e / "t") == 100_000
    assert (m / "t").read_bytes()[25:] == bytes(100_000 - 25)
    fd = os.open(m / "t", os.O_RDWR)
    try:
        os.ftruncate(fd, 3)
        assert os.fstat(fd).st_size == 3
        assert os.path.getsize(e / "t") == 3
        os.ftruncate(fd, 5)
        assert os.pread(fd, 10, 0) == b"012\0\0"
    finally:
        os.close(fd)
    assert (e / "t").read_bytes() == b"012\0\0"
    os.truncate(m / "t", 0)
    assert (e / "t").read_bytes() == b""


def test_fsync_and_fdatasync(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    fd = os.open(m / "s", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable " * 1000)
        os.fsync(fd)
        assert (e / "s").read_bytes() == b"durable " * 1000
        os.write(fd, b"more")
        os.fdatasync(fd)
        assert os.path.getsize(e / "s") == 8004
    finally:
        os.close(fd)
    dfd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # fsync of a directory succeeds too
    finally:
        os.close(dfd)


def test_fallocate(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    fd = os.open(m / "a", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, MiB)
        assert os.fstat(fd).st_size == MiB
        st = os.stat(e / "a")
        assert st.st_size == MiB and st.st_blocks * 512 >= MiB
        os.pwrite(fd, b"x" * (64 << 10), 0)
        # punch a hole: zeros where it was, the size unchanged
        fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 4096, 8192)
        data = (e / "a").read_bytes()
        assert len(data) == MiB
        assert data[:4096] == b"x" * 4096
        assert data[4096:12288] == bytes(8192)
        assert data[12288 : 64 << 10] == b"x" * ((64 << 10) - 12288)
        assert os.pread(fd, 8192, 4096) == bytes(8192)  # the mount's cache agrees
        assert os.pread(fd, 10, 12288) == b"x" * 10
        # KEEP_SIZE beyond the end allocates without growing the file
        blocks = os.stat(e / "a").st_blocks
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 2 * MiB, MiB)
        st = os.stat(e / "a")
        assert st.st_size == MiB and st.st_blocks > blocks
        assert os.fstat(fd).st_size == MiB
        # mode 0 through the raw call grows the file
        fallocate(fd, 0, 0, 3 * MiB)
        assert os.path.getsize(e / "a") == 3 * MiB
        assert os.fstat(fd).st_size == 3 * MiB
    finally:
        os.close(fd)


def test_large_file_round_trip(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    data = os.urandom(64 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    fd = os.open(m / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            pos += os.write(fd, view[pos : pos + 4 * MiB])
    finally:
        os.close(fd)
    del view
    assert os.path.getsize(e / "big") == 64 * MiB
    assert sha256_file(e / "big") == digest
    assert sha256_file(m / "big") == digest  # a new open drops the page cache: real reads
    assert os.stat(m / "big").st_size == 64 * MiB


def test_mmap_read(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    data = os.urandom(3 * MiB + 123)
    (e / "mm").write_bytes(data)
    with open(m / "mm", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert len(mm) == len(data)
        assert mm[:] == data
        assert mm[MiB : MiB + 10] == data[MiB : MiB + 10]


def test_mmap_shared_write_msync(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "mw").write_bytes(b"a" * 3 * 4096)
    fd = os.open(m / "mw", os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 3 * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            mm[100:105] = b"HELLO"
            mm[2 * 4096 : 2 * 4096 + 5] = b"WORLD"
            mm.flush()  # msync(MS_SYNC)
            data = (e / "mw").read_bytes()
            assert data[100:105] == b"HELLO"
            assert data[2 * 4096 : 2 * 4096 + 5] == b"WORLD"
            assert len(data) == 3 * 4096
            assert data.count(b"a") == 3 * 4096 - 10
        finally:
            mm.close()
    finally:
        os.close(fd)


# --- directories and names ------------------------------------------------------------


def test_mkdir_rmdir(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    old = os.umask(0o022)
    try:
        os.mkdir(m / "d", 0o777)
    finally:
        os.umask(old)
    assert stat.S_ISDIR(os.stat(e / "d").st_mode)
    assert stat.S_IMODE(os.stat(e / "d").st_mode) == 0o755
    assert os.stat(m / "d").st_nlink == 2
    os.mkdir(m / "d" / "sub")
    (m / "d" / "file").write_bytes(b"")
    assert os.stat(m / "d").st_nlink == 3
    assert errno_of(lambda: os.rmdir(m / "d")) == errno.ENOTEMPTY
    assert sorted(os.listdir(m / "d")) == ["file", "sub"]
    os.rmdir(m / "d" / "sub")
    os.unlink(m / "d" / "file")
    os.rmdir(m / "d")
    assert not (e / "d").exists()
    assert not (m / "d").exists()


def test_readdir_10000_entries(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    n = 10_000
    big = e / "big"
    big.mkdir()
    for i in range(n):
        with open(big / f"entry-{i:05d}", "wb") as f:
            f.write(b"x" * (i % 13))
    os.mkdir(m / "big" / "through-the-mount")
    expected = {f"entry-{i:05d}" for i in range(n)} | {"through-the-mount"}
    names = os.listdir(m / "big")
    assert len(names) == n + 1
    assert set(names) == expected
    proc = subprocess.run(["ls", "-ln", "--time-style=+%s", str(m / "big")],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("total")
    seen = {}
    for line in lines[1:]:
        mode, _nlink, uid, _gid, size, _mtime, name = line.split(maxsplit=6)
        seen[name] = (mode[0], int(size), int(uid))
    assert set(seen) == expected
    for i in (0, 1, 12, 13, 4321, n - 1):
        assert seen[f"entry-{i:05d}"] == ("-", i % 13, 0)
    assert seen["through-the-mount"][0] == "d"
    assert len(os.listdir(m / "big")) == n + 1  # a second listing is as complete


def test_unlink(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "u").write_bytes(b"bye")
    os.unlink(m / "u")
    assert not (e / "u").exists()
    assert not os.path.lexists(m / "u")
    assert errno_of(lambda: os.unlink(m / "u")) == errno.ENOENT
    (m / "u").write_bytes(b"again")  # the name can be used again
    assert (e / "u").read_bytes() == b"again"


def test_rename_replaces(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "a").write_bytes(b"A")
    (m / "b").write_bytes(b"B")
    os.stat(m / "b")
    os.rename(m / "a", m / "b")
    assert not (e / "a").exists() and (e / "b").read_bytes() == b"A"
    assert not os.path.lexists(m / "a") and (m / "b").read_bytes() == b"A"
    # into another directory
    os.mkdir(m / "d")
    os.rename(m / "b", m / "d" / "c")
    assert (e / "d" / "c").read_bytes() == b"A"
    assert (m / "d" / "c").read_bytes() == b"A"


def test_rename_directories(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    os.makedirs(m / "d1" / "sub")
    (m / "d1" / "sub" / "f").write_bytes(b"deep")
    os.stat(m / "d1" / "sub" / "f")  # the kernel knows the subtree by now
    os.rename(m / "d1", m / "d2")
    assert not (e / "d1").exists()
    assert (e / "d2" / "sub" / "f").read_bytes() == b"deep"
    assert (m / "d2" / "sub" / "f").read_bytes() == b"deep"
    with open(m / "d2" / "sub" / "f", "ab") as f:  # the moved subtree is written where it is
        f.write(b" and more")
    (m / "d2" / "sub" / "new").write_bytes(b"new")
    assert (e / "d2" / "sub" / "f").read_bytes() == b"deep and more"
    assert (e / "d2" / "sub" / "new").read_bytes() == b"new"
    assert not (e / "d1").exists()
    # over an empty directory: replaced; over a non-empty one: ENOTEMPTY
    os.mkdir(m / "empty")
    os.rename(m / "d2", m / "empty")
    assert (e / "empty" / "sub" / "f").read_bytes() == b"deep and more"
    os.mkdir(m / "full")
    (m / "full" / "x").write_bytes(b"")
    assert errno_of(lambda: os.rename(m / "empty", m / "full")) == errno.ENOTEMPTY
    (m / "file").write_bytes(b"")
    assert errno_of(lambda: os.rename(m / "empty", m / "file")) == errno.ENOTDIR
    assert errno_of(lambda: os.rename(m / "file", m / "full")) == errno.EISDIR
    assert errno_of(lambda: os.rename(m / "full", m / "full" / "inside")) == errno.EINVAL


def test_renameat2_noreplace_and_exchange(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "a").write_bytes(b"A")
    (m / "b").write_bytes(b"B")
    assert errno_of(lambda: renameat2(m / "a", m / "b", RENAME_NOREPLACE)) == errno.EEXIST
    assert (e / "a").read_bytes() == b"A" and (e / "b").read_bytes() == b"B"
    renameat2(m / "a", m / "c", RENAME_NOREPLACE)
    assert not (e / "a").exists() and (e / "c").read_bytes() == b"A"
    renameat2(m / "b", m / "c", RENAME_EXCHANGE)
    assert (e / "b").read_bytes() == b"A" and (e / "c").read_bytes() == b"B"
    assert (m / "b").read_bytes() == b"A" and (m / "c").read_bytes() == b"B"
    # a file and a directory trade places; both stay usable under their new names
    os.mkdir(m / "dir")
    (m / "dir" / "inner").write_bytes(b"inner")
    os.stat(m / "dir" / "inner")
    renameat2(m / "dir", m / "b", RENAME_EXCHANGE)
    assert stat.S_ISDIR(os.stat(m / "b").st_mode) and stat.S_ISREG(os.stat(m / "dir").st_mode)
    assert (m / "b" / "inner").read_bytes() == b"inner"
    assert (m / "dir").read_bytes() == b"A"
    (m / "b" / "inner2").write_bytes(b"2")
    assert (e / "b" / "inner2").read_bytes() == b"2"
    assert (e / "dir").read_bytes() == b"A"
    with open(m / "dir", "ab") as f:
        f.write(b"+")
    assert (e / "dir").read_bytes() == b"A+"
    assert errno_of(lambda: renameat2(m / "x", m / "y", RENAME_EXCHANGE)) == errno.ENOENT


def test_hard_links(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "a").write_bytes(b"shared")
    assert os.stat(m / "a").st_nlink == 1
    os.link(m / "a", m / "b")
    sa, sb = os.stat(m / "a"), os.stat(m / "b")
    assert sa.st_ino == sb.st_ino
    assert sa.st_nlink == 2 and sb.st_nlink == 2
    ea, eb = os.stat(e / "a"), os.stat(e / "b")
    assert ea.st_ino == eb.st_ino and ea.st_nlink == 2
    with open(m / "b", "r+b") as f:
        f.write(b"SHARED")
    assert (m / "a").read_bytes() == b"SHARED"
    os.mkdir(m / "d")
    os.link(m / "b", m / "d" / "c")
    assert os.stat(m / "a").st_nlink == 3
    assert os.stat(m / "d" / "c").st_ino == sa.st_ino
    os.unlink(m / "a")
    assert os.stat(m / "b").st_nlink == 2
    assert os.stat(e / "b").st_nlink == 2
    os.unlink(m / "b")
    assert os.stat(m / "d" / "c").st_nlink == 1
    assert (m / "d" / "c").read_bytes() == b"SHARED"
    assert errno_of(lambda: os.link(m / "d" / "c", m / "d" / "c")) == errno.EEXIST
    os.mkdir(m / "dir")
    assert errno_of(lambda: os.link(m / "dir", m / "dirlink")) == errno.EPERM


def test_hard_link_survives_removal_of_its_newer_name(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "a").write_bytes(b"A")
    os.link(m / "a", m / "b")
    os.unlink(m / "b")  # the name the link was made under goes; "a" must not notice
    assert os.stat(m / "a").st_nlink == 1
    assert (m / "a").read_bytes() == b"A"
    os.chmod(m / "a", 0o600)
    assert stat.S_IMODE(os.stat(e / "a").st_mode) == 0o600
    # and the same across directories, then renaming the original's directory
    os.mkdir(m / "d")
    (m / "d" / "orig").write_bytes(b"O")
    os.link(m / "d" / "orig", m / "copy")
    os.rename(m / "d", m / "d2")
    os.unlink(m / "copy")
    assert (m / "d2" / "orig").read_bytes() == b"O"
    assert os.stat(m / "d2" / "orig").st_nlink == 1


def test_symlinks(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    os.mkdir(m / "sub")
    (m / "sub" / "target.txt").write_bytes(b"pointed at")
    os.symlink("sub/target.txt", m / "rel")
    os.symlink("sub", m / "dirlink")
    os.symlink("../sub/target.txt", m / "sub" / "up")
    os.symlink("/etc/hostname-does-not-matter", m / "abs")
    os.symlink("nowhere", m / "dangling")
    links = {
        "rel": "sub/target.txt",
        "dirlink": "sub",
        "abs": "/etc/hostname-does-not-matter",
        "dangling": "nowhere",
    }
    for name, target in links.items():
        assert os.readlink(m / name) == target
        assert os.readlink(e / name) == target
        assert stat.S_ISLNK(os.lstat(m / name).st_mode)
        assert os.lstat(m / name).st_size == len(target)
    assert os.readlink(m / "sub" / "up") == "../sub/target.txt"
    # following relative symlinks through the mount
    assert (m / "rel").read_bytes() == b"pointed at"
    assert (m / "sub" / "up").read_bytes() == b"pointed at"
    assert (m / "dirlink" / "target.txt").read_bytes() == b"pointed at"
    assert os.stat(m / "rel").st_ino == os.stat(m / "sub" / "target.txt").st_ino
    with open(m / "rel", "ab") as f:
        f.write(b"!")
    assert (e / "sub" / "target.txt").read_bytes() == b"pointed at!"
    # dangling
    assert not os.path.exists(m / "dangling") and os.path.lexists(m / "dangling")
    assert errno_of(lambda: os.stat(m / "dangling")) == errno.ENOENT
    assert errno_of(lambda: os.symlink("x", m / "rel")) == errno.EEXIST
    assert errno_of(lambda: os.readlink(m / "sub")) == errno.EINVAL
    # creating through a dangling symlink creates its target
    with open(m / "dangling", "wb") as f:
        f.write(b"now here")
    assert (e / "nowhere").read_bytes() == b"now here"
    os.unlink(m / "rel")
    assert not os.path.lexists(e / "rel") and (e / "sub" / "target.txt").exists()


def test_chmod_chown_utime(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "f").write_bytes(b"x")
    os.chmod(m / "f", 0o751)
    assert stat.S_IMODE(os.stat(e / "f").st_mode) == 0o751
    assert stat.S_IMODE(os.stat(m / "f").st_mode) == 0o751
    os.chmod(m / "f", 0o4755)
    assert stat.S_IMODE(os.stat(e / "f").st_mode) == 0o4755
    os.chown(m / "f", USER, OTHER)
    assert owner(e / "f") == (USER, OTHER)
    assert owner(m / "f") == (USER, OTHER)
    os.chown(m / "f", -1, 4242)
    assert owner(e / "f") == (USER, 4242)
    os.mkdir(m / "d")
    os.chmod(m / "d", 0o1770)
    assert stat.S_IMODE(os.stat(e / "d").st_mode) == 0o1770
    # times to the nanosecond
    os.utime(m / "f", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(e / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    st = os.stat(m / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    before = time.time_ns()
    os.utime(m / "f")  # now
    assert os.stat(e / "f").st_mtime_ns >= before - 10**9
    # touch(1)
    when = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
    proc = subprocess.run(["touch", "-d", "2001-02-03 04:05:06 UTC", str(m / "f")],
                          capture_output=True, text=True, timeout=20)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert os.stat(e / "f").st_mtime == when.timestamp()
    assert os.stat(m / "f").st_mtime == when.timestamp()
    proc = subprocess.run(["touch", str(m / "created-by-touch")], capture_output=True,
                          text=True, timeout=20)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (e / "created-by-touch").exists()


def test_xattrs(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    (m / "f").write_bytes(b"")
    os.setxattr(m / "f", "user.color", b"blue")
    assert os.getxattr(m / "f", "user.color") == b"blue"
    assert os.getxattr(e / "f", "user.color") == b"blue"
    big = os.urandom(4000)
    os.setxattr(m / "f", "user.big", big)
    assert os.getxattr(m / "f", "user.big") == big
    assert {"user.color", "user.big"} <= set(os.listxattr(m / "f"))
    assert errno_of(lambda: os.setxattr(m / "f", "user.color", b"red", os.XATTR_CREATE)) == (
        errno.EEXIST
    )
    assert errno_of(lambda: os.setxattr(m / "f", "user.none", b"x", os.XATTR_REPLACE)) == (
        errno.ENODATA
    )
    os.setxattr(m / "f", "user.color", b"red", os.XATTR_REPLACE)
    assert os.getxattr(e / "f", "user.color") == b"red"
    os.removexattr(m / "f", "user.color")
    assert errno_of(lambda: os.getxattr(m / "f", "user.color")) == errno.ENODATA
    assert errno_of(lambda: os.removexattr(m / "f", "user.color")) == errno.ENODATA
    assert "user.color" not in os.listxattr(e / "f")
    assert "user.color" not in os.listxattr(m / "f")
    os.setxattr(m / "f", "user.empty", b"")
    assert os.getxattr(m / "f", "user.empty") == b""
    os.mkdir(m / "d")
    os.setxattr(m / "d", "user.dir", b"yes")
    assert os.getxattr(e / "d", "user.dir") == b"yes"
    assert os.listxattr(m / "d") == ["user.dir"]
    (m / "g").write_bytes(b"")  # (a name made behind the server's back may stay unseen)
    os.setxattr(e / "g", "user.from-export", b"1")
    assert os.getxattr(m / "g", "user.from-export") == b"1"


def test_statfs_shows_the_export(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    sm, se = os.statvfs(m), os.statvfs(e)
    assert sm.f_blocks * sm.f_frsize == se.f_blocks * se.f_frsize
    assert sm.f_namemax == se.f_namemax == 255
    assert abs(sm.f_bavail * sm.f_frsize - se.f_bavail * se.f_frsize) < 1 << 30
    assert sm.f_files == se.f_files
    proc = subprocess.run(["df", "-B1", "--output=size,fstype", str(m)], capture_output=True,
                          text=True, timeout=20)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    size, fstype = proc.stdout.splitlines()[1].split()
    assert int(size) == se.f_blocks * se.f_frsize
    assert fstype == "fuse.pohmelfs"


def test_fifo_and_unix_socket(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    os.mkfifo(m / "fifo", 0o644)
    assert stat.S_ISFIFO(os.stat(e / "fifo").st_mode)
    assert stat.S_ISFIFO(os.stat(m / "fifo").st_mode)
    r = os.open(m / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        w = os.open(m / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(w, b"through the pipe")
            assert os.read(r, 100) == b"through the pipe"
        finally:
            os.close(w)
    finally:
        os.close(r)
    assert errno_of(lambda: os.mkfifo(m / "fifo")) == errno.EEXIST
    # a unix socket bound in the mount (a short path via the directory's descriptor)
    dfd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = f"/proc/self/fd/{dfd}/sock"
        server.bind(path)
        server.listen(1)
        assert stat.S_ISSOCK(os.stat(e / "sock").st_mode)
        assert stat.S_ISSOCK(os.stat(m / "sock").st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    finally:
        server.close()
        os.close(dfd)


def test_device_nodes_are_refused(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    dev = os.makedev(1, 3)
    mode_c = stat.S_IFCHR | 0o600
    mode_b = stat.S_IFBLK | 0o600
    assert errno_of(lambda: os.mknod(m / "null", mode_c, dev)) == errno.EPERM
    assert errno_of(lambda: os.mknod(m / "blk", mode_b, dev)) == errno.EPERM
    assert not os.path.lexists(e / "null") and not os.path.lexists(e / "blk")
    os.mknod(m / "regular", stat.S_IFREG | 0o600)  # plain files by mknod are fine
    assert stat.S_ISREG(os.stat(e / "regular").st_mode)


@pytest.fixture(scope="module")
def device_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A mount of a server that lets clients create device nodes (--allow-devices)."""
    m = Mounted(tmp_path_factory.mktemp("devices"), "allow_other",
                server_args=("--allow-devices",))  # fmt: skip
    yield m.mnt, m.export
    m.stop()


def test_device_nodes_with_allow_devices(device_mount: tuple[Path, Path]) -> None:
    """Made, listed, changed and removed like any node; never opened: the mount is
    nodev (the kernel opens a device node itself, on the client's own devices), and
    the server refuses to open one."""
    m, e = device_mount
    dev = os.makedev(1, 3)
    os.mknod(m / "null", stat.S_IFCHR | 0o640, dev)
    os.mknod(m / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    for name, kind, rdev in (
        ("null", stat.S_IFCHR, dev),
        ("blk", stat.S_IFBLK, os.makedev(7, 200)),
    ):
        st = os.stat(e / name)
        assert stat.S_IFMT(st.st_mode) == kind and st.st_rdev == rdev
        assert os.stat(m / name).st_rdev == rdev
    os.chmod(m / "null", 0o600)
    os.chown(m / "null", 12, 34)
    assert (os.stat(e / "null").st_mode & 0o777, os.stat(e / "null").st_uid) == (0o600, 12)
    os.rename(m / "null", m / "renamed")
    os.link(m / "renamed", m / "linked")
    assert os.stat(m / "linked").st_nlink == 2
    assert errno_of(lambda: os.open(m / "renamed", os.O_RDONLY)) == errno.EACCES  # nodev
    os.unlink(m / "renamed")
    os.unlink(m / "linked")
    os.unlink(m / "blk")
    assert os.listdir(m) == []
    deadline = time.monotonic() + 5  # (a run of removals is answered before it is made)
    while os.listdir(e) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(e) == []


# --- errors ---------------------------------------------------------------------------


def test_errnos(mnt: tuple[Path, Path]) -> None:
    m, _ = mnt
    (m / "file").write_bytes(b"f")
    os.mkdir(m / "dir")
    (m / "dir" / "x").write_bytes(b"")
    os.mkdir(m / "empty")
    missing = m / "missing"
    # ENOENT
    assert errno_of(lambda: os.stat(missing)) == errno.ENOENT
    assert errno_of(lambda: os.open(missing, os.O_RDONLY)) == errno.ENOENT
    assert errno_of(lambda: os.open(missing / "f", os.O_CREAT | os.O_WRONLY)) == errno.ENOENT
    assert errno_of(lambda: os.unlink(missing)) == errno.ENOENT
    assert errno_of(lambda: os.rmdir(missing)) == errno.ENOENT
    assert errno_of(lambda: os.rename(missing, m / "y")) == errno.ENOENT
    assert errno_of(lambda: os.readlink(missing)) == errno.ENOENT
    assert errno_of(lambda: os.listdir(missing)) == errno.ENOENT
    assert errno_of(lambda: os.chmod(missing, 0o600)) == errno.ENOENT
    assert errno_of(lambda: os.getxattr(missing, "user.x")) == errno.ENOENT
    # EEXIST
    assert errno_of(lambda: os.mkdir(m / "dir")) == errno.EEXIST
    assert errno_of(lambda: os.mkdir(m / "file")) == errno.EEXIST
    assert errno_of(lambda: os.link(m / "file", m / "dir")) == errno.EEXIST
    assert errno_of(lambda: os.symlink("t", m / "file")) == errno.EEXIST
    # ENOTEMPTY
    assert errno_of(lambda: os.rmdir(m / "dir")) == errno.ENOTEMPTY
    # EISDIR
    assert errno_of(lambda: os.open(m / "dir", os.O_WRONLY)) == errno.EISDIR
    assert errno_of(lambda: os.open(m / "dir", os.O_RDWR)) == errno.EISDIR
    assert errno_of(lambda: os.unlink(m / "dir")) == errno.EISDIR
    # ENOTDIR
    assert errno_of(lambda: os.stat(m / "file" / "x")) == errno.ENOTDIR
    assert errno_of(lambda: os.mkdir(m / "file" / "x")) == errno.ENOTDIR
    assert errno_of(lambda: os.rmdir(m / "file")) == errno.ENOTDIR
    assert errno_of(lambda: os.listdir(m / "file")) == errno.ENOTDIR
    assert errno_of(lambda: os.open(m / "file", os.O_RDONLY | os.O_DIRECTORY)) == errno.ENOTDIR
    assert errno_of(lambda: os.rename(m / "empty", m / "file")) == errno.ENOTDIR
    # reading a directory as a file
    fd = os.open(m / "dir", os.O_RDONLY)
    try:
        assert errno_of(lambda: os.read(fd, 10)) == errno.EISDIR
    finally:
        os.close(fd)


def test_name_lengths(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    n255 = "n" * 250 + ".long"
    n256 = "N" * 256
    assert len(n255.encode()) == 255
    fd = os.open(m / n255, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"255")
    finally:
        os.close(fd)
    assert (e / n255).read_bytes() == b"255"
    assert (m / n255).read_bytes() == b"255"
    assert n255 in os.listdir(m)
    os.mkdir(m / ("d" * 255))
    assert (e / ("d" * 255)).is_dir()
    os.rename(m / n255, m / ("d" * 255) / ("r" * 255))
    assert (e / ("d" * 255) / ("r" * 255)).read_bytes() == b"255"
    # multi-byte characters: 85 x 3 bytes = 255 bytes
    wide = "\u20ac" * 85
    (m / wide).write_bytes(b"euro")
    assert (e / wide).read_bytes() == b"euro"
    flags = os.O_WRONLY | os.O_CREAT
    assert errno_of(lambda: os.open(m / n256, flags, 0o644)) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.mkdir(m / n256)) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.stat(m / n256)) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.symlink("t", m / n256)) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.rename(m / wide, m / n256)) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.stat(m / (wide + "x"))) == errno.ENAMETOOLONG
    assert sorted(os.listdir(e)) == sorted(["d" * 255, wide])


def test_name_too_long_where_the_mount_knows_the_names(mnt: tuple[Path, Path]) -> None:
    """Once a directory's names are known to the mount (two misses under its lock
    make it read them), a name longer than the export's NAME_MAX is still
    ENAMETOOLONG, not ENOENT (pjdfstest's */02.t)."""
    m, _ = mnt
    (m / "f").write_bytes(b"")
    for miss in ("missing-1", "missing-2", "missing-3"):
        assert errno_of(lambda miss=miss: os.stat(m / miss)) == errno.ENOENT
    n256 = "x" * 256
    for op in (
        lambda: os.stat(m / n256),
        lambda: os.unlink(m / n256),
        lambda: os.rmdir(m / n256),
        lambda: os.chmod(m / n256, 0o600),
        lambda: os.truncate(m / n256, 0),
        lambda: os.rename(m / n256, m / "g"),
        lambda: os.link(m / "f", m / n256),
    ):
        assert errno_of(op) == errno.ENAMETOOLONG


def test_tree_deeper_than_path_max(mnt: tuple[Path, Path]) -> None:
    """Linux limits each syscall's path to 4,096 bytes, not a tree's depth: a tree
    more than 8 KiB deep from the export's root is made, used and removed through
    the mount, each call relative to a directory already deep inside it."""
    m, e = mnt
    component = "D" * 200
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        for _ in range(3):  # three hops of 15 levels: ~9 KiB below the export
            rel = "/".join([component] * 15)
            for i in range(1, 16):
                os.mkdir("/".join([component] * i), dir_fd=fd)
            nfd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, depth = nfd, depth + 15
        assert depth * 201 > 8192
        made = os.open("f", os.O_RDWR | os.O_CREAT, 0o644, dir_fd=fd)
        try:
            os.write(made, b"at the bottom")
        finally:
            os.close(made)
        assert os.stat("f", dir_fd=fd).st_size == 13
        os.rename("f", "g", src_dir_fd=fd, dst_dir_fd=fd)
        os.mkdir("sub", dir_fd=fd)
        os.symlink("g", "link", dir_fd=fd)
        assert os.readlink("link", dir_fd=fd) == "g"
        assert sorted(listdir_at(fd, ".")) == ["g", "link", "sub"]
        os.unlink("g", dir_fd=fd)
        os.unlink("link", dir_fd=fd)
        os.rmdir("sub", dir_fd=fd)
    finally:
        os.close(fd)
    # the bottom as the export has it, walked the same way
    efd = os.open(e, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(3):
            nfd = os.open("/".join([component] * 15), os.O_RDONLY | os.O_DIRECTORY, dir_fd=efd)
            os.close(efd)
            efd = nfd
        assert os.listdir(efd) == []
    finally:
        os.close(efd)
    shutil.rmtree(m / component)  # through the mount, however deep
    assert os.listdir(e) == []


def test_long_path(mnt: tuple[Path, Path]) -> None:
    """About 4,000 bytes of nested long names below the mount's root."""
    m, e = mnt
    component = "L" * 240
    levels = 16
    rel = "/".join([component] * levels)  # 3,855 bytes
    mfd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    efd = os.open(e, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(1, levels + 1):
            os.mkdir("/".join([component] * i), dir_fd=mfd)
        leaf = rel + "/" + "f" * 100
        total = len(m.name) + 1 + len(leaf)
        assert 3_900 < total < 4_096, total  # as the server sees it, below the export root
        fd = os.open(leaf, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=mfd)
        try:
            os.write(fd, b"deep down")
        finally:
            os.close(fd)
        fd = os.open(leaf, os.O_RDONLY, dir_fd=efd)
        try:
            assert os.read(fd, 100) == b"deep down"
        finally:
            os.close(fd)
        fd = os.open(leaf, os.O_RDONLY, dir_fd=mfd)
        try:
            assert os.read(fd, 100) == b"deep down"
        finally:
            os.close(fd)
        assert os.stat(leaf, dir_fd=mfd).st_size == 9
        assert listdir_at(mfd, rel) == ["f" * 100]
        os.rename(leaf, rel + "/" + "g" * 100, src_dir_fd=mfd, dst_dir_fd=mfd)
        assert os.stat(rel + "/" + "g" * 100, dir_fd=efd).st_size == 9
        os.unlink(rel + "/" + "g" * 100, dir_fd=mfd)
        assert listdir_at(efd, rel) == []
    finally:
        os.close(mfd)
        os.close(efd)


@pytest.fixture
def readonly_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    m = Mounted(tmp_path, "allow_other", server_args=("--read-only",))
    (m.export / "file").write_bytes(b"read only\n")
    (m.export / "dir").mkdir()
    (m.export / "dir" / "inner").write_bytes(b"inner")
    os.symlink("file", m.export / "link")
    yield m.mnt, m.export
    m.stop()


def test_read_only_export_gives_erofs(readonly_mount: tuple[Path, Path]) -> None:
    m, e = readonly_mount
    assert (m / "file").read_bytes() == b"read only\n"
    assert (m / "link").read_bytes() == b"read only\n"
    assert sorted(os.listdir(m)) == ["dir", "file", "link"]
    assert (m / "dir" / "inner").read_bytes() == b"inner"
    refused: list[tuple[str, Callable[[], Any]]] = [
        ("create", lambda: os.open(m / "new", os.O_WRONLY | os.O_CREAT, 0o644)),
        ("open for write", lambda: os.open(m / "file", os.O_WRONLY)),
        ("open O_TRUNC", lambda: os.open(m / "file", os.O_RDONLY | os.O_TRUNC)),
        ("mkdir", lambda: os.mkdir(m / "newdir")),
        ("rmdir", lambda: os.rmdir(m / "dir" / "nonexistent-but-refused")),
        ("unlink", lambda: os.unlink(m / "file")),
        ("rename", lambda: os.rename(m / "file", m / "moved")),
        ("link", lambda: os.link(m / "file", m / "hard")),
        ("symlink", lambda: os.symlink("file", m / "sym")),
        ("mkfifo", lambda: os.mkfifo(m / "fifo")),
        ("chmod", lambda: os.chmod(m / "file", 0o600)),
        ("chown", lambda: os.chown(m / "file", USER, USER)),
        ("utime", lambda: os.utime(m / "file", ns=(1, 1))),
        ("truncate", lambda: os.truncate(m / "file", 0)),
        ("setxattr", lambda: os.setxattr(m / "file", "user.x", b"1")),
    ]
    wrong = {}
    for what, op in refused:
        try:
            op()
        except OSError as err:
            if err.errno != errno.EROFS and not (what == "rmdir" and err.errno == errno.ENOENT):
                wrong[what] = errno.errorcode.get(err.errno or 0, err.errno)
        else:
            wrong[what] = "succeeded"
    assert wrong == {}
    assert sorted(os.listdir(e)) == ["dir", "file", "link"]
    assert (e / "file").read_bytes() == b"read only\n"


# --- ownership and permissions as other users ----------------------------------------------


def test_other_users_own_what_they_create(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    for uid in (USER, OTHER):
        r = as_user(uid, m, f"""
            attempt("file", write_file, "file-{uid}", b"mine")
            attempt("dir", os.mkdir, "dir-{uid}")
            attempt("sym", os.symlink, "file-{uid}", "sym-{uid}")
            attempt("fifo", os.mkfifo, "fifo-{uid}")
            attempt("inner", write_file, "dir-{uid}/inner", b"inner")
        """)  # fmt: skip
        assert r == {"file": "ok", "dir": "ok", "sym": "ok", "fifo": "ok", "inner": "ok"}
        for name in (f"file-{uid}", f"dir-{uid}", f"sym-{uid}", f"fifo-{uid}",
                     f"dir-{uid}/inner"):  # fmt: skip
            assert owner(e / name) == (uid, uid), name
            assert owner(m / name) == (uid, uid), name
        assert stat.S_IMODE(os.stat(e / f"file-{uid}").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(e / f"dir-{uid}").st_mode) == 0o755


def test_setgid_directory(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    os.mkdir(m / "shared")
    os.chown(m / "shared", 0, 2345)
    os.chmod(m / "shared", 0o2777)
    r = as_user(USER, m / "shared", """
        attempt("file", write_file, "f", b"x")
        attempt("dir", os.mkdir, "d", 0o755)
        attempt("nested", write_file, "d/g", b"y")
    """)  # fmt: skip
    assert r == {"file": "ok", "dir": "ok", "nested": "ok"}
    for root in (e, m):
        assert owner(root / "shared" / "f") == (USER, 2345)
        assert owner(root / "shared" / "d") == (USER, 2345)
        assert os.stat(root / "shared" / "d").st_mode & stat.S_ISGID
        assert not os.stat(root / "shared" / "f").st_mode & stat.S_ISGID
        assert owner(root / "shared" / "d" / "g") == (USER, 2345)


def test_permissions_between_users(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    r = as_user(USER, m, """
        attempt("pub", write_file, "pub", b"public", 0o644)
        attempt("priv", write_file, "priv", b"private", 0o600)
        attempt("grp", write_file, "grp", b"group", 0o660)
        attempt("grp mode", os.chmod, "grp", 0o660)
        attempt("dir", os.mkdir, "home", 0o755)
    """)  # fmt: skip
    assert set(r.values()) == {"ok"}
    assert stat.S_IMODE(os.stat(e / "priv").st_mode) == 0o600
    r = as_user(OTHER, m, """
        attempt("write pub", os.open, "pub", os.O_WRONLY)
        attempt("append pub", append_to, "pub", b"x")
        attempt("truncate pub", os.truncate, "pub", 0)
        results["read pub"] = read_file("pub").decode()
        attempt("read priv", os.open, "priv", os.O_RDONLY)
        attempt("write grp", os.open, "grp", os.O_WRONLY)
        attempt("create in home", write_file, "home/intruder", b"x")
        attempt("chmod pub", os.chmod, "pub", 0o666)
        attempt("chown pub", os.chown, "pub", 1001, 1001)
        attempt("utime pub", os.utime, "pub", None)
        attempt("setxattr pub", os.setxattr, "pub", "user.x", b"1")
    """)  # fmt: skip
    assert r == {
        "write pub": "EACCES",
        "append pub": "EACCES",
        "truncate pub": "EACCES",
        "read pub": "public",
        "read priv": "EACCES",
        "write grp": "EACCES",
        "create in home": "EACCES",
        "chmod pub": "EPERM",
        "chown pub": "EPERM",
        "utime pub": "EACCES",
        "setxattr pub": "EACCES",
    }
    # supplementary groups count: as a member of group 1000, OTHER may write "grp"
    r = as_user(OTHER, m, """
        attempt("append grp", append_to, "grp", b"+member")
        attempt("read priv", os.open, "priv", os.O_RDONLY)
    """, groups=(USER,))  # fmt: skip
    assert r == {"append grp": "ok", "read priv": "EACCES"}
    assert (e / "pub").read_bytes() == b"public"
    assert (e / "priv").read_bytes() == b"private"
    assert (e / "grp").read_bytes() == b"group+member"
    assert not (e / "home" / "intruder").exists()


def test_sticky_directory(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    os.mkdir(m / "tmp")
    os.chmod(m / "tmp", 0o1777)
    r = as_user(USER, m / "tmp", """
        attempt("create", write_file, "users-file", b"mine")
        attempt("create2", write_file, "users-other-file", b"mine too")
    """)  # fmt: skip
    assert r == {"create": "ok", "create2": "ok"}
    r = as_user(OTHER, m / "tmp", """
        attempt("unlink", os.unlink, "users-file")
        attempt("rename", os.rename, "users-file", "stolen")
        attempt("replace", os.rename, "users-other-file", "users-file")
        attempt("own", write_file, "others-file", b"x")
        attempt("unlink own", os.unlink, "others-file")
    """)  # fmt: skip
    assert r == {"unlink": "EPERM", "rename": "EPERM", "replace": "EPERM", "own": "ok",
                 "unlink own": "ok"}  # fmt: skip
    assert (e / "tmp" / "users-file").read_bytes() == b"mine"
    r = as_user(USER, m / "tmp", 'attempt("unlink", os.unlink, "users-file")')
    assert r == {"unlink": "ok"}
    assert not (e / "tmp" / "users-file").exists()


# --- open files -------------------------------------------------------------------------


def test_unlinked_file_stays_usable_while_open(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    fd = os.open(m / "ghost", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"still here")
        os.unlink(m / "ghost")
        assert not (e / "ghost").exists()
        assert not os.path.lexists(m / "ghost")
        assert os.pread(fd, 100, 0) == b"still here"
        os.pwrite(fd, b", and written", 10)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next read goes to the server
        assert os.pread(fd, 100, 0) == b"still here, and written"
        os.ftruncate(fd, 5)
        os.fsync(fd)
        assert os.pread(fd, 100, 0) == b"still"
        st = os.fstat(fd)
        assert (st.st_size, st.st_nlink) == (5, 0)
    finally:
        os.close(fd)
    assert os.listdir(e) == []


def test_open_file_keeps_its_identity_when_its_name_is_reused(mnt: tuple[Path, Path]) -> None:
    """fstat, fchmod, futimens, fchown, fsetxattr on a descriptor act on its own
    file, never on whatever now has the name it was opened by."""
    m, e = mnt
    fd = os.open(m / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"old")
        ino = os.fstat(fd).st_ino
        (m / "replacement").write_bytes(b"the replacement")
        os.rename(m / "replacement", m / "f")
        assert (e / "f").read_bytes() == b"the replacement"
        failed = {}
        for what, op in [
            ("fchmod", lambda: os.fchmod(fd, 0o600)),
            ("futimens", lambda: os.utime(fd, ns=(1_000_000_000, 1_000_000_000))),
            ("fchown", lambda: os.fchown(fd, USER, USER)),
            ("fsetxattr", lambda: os.setxattr(fd, "user.mine", b"1")),
        ]:
            try:
                op()
            except OSError as err:
                failed[what] = errno.errorcode.get(err.errno or 0, err.errno)
        st = os.stat(e / "f")
        changed = {
            "fchmod": stat.S_IMODE(st.st_mode) != 0o644,
            "futimens": st.st_mtime_ns == 1_000_000_000,
            "fchown": st.st_uid == USER,
            "fsetxattr": "user.mine" in os.listxattr(e / "f"),
        }
        assert not any(changed.values()), f"changed the file now named f: {changed}"
        st = os.fstat(fd)
        assert (st.st_ino, st.st_size, st.st_nlink) == (ino, 3, 0)
        assert os.pread(fd, 10, 0) == b"old"
        assert failed == {}  # as on a local filesystem, they all work on the open file
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 1_000_000_000
        assert st.st_uid == USER
        assert os.getxattr(fd, "user.mine") == b"1"
    finally:
        os.close(fd)
    assert (m / "f").read_bytes() == b"the replacement"
    assert stat.S_IMODE(os.stat(m / "f").st_mode) == 0o644


def test_lookups_are_forgotten(mounted: Mounted, mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    names = [f"name-{i:04d}" for i in range(2_000)]
    for name in names:
        (e / name).write_bytes(b"")
    for name in names[:10]:
        os.stat(m / name)
    pid = mounted.mount.pid
    before = vm_rss_kib(pid)
    deadline = time.monotonic() + 25
    done = 0
    paths = [str(m / name) for name in names]
    while done < 200_000 and time.monotonic() < deadline:
        for p in paths:
            os.stat(p)
        done += len(paths)
    assert done >= 40_000, f"only {done} stats in 25 s"
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    time.sleep(1)
    after = vm_rss_kib(pid)
    assert after - before < 30 * 1024, f"mount daemon RSS grew {before} -> {after} KiB"
    assert os.stat(m / names[-1]).st_size == 0  # still works after the kernel let go


# --- failure behaviour --------------------------------------------------------------------


STAT_IN_CHILD = """
import errno, os, sys, time
t = time.monotonic()
try:
    os.stat(sys.argv[1])
    print("ok", time.monotonic() - t)
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno), time.monotonic() - t)
"""


def stat_in_child(path: Path, timeout: float = 20) -> tuple[str, float]:
    proc = subprocess.run([sys.executable, "-c", STAT_IN_CHILD, str(path)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    what, elapsed = proc.stdout.split()
    return what, float(elapsed)


def test_stopped_server_gives_errors_not_hangs(private: Mounted) -> None:
    m, e = private.mnt, private.export
    (e / "before").write_bytes(b"1")
    (e / "during").write_bytes(b"2")
    assert (m / "before").read_bytes() == b"1"
    stop_process(private.server.pid)
    try:
        what, elapsed = stat_in_child(m / "during")
        assert what in ("EIO", "ETIMEDOUT"), what
        assert 1.0 <= elapsed <= 6.5, elapsed
        what, elapsed = stat_in_child(m / "never-seen")
        assert what in ("EIO", "ETIMEDOUT"), what
        assert elapsed <= 6.5, elapsed
    finally:
        os.kill(private.server.pid, signal.SIGCONT)
    what, elapsed = stat_in_child(m / "during")
    assert what == "ok" and elapsed < 2
    assert (m / "during").read_bytes() == b"2"
    (m / "after").write_bytes(b"3")
    assert (e / "after").read_bytes() == b"3"


def test_server_restart_on_same_address(private: Mounted) -> None:
    m, e = private.mnt, private.export
    address = private.server.address
    fd = os.open(m / "kept-open", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"before the restart|")
        (m / "existing").write_bytes(b"existing")
        assert private.server.stop() == 0
        private.server = ServerProcess(e, listen=address, retry_for=10)
        # the mount reconnects by itself
        assert (m / "existing").read_bytes() == b"existing"
        (m / "new").write_bytes(b"new")
        assert (e / "new").read_bytes() == b"new"
        assert sorted(os.listdir(m)) == ["existing", "kept-open", "new"]
        # the descriptor opened before the restart still works
        os.pwrite(fd, b"after the restart", 19)
        os.fsync(fd)  # close-to-open: a write is on the server once fsync or close returns
        assert (e / "kept-open").read_bytes() == b"before the restart|after the restart"
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, 100, 0) == b"before the restart|after the restart"
        assert os.fstat(fd).st_size == 36
    finally:
        os.close(fd)
    assert (m / "kept-open").read_bytes() == b"before the restart|after the restart"


def test_open_files_reopen_their_own_file_after_a_restart(private: Mounted) -> None:
    """After the connection is lost, a descriptor reopens the file it had open: at
    its new name if the mount renamed it; never another file now at its name
    (ESTALE, and nothing written)."""
    m, e = private.mnt, private.export
    address = private.server.address
    os.mkdir(m / "d")
    (m / "d" / "moved").write_bytes(b"moved|")
    (m / "replaced").write_bytes(b"replaced|")
    moved = os.open(m / "d" / "moved", os.O_RDWR)
    replaced = os.open(m / "replaced", os.O_RDWR)
    try:
        os.rename(m / "d", m / "e")  # through the mount: the descriptor follows
        assert private.server.stop() == 0
        os.rename(e / "replaced", e / "elsewhere")  # behind the server's back, as another
        (e / "replaced").write_bytes(b"someone else's")  # client could while we were cut off
        private.server = ServerProcess(e, listen=address, retry_for=10)
        os.pwrite(moved, b"again", 6)
        os.fsync(moved)
        assert (e / "e" / "moved").read_bytes() == b"moved|again"
        assert errno_of(lambda: os.pwrite(replaced, b"XXXX", 0)) == errno.ESTALE
        assert (e / "replaced").read_bytes() == b"someone else's"
        assert (e / "elsewhere").read_bytes() == b"replaced|"
    finally:
        os.close(moved)
        try:
            os.close(replaced)
        except OSError:
            pass  # (its close may report what failed)


def test_a_stuck_daemon_is_cut_off_by_aborting_its_connection(private: Mounted) -> None:
    """What the fixtures do when a daemon will not die: abort the FUSE connection, so
    that nothing waits on the mount for ever (requests fail with ENOTCONN)."""
    from conftest import abort_fuse_connection

    m = private.mnt
    (m / "f").write_bytes(b"x")
    stop_process(private.mount.pid)
    try:
        abort_fuse_connection(str(m))
        what, elapsed = stat_in_child(m / "g", timeout=10)
        assert what == "ENOTCONN" and elapsed < 2
    finally:
        os.kill(private.mount.pid, signal.SIGCONT)


# --- unmounting --------------------------------------------------------------------------


def test_pohmelfs_umount(private: Mounted) -> None:
    m, e = private.mnt, private.export
    data = os.urandom(4 * MiB)
    with open(m / "last-words", "wb") as f:
        f.write(data)
    # Reap the daemon as soon as it exits, as its parent (a shell, systemd) would:
    # ``pohmelfs umount`` waits for the process to be gone.
    reaper = threading.Thread(target=private.mount.proc.wait, args=(30,), daemon=True)
    reaper.start()
    proc = subprocess.run([sys.executable, "-m", "pohmelfs.cli", "umount", str(m)],
                          capture_output=True, text=True, timeout=40)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not device.is_mounted(str(m))
    reaper.join(15)
    assert private.mount.proc.returncode == 0
    assert (e / "last-words").read_bytes() == data
    assert os.listdir(m) == []  # the bare mount point again


def test_fusermount_unmounts(private: Mounted) -> None:
    m, e = private.mnt, private.export
    (m / "f").write_bytes(b"kept")
    proc = subprocess.run(["fusermount3", "-u", str(m)], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not device.is_mounted(str(m))
    private.mount.proc.wait(15)
    assert private.mount.proc.returncode is not None
    assert (e / "f").read_bytes() == b"kept"


def test_sigterm_unmounts(private: Mounted) -> None:
    m, e = private.mnt, private.export
    (m / "f").write_bytes(b"kept")
    os.kill(private.mount.pid, signal.SIGTERM)
    assert private.mount.proc.wait(15) == 0
    assert not device.is_mounted(str(m))
    assert (e / "f").read_bytes() == b"kept"
    assert os.listdir(m) == []
