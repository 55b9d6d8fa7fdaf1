"""Every client operation against a live in-process server, checked on disk.

Each test acts through the client and then looks at the export directory with
the local ``os`` functions (lstat, readlink, getxattr...) to check what really
happened. Error paths check the exception class, ``errno``, ``filename``
(``filename2`` for two-path calls) and that the message names the server.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from conftest import address_of, make_client
from pohmelfs import Client, RemoteFile
from pohmelfs import protocol as proto
from pohmelfs.client.connection import Connection
from pohmelfs.protocol import VERSION, Command
from pohmelfs.server.service import Server

# --- helpers ------------------------------------------------------------------


def put(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def addr(server: Server) -> str:
    return address_of(server)


@pytest.fixture
def remote_error(addr: str) -> Any:
    """``with remote_error(Cls, errno, path[, path2]):`` checks a server error fully."""

    @contextmanager
    def check(
        cls: type[OSError], code: int, path: Any, path2: Any = None
    ) -> Iterator[pytest.ExceptionInfo[OSError]]:
        with pytest.raises(cls) as ei:
            yield ei
        e = ei.value
        assert e.errno == code, f"expected {errno.errorcode[code]}, got {e!r}"
        assert e.filename == path, e
        if path2 is not None:
            assert e.filename2 == path2, e
        assert addr in str(e), f"server address missing from {str(e)!r}"

    return check


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Command]:
    """Every request the client sends from now on, in order."""
    cmds: list[Command] = []
    orig = Connection.start

    def start(self: Connection, cmd: Command, **kw: Any) -> Any:
        cmds.append(cmd)
        return orig(self, cmd, **kw)

    monkeypatch.setattr(Connection, "start", start)
    return cmds


def perm(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- stat / lstat / exists / isdir / isfile ------------------------------------


def test_stat_regular_file_matches_disk(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "sub" / "f.txt", b"hello world")
    os.utime(f, ns=(1_111_111_111_123_456_789, 1_222_222_222_987_654_321))
    st = client.stat("sub/f.txt")
    loc = os.lstat(f)
    assert stat.S_ISREG(st.st_mode)
    for field in (
        "st_mode",
        "st_ino",
        "st_nlink",
        "st_uid",
        "st_gid",
        "st_size",
        "st_atime_ns",
        "st_mtime_ns",
        "st_ctime_ns",
        "st_blocks",
        "st_blksize",
        "st_rdev",
    ):
        assert getattr(st, field) == getattr(loc, field), field
    assert st.st_size == 11
    assert st[stat.ST_MTIME] == 1_222_222_222 and st[stat.ST_ATIME] == 1_111_111_111
    # one export: one device number for every file
    assert client.stat("sub").st_dev == st.st_dev


def test_stat_root_spellings(client: Client, export_dir: Path) -> None:
    ino = os.lstat(export_dir).st_ino
    for p in ("/", "", ".", "./", "//", b"/", "sub/.."):
        if p == "sub/..":
            (export_dir / "sub").mkdir()
        st = client.stat(p)
        assert st.st_ino == ino, p
        assert stat.S_ISDIR(st.st_mode)


def test_stat_pathlike_and_bytes(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "a" / "b.bin", b"12345")
    ino = os.lstat(f).st_ino
    assert client.stat(PurePosixPath("a") / "b.bin").st_ino == ino
    assert client.stat(b"a/b.bin").st_ino == ino
    assert client.stat("a/./b.bin").st_ino == ino
    assert client.stat("a//b.bin").st_ino == ino


def test_lstat_never_follows_symlinks(client: Client, export_dir: Path) -> None:
    target = put(export_dir / "target", b"x" * 100)
    (export_dir / "dir").mkdir()
    os.symlink("target", export_dir / "flink")
    os.symlink("dir", export_dir / "dlink")
    os.symlink("nowhere", export_dir / "dangling")
    for name, tgt in (("flink", "target"), ("dlink", "dir"), ("dangling", "nowhere")):
        st = client.stat(name)
        assert stat.S_ISLNK(st.st_mode), name
        assert st.st_ino == os.lstat(export_dir / name).st_ino
        assert st.st_size == len(tgt)
        assert client.lstat(name).st_ino == st.st_ino
    assert client.stat("flink").st_ino != os.lstat(target).st_ino


def test_stat_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    put(export_dir / "file", b"data")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.stat("missing")
    with remote_error(FileNotFoundError, errno.ENOENT, b"missing"):
        client.stat(b"missing")
    with remote_error(FileNotFoundError, errno.ENOENT, "no/such/dir"):
        client.stat("no/such/dir")
    with remote_error(NotADirectoryError, errno.ENOTDIR, "file/child"):
        client.stat("file/child")


def test_exists_isdir_isfile(client: Client, export_dir: Path) -> None:
    put(export_dir / "file", b"1")
    (export_dir / "dir").mkdir()
    os.mkfifo(export_dir / "fifo")
    os.symlink("file", export_dir / "flink")
    os.symlink("dir", export_dir / "dlink")
    os.symlink("nowhere", export_dir / "dangling")

    assert client.exists("file") and client.isfile("file") and not client.isdir("file")
    assert client.exists("dir") and client.isdir("dir") and not client.isfile("dir")
    assert client.isdir("/") and client.exists("/")
    assert client.exists("fifo") and not client.isfile("fifo") and not client.isdir("fifo")
    assert not client.exists("missing")
    assert not client.isdir("missing") and not client.isfile("missing")
    # lstat semantics: links are reported as what they are, not what they point to
    assert client.exists("dangling")
    assert not client.isfile("flink")
    assert not client.isdir("dlink")
    assert client.exists(b"file") and client.isdir(b"dir")


def test_exists_isdir_isfile_false_below_a_file(client: Client, export_dir: Path) -> None:
    # os.path.exists/isdir/isfile (and pathlib) answer False when a parent is
    # not a directory (ENOTDIR) instead of raising.
    put(export_dir / "file", b"1")
    (export_dir / "dir").mkdir()
    os.symlink("dir", export_dir / "dlink")
    assert client.exists("file/child") is False
    assert client.isdir("file/child") is False
    assert client.isfile("file/child") is False
    # the server refuses to walk through a symlink (ELOOP): "does not exist" too
    assert client.exists("dlink/child") is False
    assert client.isdir("dlink/child") is False


# --- listdir / scandir -----------------------------------------------------------


def _populate(d: Path) -> None:
    put(d / "small.txt", b"abc")
    put(d / "big.bin", b"z" * 70000)
    (d / "subdir").mkdir()
    put(d / "subdir" / "inner", b"")
    os.symlink("small.txt", d / "link")
    os.symlink("/nonexistent/absolute", d / "dangling")
    os.mkfifo(d / "fifo")
    os.chmod(d / "small.txt", 0o640)
    os.chown(d / "big.bin", 4321, 8765, follow_symlinks=False)


def test_listdir_names(client: Client, export_dir: Path) -> None:
    _populate(export_dir / "d")
    assert sorted(client.listdir("d")) == sorted(os.listdir(export_dir / "d"))
    assert sorted(client.listdir("d/")) == sorted(os.listdir(export_dir / "d"))
    assert client.listdir("d/subdir") == ["inner"]
    assert client.listdir("/") == ["d"]
    assert client.listdir("") == ["d"]
    assert client.listdir() == ["d"]
    (export_dir / "empty").mkdir()
    assert client.listdir("empty") == []


def test_scandir_attributes_match_lstat(client: Client, export_dir: Path) -> None:
    d = export_dir / "d"
    _populate(d)
    entries = {e.name: e for e in client.scandir("d")}
    assert set(entries) == set(os.listdir(d))
    for name, e in entries.items():
        loc = os.lstat(d / name)
        assert e.inode() == loc.st_ino, name
        assert e.is_dir() == stat.S_ISDIR(loc.st_mode), name
        assert e.is_file() == stat.S_ISREG(loc.st_mode), name
        assert e.is_symlink() == stat.S_ISLNK(loc.st_mode), name
        st = e.stat()
        for field in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size"):
            assert getattr(st, field) == getattr(loc, field), (name, field)
        assert st.st_mtime_ns == loc.st_mtime_ns, name
        assert st.st_dev == client.stat("d").st_dev
        assert e.path == "d/" + name
        assert isinstance(e.name, str)
    assert entries["link"].is_symlink() and not entries["link"].is_file()
    assert entries["subdir"].is_dir()
    assert stat.S_ISFIFO(entries["fifo"].stat().st_mode)
    assert stat.S_IMODE(entries["small.txt"].stat().st_mode) == 0o640
    assert entries["big.bin"].stat().st_uid == 4321
    assert entries["big.bin"].stat().st_size == 70000


def test_scandir_bytes_and_str_paths(client: Client, export_dir: Path) -> None:
    put(export_dir / "sub" / "x", b"1")
    [e] = list(client.scandir(b"sub"))
    assert e.name == b"x" and e.path == b"sub/x"
    [e] = list(client.scandir("sub"))
    assert e.name == "x" and e.path == "sub/x"
    [e] = list(client.scandir(PurePosixPath("sub")))
    assert e.name == "x" and e.path == "sub/x"
    assert client.listdir(b"sub") == [b"x"]
    # the path of an entry can be used again
    [e] = list(client.scandir("/"))
    assert client.stat(e.path).st_ino == os.lstat(export_dir / "sub").st_ino


def test_listdir_non_utf8_names(client: Client, export_dir: Path) -> None:
    raw = [b"caf\xe9", b"\xff\xfe", b"ok.txt", "ünïcødé".encode()]
    base = os.fsencode(export_dir)
    for n in raw:
        with open(base + b"/" + n, "wb") as f:
            f.write(n)
    assert sorted(client.listdir(b"/")) == sorted(raw)
    as_str = client.listdir("/")
    assert sorted(as_str) == sorted(os.fsdecode(n) for n in raw)
    assert all(isinstance(n, str) for n in as_str)
    for n in as_str:  # surrogate-escaped names round-trip to the same file
        with client.open(n, "rb") as f:
            assert f.read() == os.fsencode(n)
    # creating a file with a non-UTF-8 name stores exactly those bytes
    with client.open(b"new\x80name", "wb") as f:
        f.write(b"q")
    assert (base + b"/new\x80name") in [base + b"/" + n for n in os.listdir(base)]


def test_listdir_10000_files_in_one_request(
    client: Client, export_dir: Path, sent: list[Command], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = export_dir / "many"
    d.mkdir()
    names = {f"file-{i:05d}" for i in range(10_000)}
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    frames: list[int] = []
    orig_stream = Connection.stream

    def stream(self: Connection, tx: Any, path: Any = None) -> Any:
        out = orig_stream(self, tx, path)
        frames.append(len(out))
        return out

    monkeypatch.setattr(Connection, "stream", stream)
    sent.clear()
    entries = list(client.scandir("many"))
    assert {e.name for e in entries} == names
    assert len(entries) == 10_000
    assert all(e.is_file() and e.stat().st_size == 0 for e in entries)
    assert sent == [Command.READDIR], "a listing must be one request"
    assert len(frames) == 1 and frames[0] <= 40, frames  # batched replies, not one per entry
    sent.clear()
    assert len(client.listdir("many")) == 10_000
    assert sent == [Command.READDIR]


def test_listdir_long_names_with_small_max_payload(server: Server, export_dir: Path) -> None:
    # A client may ask for a smaller frame limit; the server must split the
    # listing into frames that fit what was negotiated.
    d = export_dir / "long"
    d.mkdir()
    names = {f"{i:04d}-" + "n" * 240 for i in range(600)}
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    with make_client([address_of(server)], timeout=10, umask=0o022, max_payload=64 << 10) as c:
        assert set(c.listdir("long")) == names
        assert c.stat("/").st_ino == os.lstat(export_dir).st_ino  # connection still fine


def test_listdir_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    put(export_dir / "file", b"")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.listdir("missing")
    with remote_error(NotADirectoryError, errno.ENOTDIR, "file"):
        client.listdir("file")
    with remote_error(NotADirectoryError, errno.ENOTDIR, b"file"):
        list(client.scandir(b"file"))


# --- mkdir / makedirs / rmdir / rmtree -----------------------------------------------


def test_mkdir_mode_honours_umask(client: Client, export_dir: Path, server: Server) -> None:
    client.mkdir("d")
    client.mkdir("d/private", 0o700)
    client.mkdir("sticky", 0o1777)
    client.mkdir(b"bytes\xff")
    assert stat.S_ISDIR(os.lstat(export_dir / "d").st_mode)
    assert perm(export_dir / "d") == 0o755
    assert perm(export_dir / "d" / "private") == 0o700
    assert perm(export_dir / "sticky") == 0o1755
    assert stat.S_ISDIR(os.lstat(os.fsencode(export_dir) + b"/bytes\xff").st_mode)
    with make_client([address_of(server)], timeout=10, umask=0o077) as c:
        c.mkdir("strict")
        c.mkdir("strict2", 0o750)
    assert perm(export_dir / "strict") == 0o700
    assert perm(export_dir / "strict2") == 0o700
    assert os.lstat(export_dir / "d").st_uid == os.geteuid()


def test_mkdir_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    (export_dir / "d").mkdir()
    put(export_dir / "file")
    with remote_error(FileExistsError, errno.EEXIST, "d"):
        client.mkdir("d")
    with remote_error(FileExistsError, errno.EEXIST, "file"):
        client.mkdir("file")
    with remote_error(FileNotFoundError, errno.ENOENT, "no/parent"):
        client.mkdir("no/parent")
    with remote_error(NotADirectoryError, errno.ENOTDIR, "file/x"):
        client.mkdir("file/x")
    assert not (export_dir / "no").exists()


def test_makedirs_one_request(
    client: Client, export_dir: Path, sent: list[Command], server: Server
) -> None:
    sent.clear()
    client.makedirs("a/b/c/d/e")
    assert sent == [Command.MAKEDIRS]
    p = export_dir
    for comp in "abcde":
        p = p / comp
        assert stat.S_ISDIR(os.lstat(p).st_mode)
        assert perm(p) == 0o755, p
    # partly existing path: the missing part is created, still one request
    sent.clear()
    client.makedirs("a/b/x/y")
    assert sent == [Command.MAKEDIRS]
    assert (export_dir / "a/b/x/y").is_dir()
    with make_client([address_of(server)], timeout=10, umask=0o027) as c:
        c.makedirs("m/n")
    assert perm(export_dir / "m") == 0o750 and perm(export_dir / "m/n") == 0o750


def test_makedirs_exist_ok_and_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    (export_dir / "a" / "b").mkdir(parents=True)
    put(export_dir / "file")
    client.makedirs("a/b", exist_ok=True)
    client.makedirs("a", exist_ok=True)
    client.makedirs("/", exist_ok=True)
    with remote_error(FileExistsError, errno.EEXIST, "a/b"):
        client.makedirs("a/b")
    with remote_error(FileExistsError, errno.EEXIST, "file"):
        client.makedirs("file", exist_ok=True)  # exists, but is not a directory
    with remote_error(NotADirectoryError, errno.ENOTDIR, "file/x/y"):
        client.makedirs("file/x/y")
    assert sorted(os.listdir(export_dir)) == ["a", "file"]
    assert os.listdir(export_dir / "a") == ["b"]


def test_rmdir(client: Client, export_dir: Path, remote_error: Any) -> None:
    (export_dir / "empty").mkdir()
    put(export_dir / "full" / "x")
    put(export_dir / "file")
    client.rmdir("empty")
    assert not os.path.lexists(export_dir / "empty")
    with remote_error(OSError, errno.ENOTEMPTY, "full"):
        client.rmdir("full")
    with remote_error(NotADirectoryError, errno.ENOTDIR, "file"):
        client.rmdir("file")
    with remote_error(FileNotFoundError, errno.ENOENT, "empty"):
        client.rmdir("empty")
    with pytest.raises(OSError):
        client.rmdir("/")
    assert export_dir.is_dir()
    assert (export_dir / "full" / "x").exists() and (export_dir / "file").exists()


def test_rmtree_one_request(client: Client, export_dir: Path, sent: list[Command]) -> None:
    t = export_dir / "tree"
    for i in range(5):
        for j in range(20):
            put(t / f"d{i}" / f"sub{j % 3}" / f"f{j}", b"x" * j)
    os.symlink("../../elsewhere", t / "d0" / "link")
    os.mkfifo(t / "fifo")
    os.mkdir(os.fsencode(t) + b"/\xff-raw")
    os.chmod(t / "d1", 0o500)  # even a read-only directory inside goes
    put(export_dir / "keep", b"k")
    sent.clear()
    client.rmtree("tree")
    assert sent == [Command.RMTREE]
    assert not os.path.lexists(t)
    assert os.listdir(export_dir) == ["keep"]


def test_rmtree_refuses_symlink_file_and_root(
    client: Client, export_dir: Path, remote_error: Any
) -> None:
    put(export_dir / "real" / "data", b"precious")
    os.symlink("real", export_dir / "link")
    put(export_dir / "file", b"f")
    with remote_error(NotADirectoryError, errno.ENOTDIR, "link"):
        client.rmtree("link")
    assert os.path.islink(export_dir / "link")
    assert (export_dir / "real" / "data").read_bytes() == b"precious"
    with remote_error(NotADirectoryError, errno.ENOTDIR, "file"):
        client.rmtree("file")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.rmtree("missing")
    for root in ("/", "", ".", "real/..", b"/"):
        with pytest.raises(OSError) as ei:
            client.rmtree(root)
        assert ei.value.errno == errno.EBUSY, root
        assert ei.value.filename == root
    assert sorted(os.listdir(export_dir)) == ["file", "link", "real"]
    assert (export_dir / "real" / "data").read_bytes() == b"precious"


# --- unlink / rename / link / symlink / readlink -------------------------------------


def test_unlink(client: Client, export_dir: Path, remote_error: Any) -> None:
    put(export_dir / "f", b"x")
    put(export_dir / "g", b"y")
    put(export_dir / "target", b"t")
    os.symlink("target", export_dir / "link")
    os.mkfifo(export_dir / "fifo")
    (export_dir / "dir").mkdir()
    client.unlink("f")
    client.remove(b"g")
    client.unlink("link")
    client.unlink("fifo")
    assert sorted(os.listdir(export_dir)) == ["dir", "target"]
    assert (export_dir / "target").read_bytes() == b"t"
    with remote_error(IsADirectoryError, errno.EISDIR, "dir"):
        client.unlink("dir")
    with remote_error(FileNotFoundError, errno.ENOENT, "f"):
        client.unlink("f")
    with remote_error(FileNotFoundError, errno.ENOENT, "dir/nothing"):
        client.unlink("dir/nothing")
    assert (export_dir / "dir").is_dir()


def test_rename_moves_and_replaces(client: Client, export_dir: Path) -> None:
    src = put(export_dir / "a" / "src", b"source")
    dst = put(export_dir / "b" / "dst", b"old destination")
    ino = os.lstat(src).st_ino
    client.rename("a/src", "b/dst")
    assert not os.path.lexists(src)
    assert dst.read_bytes() == b"source"
    assert os.lstat(dst).st_ino == ino
    client.replace("b/dst", "a/back")
    assert (export_dir / "a" / "back").read_bytes() == b"source"
    client.rename("a", "renamed_dir")
    assert (export_dir / "renamed_dir" / "back").read_bytes() == b"source"
    client.rename(b"renamed_dir", b"r\xff")
    assert os.path.isdir(os.fsencode(export_dir) + b"/r\xff")


def test_rename_noreplace(client: Client, export_dir: Path, remote_error: Any) -> None:
    put(export_dir / "src", b"s")
    put(export_dir / "dst", b"d")
    with remote_error(FileExistsError, errno.EEXIST, "src", "dst"):
        client.rename("src", "dst", noreplace=True)
    assert (export_dir / "src").read_bytes() == b"s"
    assert (export_dir / "dst").read_bytes() == b"d"
    client.rename("src", "new", noreplace=True)
    assert (export_dir / "new").read_bytes() == b"s" and not (export_dir / "src").exists()


def test_rename_exchange(client: Client, export_dir: Path, remote_error: Any) -> None:
    put(export_dir / "one", b"1")
    put(export_dir / "two" / "inside", b"2")
    ino1, ino2 = os.lstat(export_dir / "one").st_ino, os.lstat(export_dir / "two").st_ino
    client.rename("one", "two", exchange=True)
    assert os.lstat(export_dir / "one").st_ino == ino2
    assert os.lstat(export_dir / "two").st_ino == ino1
    assert (export_dir / "two").read_bytes() == b"1"
    assert (export_dir / "one" / "inside").read_bytes() == b"2"
    with remote_error(FileNotFoundError, errno.ENOENT, "one", "missing"):
        client.rename("one", "missing", exchange=True)
    with remote_error(OSError, errno.EINVAL, "one", "two"):
        client.rename("one", "two", exchange=True, noreplace=True)
    assert os.lstat(export_dir / "one").st_ino == ino2


def test_rename_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    put(export_dir / "d1" / "x")
    put(export_dir / "d2" / "y")
    put(export_dir / "file")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing", "whatever"):
        client.rename("missing", "whatever")
    with remote_error(OSError, errno.ENOTEMPTY, "d1", "d2"):
        client.rename("d1", "d2")
    with remote_error(OSError, errno.EINVAL, "d1", "d1/inside"):
        client.rename("d1", "d1/inside")
    with remote_error(IsADirectoryError, errno.EISDIR, "file", "d1"):
        client.rename("file", "d1")
    with remote_error(NotADirectoryError, errno.ENOTDIR, "d1", "file"):
        client.rename("d1", "file")
    assert sorted(os.listdir(export_dir)) == ["d1", "d2", "file"]
    assert os.listdir(export_dir / "d1") == ["x"]


def test_link(client: Client, export_dir: Path, remote_error: Any) -> None:
    f = put(export_dir / "orig", b"shared")
    (export_dir / "dir").mkdir()
    client.link("orig", "dir/alias")
    a, b = os.lstat(f), os.lstat(export_dir / "dir" / "alias")
    assert a.st_ino == b.st_ino
    assert a.st_nlink == b.st_nlink == 2
    assert client.stat("dir/alias").st_nlink == 2
    assert client.stat("dir/alias").st_ino == a.st_ino
    with client.open("dir/alias", "ab") as w:
        w.write(b"!")
    assert f.read_bytes() == b"shared!"
    # a hard link to a symlink is a link to the symlink itself
    os.symlink("orig", export_dir / "sym")
    client.link("sym", "sym2")
    assert os.path.islink(export_dir / "sym2")
    assert os.lstat(export_dir / "sym2").st_ino == os.lstat(export_dir / "sym").st_ino
    with remote_error(FileExistsError, errno.EEXIST, "orig", "dir/alias"):
        client.link("orig", "dir/alias")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing", "new"):
        client.link("missing", "new")
    with remote_error(PermissionError, errno.EPERM, "dir", "dirlink"):
        client.link("dir", "dirlink")
    assert not os.path.lexists(export_dir / "new")
    assert not os.path.lexists(export_dir / "dirlink")


@pytest.mark.parametrize(
    "target",
    [
        "plain",
        "/etc/passwd",
        "/absolute/dangling/path",
        "../../../../../../outside",
        "sub/../x/./y/",
        "dangling/nowhere",
        "with space and ünïcode",
        b"\xff\xfe/raw-bytes",
    ],
)
def test_symlink_target_stored_verbatim(client: Client, export_dir: Path, target: Any) -> None:
    link_b = os.fsencode(export_dir) + b"/link"
    client.symlink(target, "link")
    assert os.path.islink(link_b)
    assert os.readlink(link_b) == os.fsencode(target)
    assert client.readlink(b"link") == os.fsencode(target)
    got = client.readlink("link")
    assert isinstance(got, str) and got == os.fsdecode(target)
    st = client.stat("link")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len(os.fsencode(target))


def test_symlink_readlink_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    put(export_dir / "file")
    os.symlink("x", export_dir / "link")
    with remote_error(FileExistsError, errno.EEXIST, "file"):
        client.symlink("anything", "file")
    with remote_error(FileExistsError, errno.EEXIST, "link"):
        client.symlink("anything", "link")
    assert os.readlink(export_dir / "link") == "x"
    with remote_error(FileNotFoundError, errno.ENOENT, "nodir/link"):
        client.symlink("t", "nodir/link")
    with remote_error(FileNotFoundError, errno.ENOENT, "empty"):
        client.symlink("", "empty")
    with remote_error(OSError, errno.EINVAL, "file"):
        client.readlink("file")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.readlink("missing")


# --- truncate / chmod / chown / utime ------------------------------------------------


def test_truncate_shrink_and_grow(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "f", b"0123456789")
    client.truncate("f", 4)
    assert f.read_bytes() == b"0123"
    client.truncate("f", 10)
    assert f.read_bytes() == b"0123" + b"\0" * 6
    client.truncate(b"f", 1 << 32)  # sparse, beyond 4 GiB
    assert os.lstat(f).st_size == 1 << 32
    client.truncate("f", 0)
    assert os.lstat(f).st_size == 0


def test_truncate_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    f = put(export_dir / "f", b"abc")
    (export_dir / "dir").mkdir()
    with pytest.raises(OSError) as ei:
        client.truncate("f", -1)
    assert ei.value.errno == errno.EINVAL and ei.value.filename == "f"
    assert f.read_bytes() == b"abc"
    with remote_error(IsADirectoryError, errno.EISDIR, "dir"):
        client.truncate("dir", 0)
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.truncate("missing", 0)
    assert not (export_dir / "missing").exists()


def test_chmod(client: Client, export_dir: Path, remote_error: Any) -> None:
    f = put(export_dir / "f")
    (export_dir / "d").mkdir()
    for mode in (0o600, 0o000, 0o4755, 0o2711, 0o777):
        client.chmod("f", mode)
        assert perm(f) == mode, oct(mode)
    client.chmod("d", 0o1777)
    assert perm(export_dir / "d") == 0o1777
    client.chmod("/", 0o750)
    assert perm(export_dir) == 0o750
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.chmod("missing", 0o644)


def test_chown_as_root(client: Client, export_dir: Path, remote_error: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    f = put(export_dir / "f")
    client.chown("f", 1234, 5678)
    st = os.lstat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    client.chown("f", -1, 999)
    st = os.lstat(f)
    assert (st.st_uid, st.st_gid) == (1234, 999)
    client.chown("f", 4242, -1)
    st = os.lstat(f)
    assert (st.st_uid, st.st_gid) == (4242, 999)
    assert client.stat("f").st_uid == 4242
    # lchown semantics: a symlink itself changes, its target does not
    os.symlink("f", export_dir / "link")
    client.chown("link", 77, 88)
    assert (os.lstat(export_dir / "link").st_uid, os.lstat(export_dir / "link").st_gid) == (
        77,
        88,
    )
    assert os.lstat(f).st_uid == 4242
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.chown("missing", 1, 1)


def test_utime(client: Client, export_dir: Path, remote_error: Any) -> None:
    f = put(export_dir / "f", b"x")
    client.utime("f", (1_000_000_000, 1_200_000_000))
    st = os.lstat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (10**18, 12 * 10**17)
    client.utime("f", ns=(123_456_789_123_456_789, 987_654_321_987_654_321))
    st = os.lstat(f)
    assert st.st_atime_ns == 123_456_789_123_456_789
    assert st.st_mtime_ns == 987_654_321_987_654_321
    assert client.stat("f").st_mtime_ns == 987_654_321_987_654_321
    client.utime("f", ns=(-1_500_000_000, 0))  # before the epoch
    assert os.lstat(f).st_atime_ns == -1_500_000_000
    before = time.time_ns()
    client.utime("f")
    after = time.time_ns()
    st = os.lstat(f)
    for t in (st.st_atime_ns, st.st_mtime_ns):
        assert before - 10**9 <= t <= after + 10**9
    with pytest.raises(ValueError):
        client.utime("f", (1, 2), ns=(1, 2))
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.utime("missing", ns=(1, 1))


@pytest.mark.parametrize(
    "times", [(1_000_000_000.5, 1_234_567_890.25), (1_700_000_000.125, 0.5), (-1.5, 3.75)]
)
def test_utime_float_times_match_os_utime(
    client: Client, export_dir: Path, tmp_path: Path, times: tuple[float, float]
) -> None:
    # Binary fractions are exact in a float: the result must be exact too.
    f = put(export_dir / "f", b"x")
    ref = put(tmp_path / "reference", b"x")
    os.utime(ref, times)
    client.utime("f", times)
    assert os.lstat(f).st_atime_ns == os.lstat(ref).st_atime_ns
    assert os.lstat(f).st_mtime_ns == os.lstat(ref).st_mtime_ns


def test_utime_symlink_changes_link_not_target(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "f", b"x")
    os.utime(f, ns=(5_000_000_000, 6_000_000_000))
    os.symlink("f", export_dir / "link")
    client.utime("link", ns=(7_000_000_000, 8_000_000_000))
    assert os.lstat(export_dir / "link").st_mtime_ns == 8_000_000_000
    assert os.lstat(f).st_mtime_ns == 6_000_000_000
    assert os.lstat(f).st_atime_ns == 5_000_000_000


# --- extended attributes ---------------------------------------------------------------


def test_xattrs_round_trip(client: Client, export_dir: Path, remote_error: Any) -> None:
    assert client.server_info()["xattrs"] is True
    f = put(export_dir / "f")
    (export_dir / "d").mkdir()
    value = bytes(range(256)) * 4  # binary, with NUL bytes
    client.setxattr("f", "user.blob", value)
    assert os.getxattr(f, "user.blob") == value
    assert client.getxattr("f", "user.blob") == value
    os.setxattr(f, "user.local", b"set on disk")
    assert client.getxattr("f", b"user.local") == b"set on disk"
    client.setxattr(b"f", b"user.empty", b"")
    assert os.getxattr(f, "user.empty") == b""
    assert sorted(client.listxattr("f")) == sorted(os.listxattr(f))
    assert {"user.blob", "user.local", "user.empty"} <= set(client.listxattr("f"))
    client.setxattr("f", "user.blob", b"replaced")
    assert os.getxattr(f, "user.blob") == b"replaced"
    client.removexattr("f", "user.blob")
    assert "user.blob" not in os.listxattr(f)
    with remote_error(OSError, errno.ENODATA, "f"):
        client.getxattr("f", "user.blob")
    with remote_error(OSError, errno.ENODATA, "f"):
        client.removexattr("f", "user.blob")
    client.setxattr("d", "user.on-dir", b"dir value")
    assert os.getxattr(export_dir / "d", "user.on-dir") == b"dir value"
    client.setxattr("/", "user.on-root", b"root value")
    assert os.getxattr(export_dir, "user.on-root") == b"root value"
    assert client.listxattr("/") == ["user.on-root"]
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.getxattr("missing", "user.x")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.setxattr("missing", "user.x", b"1")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.listxattr("missing")


def test_xattr_create_replace_flags(client: Client, export_dir: Path, remote_error: Any) -> None:
    f = put(export_dir / "f")
    client.setxattr("f", "user.k", b"first", os.XATTR_CREATE)
    assert os.getxattr(f, "user.k") == b"first"
    with remote_error(FileExistsError, errno.EEXIST, "f"):
        client.setxattr("f", "user.k", b"second", os.XATTR_CREATE)
    assert os.getxattr(f, "user.k") == b"first"
    with remote_error(OSError, errno.ENODATA, "f"):
        client.setxattr("f", "user.absent", b"v", os.XATTR_REPLACE)
    assert "user.absent" not in os.listxattr(f)
    client.setxattr("f", "user.k", b"third", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.k") == b"third"


def test_xattr_on_symlink_acts_on_link(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "f")
    os.setxattr(f, "user.t", b"target")
    os.symlink("f", export_dir / "link")
    # the link's own (empty) attribute list, not the target's
    assert client.listxattr("link") == []
    with pytest.raises(OSError) as ei:
        client.getxattr("link", "user.t")
    assert ei.value.errno == errno.ENODATA
    with pytest.raises(OSError):  # Linux refuses user.* attributes on symlinks
        client.setxattr("link", "user.t", b"changed")
    assert os.getxattr(f, "user.t") == b"target"


# --- statvfs / server_info ----------------------------------------------------------


def test_statvfs_and_server_info(client: Client, export_dir: Path, addr: str) -> None:
    local = os.statvfs(export_dir)
    s = client.statvfs()
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(s, field) == getattr(local, field), field
        assert getattr(client.statvfs("/"), field) == getattr(local, field), field
    slack = 512 << 20  # other processes may write to the same disk meanwhile
    assert abs(s.f_bfree - local.f_bfree) * local.f_frsize < slack
    assert abs(s.f_bavail - local.f_bavail) * local.f_frsize < slack
    assert abs(s.f_ffree - local.f_ffree) < 200_000
    assert not s.f_flag & os.ST_RDONLY
    info = client.server_info()
    assert info["address"] == addr
    assert info["protocol_version"] == VERSION
    assert info["read_only"] is False
    assert info["xattrs"] is True
    assert info["max_payload"] >= 64 << 10
    assert info["total_bytes"] == local.f_blocks * local.f_frsize
    assert abs(info["free_bytes"] - local.f_bavail * local.f_frsize) < slack
    assert abs(info["used_bytes"] - (local.f_blocks - local.f_bfree) * local.f_frsize) < slack


# --- mknod -------------------------------------------------------------------------------


def test_mknod_fifo_socket_regular(client: Client, export_dir: Path) -> None:
    client.mknod("fifo", 0o666 | stat.S_IFIFO)
    client.mknod("sock", 0o640 | stat.S_IFSOCK)
    client.mknod("plain")
    client.mknod("plain2", 0o644 | stat.S_IFREG)
    st = os.lstat(export_dir / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    st = os.lstat(export_dir / "sock")
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    st = os.lstat(export_dir / "plain")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_ISREG(os.lstat(export_dir / "plain2").st_mode)
    assert stat.S_ISFIFO(client.stat("fifo").st_mode)


def test_mknod_devices_refused(client: Client, export_dir: Path, remote_error: Any) -> None:
    with remote_error(PermissionError, errno.EPERM, "null"):
        client.mknod("null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with remote_error(PermissionError, errno.EPERM, "disk"):
        client.mknod("disk", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    assert os.listdir(export_dir) == []
    put(export_dir / "exists")
    with remote_error(FileExistsError, errno.EEXIST, "exists"):
        client.mknod("exists", 0o644 | stat.S_IFIFO)
    assert stat.S_ISREG(os.lstat(export_dir / "exists").st_mode)


# --- open: modes -------------------------------------------------------------------------


def test_open_read_modes(client: Client, export_dir: Path) -> None:
    put(export_dir / "f", "héllo\nwörld\n".encode())
    with client.open("f") as f:
        assert isinstance(f, io.TextIOWrapper)
        assert f.read() == "héllo\nwörld\n"
    with client.open("f", "rt") as f:
        assert f.readlines() == ["héllo\n", "wörld\n"]
    with client.open("f", "rb") as f:
        assert isinstance(f, io.BufferedReader)
        assert f.read() == "héllo\nwörld\n".encode()
        assert f.readable() and not f.writable() and f.seekable()
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
    assert (export_dir / "f").read_bytes() == "héllo\nwörld\n".encode()


def test_open_w_creates_with_umask_and_truncates(client: Client, export_dir: Path) -> None:
    with client.open("new.txt", "w") as f:
        assert f.write("text") == 4
    assert (export_dir / "new.txt").read_bytes() == b"text"
    assert perm(export_dir / "new.txt") == 0o644
    put(export_dir / "old", b"a long old content")
    with client.open("old", "wb") as f:
        assert isinstance(f, io.BufferedWriter)
        f.write(b"new")
        with pytest.raises(io.UnsupportedOperation):
            f.read()
    assert (export_dir / "old").read_bytes() == b"new"
    with client.open("empty", "wb"):
        pass
    assert (export_dir / "empty").read_bytes() == b""


def test_open_append(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "log", b"start;")
    with client.open("log", "a") as w:
        w.write("one;")
    with client.open("log", "ab") as w:
        w.write(b"two;")
        w.seek(0)  # O_APPEND: writes go to the end whatever the position
        w.write(b"three;")
    assert f.read_bytes() == b"start;one;two;three;"
    with client.open("fresh", "ab") as w:
        w.write(b"created")
    assert (export_dir / "fresh").read_bytes() == b"created"


def test_two_appenders_interleave(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "log", b">")
    a = client.open("log", "ab", buffering=0)
    b = client.open("log", "ab", buffering=0)
    try:
        assert a.tell() == b.tell() == 1
        a.write(b"A")
        b.write(b"B")
        a.write(b"C")
        assert a.tell() == 4 and b.tell() == 3
    finally:
        a.close()
        b.close()
    assert f.read_bytes() == b">ABC"


def test_open_exclusive(client: Client, export_dir: Path, remote_error: Any) -> None:
    with client.open("x.bin", "xb") as f:
        f.write(b"mine")
    assert (export_dir / "x.bin").read_bytes() == b"mine"
    assert perm(export_dir / "x.bin") == 0o644
    with remote_error(FileExistsError, errno.EEXIST, "x.bin"):
        client.open("x.bin", "x")
    os.symlink("nowhere", export_dir / "dangling")
    with remote_error(FileExistsError, errno.EEXIST, "dangling"):
        client.open("dangling", "xb")
    assert (export_dir / "x.bin").read_bytes() == b"mine"
    assert not os.path.exists(export_dir / "nowhere")


def test_open_plus_modes(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "f", b"0123456789")
    with client.open("f", "r+b") as fh:
        assert fh.read(3) == b"012"
        fh.write(b"abc")
        fh.seek(0)
        assert fh.read() == b"012abc6789"
    assert f.read_bytes() == b"012abc6789"
    with client.open("f", "rb+") as fh:  # either order of the mode letters
        fh.seek(-2, os.SEEK_END)
        fh.write(b"XYZ")
    assert f.read_bytes() == b"012abc67XYZ"
    with client.open("f", "w+b") as fh:
        assert fh.read() == b""
        fh.write(b"fresh")
        fh.seek(0)
        assert fh.read() == b"fresh"
    assert f.read_bytes() == b"fresh"
    with client.open("f", "a+b") as fh:
        assert fh.tell() == 5
        fh.seek(0)
        assert fh.read(2) == b"fr"
        fh.write(b"+end")
        fh.seek(0)
        assert fh.read() == b"fresh+end"
    assert f.read_bytes() == b"fresh+end"
    with client.open("g", "w+") as fh:
        fh.write("text+")
        fh.seek(0)
        assert fh.read() == "text+"
    with client.open("g", "a+") as fh:
        fh.write("more")
        fh.seek(0)
        assert fh.read() == "text+more"


def test_open_text_encodings_and_newlines(client: Client, export_dir: Path) -> None:
    text = "héllo ✓ wörld\n"
    with client.open("u16", "w", encoding="utf-16") as f:
        f.write(text)
    assert (export_dir / "u16").read_bytes() == text.encode("utf-16")
    with client.open("u16", encoding="utf-16") as f:
        assert f.read() == text
    put(export_dir / "latin", "café".encode("latin-1"))
    with client.open("latin", encoding="latin-1") as f:
        assert f.read() == "café"
    with client.open("latin", errors="replace") as f:
        assert f.read() == "caf\ufffd"
    with pytest.raises(UnicodeDecodeError), client.open("latin") as f:
        f.read()
    put(export_dir / "crlf", b"a\r\nb\rc\n")
    with client.open("crlf") as f:
        assert f.read() == "a\nb\nc\n"
    with client.open("crlf", newline="") as f:
        assert f.read() == "a\r\nb\rc\n"
    with client.open("out", "w", newline="\r\n") as f:
        f.write("x\ny\n")
    assert (export_dir / "out").read_bytes() == b"x\r\ny\r\n"


def test_open_line_buffering(client: Client, export_dir: Path) -> None:
    f = client.open("lines", "w", buffering=1)
    try:
        f.write("first line\n")
        assert (export_dir / "lines").read_bytes() == b"first line\n"
        f.write("partial")
    finally:
        f.close()
    assert (export_dir / "lines").read_bytes() == b"first line\npartial"


@pytest.mark.parametrize("mode", ["", "b", "rw", "rr", "z", "r+w", "rbt", "wx", "+", "U"])
def test_open_invalid_modes(client: Client, export_dir: Path, mode: str) -> None:
    with pytest.raises(ValueError):
        client.open("f", mode)
    assert os.listdir(export_dir) == []


def test_open_invalid_arguments(client: Client, export_dir: Path) -> None:
    put(export_dir / "f", b"x")
    with pytest.raises(ValueError):
        client.open("f", "r", buffering=0)
    with pytest.raises(ValueError):
        client.open("f", "rb", encoding="utf-8")
    with pytest.raises(ValueError):
        client.open("f", "rb", newline="\n")


def test_open_errors(client: Client, export_dir: Path, remote_error: Any) -> None:
    (export_dir / "dir").mkdir()
    put(export_dir / "file", b"x")
    with remote_error(FileNotFoundError, errno.ENOENT, "missing"):
        client.open("missing")
    with remote_error(FileNotFoundError, errno.ENOENT, b"missing"):
        client.open(b"missing", "rb")
    with remote_error(FileNotFoundError, errno.ENOENT, "nodir/new"):
        client.open("nodir/new", "w")
    with remote_error(NotADirectoryError, errno.ENOTDIR, "file/new"):
        client.open("file/new", "w")
    with remote_error(IsADirectoryError, errno.EISDIR, "dir"):
        client.open("dir", "wb")
    with remote_error(IsADirectoryError, errno.EISDIR, "dir"):
        client.open("dir", "r+b")
    # reading a directory fails with EISDIR, at open or at the first read
    with remote_error(IsADirectoryError, errno.EISDIR, "dir"), client.open("dir", "rb") as f:
        f.read()
    assert sorted(os.listdir(export_dir)) == ["dir", "file"]


# --- the raw file: RemoteFile -------------------------------------------------------------


def test_buffering_zero_returns_remote_file(client: Client, export_dir: Path) -> None:
    put(export_dir / "f", b"raw data")
    with client.open("f", "rb", buffering=0) as f:
        assert isinstance(f, RemoteFile)
        assert isinstance(f, io.RawIOBase)
        assert f.name == "f" and f.mode == "rb"
        assert f.readable() and not f.writable() and f.seekable()
        assert f.read() == b"raw data"
        assert f.stat().st_size == 8
        assert f.stat().st_ino == os.lstat(export_dir / "f").st_ino
    assert f.closed
    with pytest.raises(ValueError):
        f.read()
    with pytest.raises(ValueError):
        f.pread(1, 0)
    with client.open("w", "wb", buffering=0) as w:
        assert isinstance(w, RemoteFile) and w.writable() and not w.readable()
        with pytest.raises(io.UnsupportedOperation):
            w.readinto(bytearray(1))


def test_readinto_buffers(client: Client, export_dir: Path) -> None:
    data = os.urandom(300_000)
    put(export_dir / "f", data)
    with client.open("f", "rb", buffering=0) as f:
        buf = bytearray(100_000)
        assert f.readinto(buf) == 100_000 and buf == data[:100_000]
        assert f.tell() == 100_000
        big = bytearray(b"\xaa" * 150_000)
        mv = memoryview(big)[25_000:125_000]  # into the middle of a larger buffer
        assert f.readinto(mv) == 100_000
        assert big[25_000:125_000] == data[100_000:200_000]
        assert big[:25_000] == b"\xaa" * 25_000 and big[125_000:] == b"\xaa" * 25_000
        m = mmap.mmap(-1, 200_000)
        assert f.readinto(m) == 100_000  # short: only 100,000 bytes remain
        assert m[:100_000] == data[200_000:]
        assert f.readinto(m) == 0
        arr = memoryview(bytearray(64)).cast("I")  # a non-byte format
        f.seek(0)
        assert f.readinto(arr) == 64
        assert arr.tobytes() == data[:64]
    with client.open("f", "rb") as bf:  # through the buffered reader too
        m2 = mmap.mmap(-1, len(data))
        assert bf.readinto(m2) == len(data)
        assert m2[:] == data


def test_caller_buffer_released_when_call_returns(client: Client, export_dir: Path) -> None:
    # Once readinto/preadinto return, the library must hold no reference to
    # the caller's memory: an mmap can be closed, a bytearray resized.
    put(export_dir / "f", b"12345")
    with client.open("f", "rb", buffering=0) as f:
        m = mmap.mmap(-1, 4096)
        assert f.readinto(m) == 5
        m.close()
        buf = bytearray(10)
        assert f.preadinto(buf, 0) == 5
        del buf[5:]
        assert buf == b"12345"


def test_pread_short_at_eof(client: Client, export_dir: Path) -> None:
    put(export_dir / "f", b"0123456789")
    with client.open("f", "rb", buffering=0) as f:
        assert f.pread(100, 0) == b"0123456789"
        assert f.pread(100, 7) == b"789"
        assert f.pread(5, 10) == b""
        assert f.pread(5, 1000) == b""


def test_positional_io(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "f", b"0123456789")
    with client.open("f", "r+b", buffering=0) as fh:
        fh.seek(2)
        assert fh.pread(3, 5) == b"567"
        buf = bytearray(4)
        assert fh.preadinto(buf, 1) == 4 and buf == b"1234"
        assert fh.pwrite(b"AB", 8) == 2
        assert fh.pwrite(memoryview(b"zz"), 0) == 2
        assert fh.tell() == 2  # positional calls leave the position alone
        assert fh.pread(10, 0) == b"zz234567AB"
        assert fh.pwrite(b"!", 15) == 1  # past the end: a hole of zeros
        assert fh.preadinto(bytearray(10), 16) == 0
        assert fh.preadinto(bytearray(0), 0) == 0
        assert fh.pwrite(b"", 3) == 0
    assert f.read_bytes() == b"zz234567AB" + b"\0" * 5 + b"!"


def test_seek_tell(client: Client, export_dir: Path) -> None:
    put(export_dir / "f", b"abcdefghij")
    with client.open("f", "rb", buffering=0) as f:
        assert f.tell() == 0
        assert f.seek(3) == 3 and f.read(2) == b"de" and f.tell() == 5
        assert f.seek(-1, os.SEEK_CUR) == 4 and f.read(1) == b"e"
        assert f.seek(-3, os.SEEK_END) == 7 and f.read() == b"hij"
        assert f.seek(0, os.SEEK_END) == 10 and f.read(5) == b""
        assert f.seek(100) == 100 and f.read(5) == b""
        with pytest.raises(OSError) as ei:
            f.seek(-11, os.SEEK_END)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(ValueError):
            f.seek(0, 7)
    with client.open("f", "rb") as bf:
        bf.seek(-4, os.SEEK_END)
        assert bf.read(2) == b"gh" and bf.tell() == 8


def test_reads_past_eof(client: Client, export_dir: Path) -> None:
    put(export_dir / "f", b"12345")
    with client.open("f", "rb", buffering=0) as f:
        assert f.read(3) == b"123"
        assert f.read(100) == b"45"
        assert f.read(100) == b""
        assert f.read() == b""
        f.seek(2)
        buf = bytearray(10)
        assert f.readinto(buf) == 3 and buf[:3] == b"345"
    with client.open("f", "rb") as bf:
        assert bf.read(1000) == b"12345"
        assert bf.read(1) == b""
    put(export_dir / "empty")
    with client.open("empty", "rb") as bf:
        assert bf.read() == b""


def test_file_truncate(client: Client, export_dir: Path) -> None:
    f = put(export_dir / "f", b"0123456789")
    with client.open("f", "r+b", buffering=0) as fh:
        assert fh.truncate(4) == 4
        assert f.read_bytes() == b"0123"
        fh.seek(2)
        assert fh.truncate() == 2  # at the current position
        assert f.read_bytes() == b"01"
        assert fh.truncate(6) == 6
        assert f.read_bytes() == b"01\0\0\0\0"
        assert fh.stat().st_size == 6
    with client.open("f", "r+b") as bf:
        bf.seek(3)
        bf.write(b"Q")
        bf.truncate()  # flushes first, then cuts at the position
    assert f.read_bytes() == b"01\0Q"
    with client.open("f", "rb", buffering=0) as ro, pytest.raises(OSError):
        ro.truncate(0)
    assert f.read_bytes() == b"01\0Q"


def test_fallocate(client: Client, export_dir: Path, remote_error: Any) -> None:
    falloc_keep_size, falloc_punch_hole = 0x01, 0x02
    f = put(export_dir / "f", b"x" * 10)
    with client.open("f", "r+b", buffering=0) as fh:
        fh.fallocate(0, 1 << 20)
        st = os.lstat(f)
        assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 1 << 20
        assert f.read_bytes() == b"x" * 10 + b"\0" * ((1 << 20) - 10)
        fh.fallocate(1 << 20, 1 << 20, falloc_keep_size)  # reserve beyond EOF
        st = os.lstat(f)
        assert st.st_size == 1 << 20 and st.st_blocks * 512 >= 2 << 20
        fh.pwrite(b"y" * 8192, 0)
        fh.fallocate(0, 4096, falloc_punch_hole | falloc_keep_size)
        assert f.read_bytes()[:8192] == b"\0" * 4096 + b"y" * 4096
        assert os.lstat(f).st_size == 1 << 20
        with remote_error(OSError, errno.EINVAL, "f"):
            fh.fallocate(0, 0)
    with client.open("f", "rb", buffering=0) as ro, remote_error(OSError, errno.EBADF, "f"):
        ro.fallocate(0, 4 << 20)
    assert os.lstat(f).st_size == 1 << 20


def test_fsync(client: Client, export_dir: Path, sent: list[Command]) -> None:
    with client.open("f", "wb", buffering=0) as f:
        f.write(b"durable")
        sent.clear()
        f.fsync()
        f.fsync(datasync=True)
        assert sent == [Command.FSYNC, Command.FSYNC]
        assert (export_dir / "f").read_bytes() == b"durable"
    with pytest.raises(ValueError):
        f.fsync()
    with client.open("g", "wb") as bf:
        bf.write(b"buffered")
        bf.flush()
        bf.raw.fsync()
        assert (export_dir / "g").read_bytes() == b"buffered"


def test_large_file_round_trip(client: Client, export_dir: Path) -> None:
    size = 20 << 20
    data = os.urandom(size - 12345)  # not a multiple of the chunk size
    with client.open("big", "wb") as f:
        assert f.write(data) == len(data)
    assert (export_dir / "big").read_bytes() == data
    assert client.stat("big").st_size == len(data)
    buf = bytearray(size)  # one preallocated buffer, larger than the file
    with client.open("big", "rb", buffering=0) as f:
        n = f.readinto(buf)
        assert n == len(data)
        assert buf[:n] == data
        assert f.tell() == n
        assert f.readinto(buf) == 0
        mid = len(data) // 2 + 7
        assert f.pread(3 << 20, mid) == data[mid : mid + (3 << 20)]
    with client.open("big", "rb") as f:
        assert f.read() == data
    # a large positional write in the middle
    patch = os.urandom(5 << 20)
    with client.open("big", "r+b", buffering=0) as f:
        assert f.pwrite(patch, 1 << 20) == len(patch)
    expected = data[: 1 << 20] + patch + data[(1 << 20) + len(patch) :]
    assert (export_dir / "big").read_bytes() == expected


def test_concurrent_preads_share_one_file(client: Client, export_dir: Path) -> None:
    data = os.urandom(4 << 20)
    put(export_dir / "f", data)
    errors: list[BaseException] = []
    with client.open("f", "rb", buffering=0) as f:

        def worker(k: int) -> None:
            try:
                for i in range(20):
                    off = (k * 131_071 + i * 65_537) % (len(data) - 300_000)
                    n = 1000 + (k * 7919 + i * 104_729) % 299_000
                    assert f.pread(n, off) == data[off : off + n]
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors, errors[0]


def test_concurrent_pwrites_disjoint_regions(client: Client, export_dir: Path) -> None:
    size, parts = 4 << 20, 8
    data = os.urandom(size)
    step = size // parts
    errors: list[BaseException] = []
    with client.open("f", "wb", buffering=0) as f:

        def worker(k: int) -> None:
            try:
                for off in range(k * step, (k + 1) * step, 100_003):
                    end = min(off + 100_003, (k + 1) * step)
                    assert f.pwrite(data[off:end], off) == end - off
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(parts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors, errors[0]
    assert (export_dir / "f").read_bytes() == data


def test_large_append_keeps_order(client: Client, export_dir: Path) -> None:
    head = b"head:"
    put(export_dir / "log", head)
    data = os.urandom((5 << 20) + 333)  # several chunks in flight at once
    with client.open("log", "ab", buffering=0) as f:
        assert f.write(data) == len(data)
        assert f.tell() == len(head) + len(data)
    assert (export_dir / "log").read_bytes() == head + data


def test_small_negotiated_payload_round_trip(server: Server, export_dir: Path) -> None:
    data = os.urandom((1 << 20) + 4321)
    with make_client([address_of(server)], timeout=10, umask=0o022, max_payload=64 << 10) as c:
        assert c.server_info()["max_payload"] == 64 << 10
        with c.open("f", "wb", buffering=0) as f:
            assert f.write(data) == len(data)
        assert (export_dir / "f").read_bytes() == data
        buf = bytearray(len(data) + 10)
        with c.open("f", "rb", buffering=0) as f:
            assert f.readinto(buf) == len(data)
        assert buf[: len(data)] == data


# --- client-side limits -------------------------------------------------------------------


def test_paths_deeper_than_path_max_work(client: Client, export_dir: Path) -> None:
    """A tree deeper than 4,096 bytes from the export's root (Linux limits each
    syscall's path, not a tree's depth): made, listed, written, renamed, removed."""
    deep = "/" + "/".join(f"level-{i:03d}-" + "x" * 40 for i in range(120))  # ~6 KiB
    assert len(deep) > 4096
    client.makedirs(deep)
    with client.open(deep + "/f", "wb") as f:
        f.write(b"deep data")
    assert client.stat(deep + "/f").st_size == 9
    assert client.listdir(deep) == ["f"]
    client.rename(deep + "/f", deep + "/g")
    with client.open(deep + "/g", "rb") as f:
        assert f.read() == b"deep data"
    client.mkdir(deep + "/sub")
    client.symlink("target", deep + "/sub/link")
    assert client.readlink(deep + "/sub/link") == "target"
    client.unlink(deep + "/g")
    client.rmtree(deep.split("/", 2)[0] + "/" + deep.split("/")[1])
    assert os.listdir(export_dir) == []


def test_paths_deeper_than_path_max_stay_in_the_export(client: Client, export_dir: Path) -> None:
    """Walked in steps, a long path is still confined: no step may climb out."""
    outside = export_dir.parent / "outside"
    outside.mkdir()
    deep = "/".join(["d"] * 1500)  # 3 KiB of directories, then a symlink out
    client.makedirs(deep)
    os.symlink(outside, export_dir / deep / "out")
    for sneaky in (deep + "/out/x" + "/y" * 2000, deep + "/" + "../" * 1501 + "outside/x"):
        for op in (client.makedirs, client.stat, lambda path: client.open(path, "wb")):
            with pytest.raises(OSError) as ei:
                op(sneaky)
            assert ei.value.errno in (errno.ELOOP, errno.EACCES, errno.ENOTDIR)
    assert os.listdir(outside) == []
    client.rmtree("d")  # deeper than Python's recursion limit: removed all the same
    assert os.listdir(export_dir) == [] and os.listdir(outside) == []


def test_overlong_path_is_an_oserror(client: Client, export_dir: Path) -> None:
    long_path = "d/" * (proto.MAX_PATH // 2) + "f"  # more than the protocol carries
    for op in (
        lambda: client.stat(long_path),
        lambda: client.open(long_path, "wb"),
        lambda: client.mkdir(long_path),
    ):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.ENAMETOOLONG
    assert os.listdir(export_dir) == []
    assert client.stat("/").st_ino == os.lstat(export_dir).st_ino


def test_oversized_xattr_value_is_an_oserror(client: Client, export_dir: Path) -> None:
    put(export_dir / "f")
    with pytest.raises(OSError) as ei:
        client.setxattr("f", "user.big", b"v" * ((64 << 10) + 1))
    assert ei.value.errno in (errno.E2BIG, errno.ERANGE, errno.ENOSPC)
    assert "user.big" not in os.listxattr(export_dir / "f")
