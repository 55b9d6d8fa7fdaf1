"""Tier 2: the server's storage boundary holds. The service runs unchanged on a
second ``Storage`` (in memory, tests/memory_storage.py), and none of its modules
reaches a file any other way."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TRUSTED, address_of, make_client
from memory_storage import MemoryStorage
from pohmelfs import Client
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(60)
# The local directory's storage:
LOCAL = (
    "export.py",
    "localfile.py",
    "localwatch.py",
    "fanotify.py",
    "heldwatch.py",
    "inotify.py",
    "watchthread.py",
    "linux.py",
    "versionfile.py",  # the server's own state, outside the export
)


@pytest.fixture
def memory_server() -> Iterator[Server]:
    srv = Server(MemoryStorage(), "127.0.0.1", 0, security=TRUSTED, allow_setuid=True).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def mc(memory_server: Server) -> Iterator[Client]:
    with make_client([address_of(memory_server)]) as c:
        yield c


def test_files_and_directories_on_the_memory_storage(mc: Client) -> None:
    mc.makedirs("/a/b")
    data = os.urandom(3 << 20)  # several READs and WRITEs in flight
    with mc.open("/a/b/f", "wb") as f:
        f.write(data)
    with mc.open("/a/b/f", "rb") as f:
        assert f.read() == data
    with mc.open("/a/b/f", "ab") as f:
        f.write(b"tail")
    assert mc.stat("/a/b/f").st_size == len(data) + 4
    mc.truncate("/a/b/f", 10)
    assert mc.stat("/a/b/f").st_size == 10
    with mc.open("/a/b/f", "r+b", buffering=0) as f:
        f.truncate(5)  # on the open file
        assert f.pread(100, 0) == data[:5]
    mc.rename("/a/b/f", "/a/g")
    assert sorted(mc.listdir("/a")) == ["b", "g"]
    mc.symlink("g", "/a/link")
    assert mc.readlink("/a/link") == "g"
    mc.link("/a/g", "/a/h")
    assert mc.stat("/a/h").st_nlink == 2
    mc.chmod("/a/g", 0o640)
    assert stat.S_IMODE(mc.stat("/a/h").st_mode) == 0o640
    mc.utime("/a/g", ns=(1_000_000_000, 2_000_000_000))
    assert mc.stat("/a/g").st_mtime_ns == 2_000_000_000
    mc.setxattr("/a/g", "user.k", b"v")
    assert mc.getxattr("/a/g", "user.k") == b"v"
    with pytest.raises(FileExistsError):
        mc.mkdir("/a/b")
    with pytest.raises(OSError) as e:
        mc.rmdir("/a")
    assert e.value.errno == errno.ENOTEMPTY
    for name in ("g", "h", "link"):
        mc.unlink(f"/a/{name}")
    mc.rmdir("/a/b")
    mc.rmdir("/a")
    assert mc.listdir("/") == []
    with pytest.raises(FileNotFoundError):
        mc.stat("/a")


def test_locks_and_coherence_between_clients_on_the_memory_storage(
    memory_server: Server,
) -> None:
    """Range and record locks and the cache locks' revocations are the service's,
    whatever the storage: they work on the memory one as on the local one."""
    with (
        make_client([address_of(memory_server)]) as a,
        make_client([address_of(memory_server)]) as b,
    ):
        with a.open("/db", "wb") as f:
            f.write(b"0" * 100)
        a.lock("/db", 0, 10)
        with pytest.raises(BlockingIOError):
            b.lock("/db", 5, 1, wait=False)
        a.unlock("/db")
        b.lock("/db", 5, 1, wait=False)
        fa = a.open("/db", "r+b", buffering=0)
        fa.cache_lock(exclusive=True)
        fa.write_behind(b"held", 0)  # written back when b's open revokes a's lock
        with b.open("/db", "rb", buffering=0) as fb:
            assert fb.cache_lock().attr.size == 100
            assert fb.pread(4, 0) == b"held"
        fa.close()


def test_the_service_reaches_files_only_through_the_storage_interface() -> None:
    """No module of the server but the local storage's calls the operating system
    on a file, nor imports the local storage's modules: a second storage can sit
    beside the local one."""
    here = Path(__file__).resolve().parent.parent / "src" / "pohmelfs" / "server"
    service = sorted(path.name for path in here.glob("*.py") if path.name not in LOCAL)
    assert {"service.py", "session.py", "filerequests.py", "cachepolicy.py"} <= set(service)
    direct = re.compile(
        r"\bos\.(pread|preadv|pwrite|pwritev|write|read|fstat|ftruncate|fsync|fdatasync|"
        r"close|open|sendfile|lseek|chmod|chown|stat|lstat|fchmod|fchown)\b|linux\.fallocate"
        r"|from \.(export|localfile) import|import (export|localfile)\b"
    )
    found = {
        name: [m.group(0) for m in direct.finditer((here / name).read_text())] for name in service
    }
    assert not any(found.values()), found
