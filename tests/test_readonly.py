"""A read-only export: every change refused with EROFS, every read still works."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import address_of, make_client, start_server, tree_snapshot
from pohmelfs import Client


def populate(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "file").write_bytes(b"read-only content\n")
    (root / "dir" / "inner").write_bytes(b"inner")
    os.symlink("file", root / "link")
    os.symlink("/absolute/target", root / "abslink")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "file", "user.color", b"blue")
    os.chmod(root / "file", 0o644)
    os.utime(root / "file", ns=(1_500_000_000_000_000_000, 1_600_000_000_000_000_000))


@pytest.fixture
def ro(export_dir: Path) -> Iterator[tuple[Client, str]]:
    populate(export_dir)
    srv = start_server(export_dir, read_only=True)
    try:
        addr = address_of(srv)
        c = make_client([addr], timeout=10, umask=0o022)
        try:
            yield c, addr
        finally:
            c.close()
    finally:
        srv.stop()
        srv.export.close()


def refused(op: Callable[[], Any], addr: str) -> None:
    with pytest.raises(OSError) as ei:
        op()
    e = ei.value
    assert e.errno == errno.EROFS, f"expected EROFS, got {e!r}"
    assert type(e) is OSError  # EROFS has no more specific subclass
    assert addr in str(e), str(e)


def mutations(c: Client) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("open w new", lambda: c.open("new", "w")),
        ("open wb existing", lambda: c.open("file", "wb")),
        ("open ab", lambda: c.open("file", "ab")),
        ("open ab new", lambda: c.open("new", "ab")),
        ("open xb", lambda: c.open("new", "xb")),
        ("open r+", lambda: c.open("file", "r+")),
        ("open r+b", lambda: c.open("file", "r+b")),
        ("open w+b", lambda: c.open("file", "w+b")),
        ("open a+", lambda: c.open("file", "a+")),
        ("open raw wb", lambda: c.open("file", "wb", buffering=0)),
        ("truncate", lambda: c.truncate("file", 0)),
        ("truncate grow", lambda: c.truncate("file", 100)),
        ("mkdir", lambda: c.mkdir("newdir")),
        ("makedirs", lambda: c.makedirs("a/b/c")),
        ("makedirs partly existing", lambda: c.makedirs("dir/sub/new")),
        ("rmdir", lambda: c.rmdir("empty")),
        ("rmtree", lambda: c.rmtree("dir")),
        ("unlink", lambda: c.unlink("file")),
        ("unlink link", lambda: c.unlink("link")),
        ("remove", lambda: c.remove("fifo")),
        ("rename", lambda: c.rename("file", "moved")),
        ("rename replace", lambda: c.rename("file", "dir/inner")),
        ("rename noreplace", lambda: c.rename("file", "moved", noreplace=True)),
        ("rename exchange", lambda: c.rename("file", "dir", exchange=True)),
        ("link", lambda: c.link("file", "hardlink")),
        ("symlink", lambda: c.symlink("file", "newlink")),
        ("mknod fifo", lambda: c.mknod("newfifo", 0o644 | stat.S_IFIFO)),
        ("mknod file", lambda: c.mknod("newfile")),
        ("chmod", lambda: c.chmod("file", 0o777)),
        ("chmod dir", lambda: c.chmod("dir", 0o700)),
        ("chown", lambda: c.chown("file", 1234, 1234)),
        ("chown -1", lambda: c.chown("file", -1, -1)),
        ("utime now", lambda: c.utime("file")),
        ("utime ns", lambda: c.utime("file", ns=(1, 1))),
        ("setxattr", lambda: c.setxattr("file", "user.color", b"red")),
        ("setxattr new", lambda: c.setxattr("file", "user.new", b"1")),
        ("removexattr", lambda: c.removexattr("file", "user.color")),
    ]


def test_every_mutation_refused_with_erofs(ro: tuple[Client, str], export_dir: Path) -> None:
    c, addr = ro
    before = tree_snapshot(export_dir)
    for name, op in mutations(c):
        try:
            refused(op, addr)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        assert tree_snapshot(export_dir) == before, f"{name} changed the export"


def test_erofs_names_the_path(ro: tuple[Client, str]) -> None:
    c, _ = ro
    with pytest.raises(OSError) as ei:
        c.unlink("file")
    assert ei.value.filename == "file"
    with pytest.raises(OSError) as ei:
        c.open("new", "wb")
    assert ei.value.filename == "new"
    with pytest.raises(OSError) as ei:
        c.rename("file", "moved")
    assert (ei.value.filename, ei.value.filename2) == ("file", "moved")


def test_open_for_reading_cannot_write(ro: tuple[Client, str], export_dir: Path) -> None:
    c, addr = ro
    before = tree_snapshot(export_dir)
    with c.open("file", "rb", buffering=0) as f:
        refused(lambda: f.truncate(0), addr)
        refused(lambda: f.fallocate(0, 4096), addr)
        with pytest.raises(OSError):
            f.write(b"x")
        with pytest.raises(OSError):
            f.pwrite(b"x", 0)
        assert f.read() == b"read-only content\n"
    assert tree_snapshot(export_dir) == before


def test_reads_still_work(ro: tuple[Client, str], export_dir: Path) -> None:
    c, _ = ro
    st = c.stat("file")
    assert st.st_ino == os.lstat(export_dir / "file").st_ino
    assert st.st_size == len(b"read-only content\n")
    assert st.st_mtime_ns == 1_600_000_000_000_000_000
    assert stat.S_ISLNK(c.lstat("link").st_mode)
    assert c.exists("dir") and c.isdir("dir") and c.isfile("file")
    assert sorted(c.listdir("/")) == sorted(os.listdir(export_dir))
    assert sorted(c.listdir(b"dir")) == [b"inner", b"sub"]
    entries = {e.name: e for e in c.scandir("/")}
    assert entries["dir"].is_dir() and entries["link"].is_symlink()
    assert c.readlink("link") == "file"
    assert c.readlink(b"abslink") == b"/absolute/target"
    assert c.getxattr("file", "user.color") == b"blue"
    assert "user.color" in c.listxattr("file")
    with pytest.raises(OSError) as ei:
        c.getxattr("file", "user.absent")
    assert ei.value.errno == errno.ENODATA
    with c.open("file") as f:
        assert f.read() == "read-only content\n"
    with c.open("dir/inner", "rb", buffering=0) as f:
        buf = bytearray(64)
        assert f.readinto(buf) == 5 and buf[:5] == b"inner"
        assert f.pread(3, 1) == b"nne"
        f.seek(-2, os.SEEK_END)
        assert f.read() == b"er"
        f.fsync()  # harmless on a read-only export
    with pytest.raises(FileNotFoundError):  # a missing file is still ENOENT, not EROFS
        c.open("missing", "rb")
    with pytest.raises(FileNotFoundError):
        c.stat("missing")


def test_read_only_is_announced(ro: tuple[Client, str], export_dir: Path) -> None:
    c, addr = ro
    info = c.server_info()
    assert info["read_only"] is True
    assert info["address"] == addr
    s = c.statvfs()
    assert s.f_flag & os.ST_RDONLY
    local = os.statvfs(export_dir)
    assert s.f_blocks == local.f_blocks and s.f_bsize == local.f_bsize


def test_writable_server_on_same_dir_is_not_read_only(
    ro: tuple[Client, str], export_dir: Path
) -> None:
    # The flag belongs to the export, not to the directory: a second, writable
    # server on the same directory may write while the read-only one refuses.
    c, addr = ro
    srv = start_server(export_dir)
    try:
        with make_client([address_of(srv)], timeout=10, umask=0o022) as w:
            assert w.server_info()["read_only"] is False
            assert not w.statvfs().f_flag & os.ST_RDONLY
            with w.open("from-writer", "wb") as f:
                f.write(b"w")
        assert c.listdir("/").count("from-writer") == 1
        refused(lambda: c.unlink("from-writer"), addr)
        assert (export_dir / "from-writer").read_bytes() == b"w"
    finally:
        srv.stop()
        srv.export.close()
