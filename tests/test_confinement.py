"""Attacks through the client must never reach outside the export.

Every test builds targets *outside* the export (under ``tmp_path``, next to
``export_dir``), attacks them through the client ('..', absolute paths, NUL
bytes, symlinks planted in the export), and then checks with a full snapshot
(names, types, modes, owners, sizes, times, link counts, contents, xattrs)
that nothing outside changed. Destructive attacks only ever aim at these
temporary targets; /etc is only used for reads.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import tree_snapshot
from pohmelfs import Client
from pohmelfs.server.export import LocalExport

SECRET = b"TOP SECRET: must never be read or changed through the export"


# --- the outside world and its snapshot -------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the export, full of things an attacker would like."""
    o = tmp_path / "outside"
    o.mkdir()
    (o / "secret").write_bytes(SECRET)
    os.chmod(o / "secret", 0o600)
    os.setxattr(o / "secret", "user.tag", b"outside value")
    (o / "subdir").mkdir()
    (o / "subdir" / "deep").write_bytes(b"deep file")
    (o / "emptydir").mkdir()
    os.symlink("secret", o / "link")
    os.utime(o / "secret", ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return o


@pytest.fixture
def untouched(tmp_path: Path, export_dir: Path, outside: Path) -> Iterator[None]:
    """Fails the test if anything outside the export changed during it."""
    before = tree_snapshot(tmp_path, skip=export_dir)
    parent_before = sorted(os.listdir(tmp_path.parent))
    yield
    assert tree_snapshot(tmp_path, skip=export_dir) == before
    assert sorted(os.listdir(tmp_path.parent)) == parent_before
    assert (outside / "secret").read_bytes() == SECRET


def must_fail(op: Callable[[], Any], *codes: int) -> OSError:
    with pytest.raises(OSError) as ei:
        op()
    if codes:
        assert ei.value.errno in codes, f"{ei.value!r}, expected one of {codes}"
    return ei.value


def every_op_on(client: Client, p: str) -> list[tuple[str, Callable[[], Any]]]:
    """Every client operation aimed at path ``p`` (as target, parent or source)."""
    return [
        ("stat", lambda: client.stat(p)),
        ("listdir", lambda: client.listdir(p)),
        ("open rb", lambda: client.open(p, "rb")),
        ("open r+b", lambda: client.open(p, "r+b")),
        ("open wb", lambda: client.open(p, "wb")),
        ("open ab", lambda: client.open(p, "ab")),
        ("open xb", lambda: client.open(p, "xb")),
        ("mkdir", lambda: client.mkdir(p)),
        ("makedirs", lambda: client.makedirs(p + "/x/y")),
        ("rmdir", lambda: client.rmdir(p)),
        ("rmtree", lambda: client.rmtree(p)),
        ("unlink", lambda: client.unlink(p)),
        ("rename from", lambda: client.rename(p, "stolen")),
        ("rename onto", lambda: client.rename("bait", p)),
        ("rename noreplace", lambda: client.rename("bait", p, noreplace=True)),
        ("rename exchange", lambda: client.rename("bait", p, exchange=True)),
        ("link from", lambda: client.link(p, "hardlink")),
        ("link onto", lambda: client.link("bait", p)),
        ("symlink", lambda: client.symlink("bait", p)),
        ("readlink", lambda: client.readlink(p)),
        ("truncate", lambda: client.truncate(p, 0)),
        ("chmod", lambda: client.chmod(p, 0o777)),
        ("chown", lambda: client.chown(p, 4321, 4321)),
        ("utime", lambda: client.utime(p, ns=(0, 0))),
        ("setxattr", lambda: client.setxattr(p, "user.pwned", b"1")),
        ("getxattr", lambda: client.getxattr(p, "user.tag")),
        ("listxattr", lambda: client.listxattr(p)),
        ("removexattr", lambda: client.removexattr(p, "user.tag")),
        ("mknod", lambda: client.mknod(p, 0o644 | stat.S_IFIFO)),
    ]


@pytest.fixture
def bait(export_dir: Path) -> Path:
    b = export_dir / "bait"
    b.write_bytes(b"bait")
    return b


def export_unchanged_but_bait(export_dir: Path, expected: set[str]) -> None:
    assert set(os.listdir(export_dir)) == expected
    assert (export_dir / "bait").read_bytes() == b"bait"


# --- '..' --------------------------------------------------------------------------------

ESCAPES = [
    "..",
    "../",
    "../outside",
    "../outside/secret",
    "../outside/subdir",
    "../outside/emptydir",
    "../outside/new",
    "sub/../../outside/secret",
    "sub/../../outside/new",
    "sub/x/../../../outside/secret",
    "./../outside/secret",
    "nonexistent/../../outside/secret",
    "/../outside/secret",
    "sub/../..",
    "../export/bait",  # even a way back in is refused: the walk climbed out
]


@pytest.mark.parametrize("path", ESCAPES)
def test_dotdot_never_climbs_above_root(
    client: Client, export_dir: Path, outside: Path, bait: Path, untouched: None, path: str
) -> None:
    (export_dir / "sub").mkdir()
    for name, op in every_op_on(client, path):
        err = must_fail(op, errno.EACCES)
        assert err.filename in (path, path + "/x/y", "stolen", "hardlink", "bait"), name
    export_unchanged_but_bait(export_dir, {"bait", "sub"})
    assert os.listdir(export_dir / "sub") == []


def test_dotdot_inside_the_export_is_fine(client: Client, export_dir: Path) -> None:
    (export_dir / "a" / "b").mkdir(parents=True)
    (export_dir / "f").write_bytes(b"in")
    assert client.stat("a/b/../../f").st_ino == os.lstat(export_dir / "f").st_ino
    with client.open("a/../a/b/../new", "wb") as f:
        f.write(b"created")
    assert (export_dir / "a" / "new").read_bytes() == b"created"
    client.mkdir("a/b/../c")
    assert (export_dir / "a" / "c").is_dir()


def test_rmtree_of_dotdot_spellings_of_root(
    client: Client, export_dir: Path, untouched: None
) -> None:
    (export_dir / "a").mkdir()
    (export_dir / "a" / "keep").write_bytes(b"k")
    for p in ("..", "a/../..", "a/..", "/", "", "."):
        must_fail(lambda p=p: client.rmtree(p))
        must_fail(lambda p=p: client.rmdir(p))
        must_fail(lambda p=p: client.unlink(p))
    assert (export_dir / "a" / "keep").read_bytes() == b"k"


def test_rename_onto_and_from_dotdot(
    client: Client, export_dir: Path, bait: Path, untouched: None
) -> None:
    (export_dir / "sub").mkdir()
    for src, dst in [
        ("bait", ".."),
        ("bait", "../bait"),
        ("bait", "sub/.."),
        ("bait", "sub/../.."),
        ("sub", ".."),
        ("sub", "sub/.."),
        ("..", "x"),
        ("sub/..", "x"),
        ("/", "x"),
        ("bait", "/"),
    ]:
        must_fail(lambda s=src, d=dst: client.rename(s, d))
        must_fail(lambda s=src, d=dst: client.rename(s, d, exchange=True))
        must_fail(lambda s=src, d=dst: client.rename(s, d, noreplace=True))
    export_unchanged_but_bait(export_dir, {"bait", "sub"})


# --- absolute paths ----------------------------------------------------------------------


def test_absolute_paths_are_relative_to_the_export(
    client: Client, export_dir: Path, outside: Path, untouched: None
) -> None:
    # reads of real system files: all ENOENT, the export has no /etc
    for p in ("/etc/passwd", "//etc//passwd", "/etc", "/proc/self/environ", "/dev/null"):
        must_fail(lambda p=p: client.stat(p), errno.ENOENT)
        must_fail(lambda p=p: client.open(p, "rb"), errno.ENOENT)
    must_fail(lambda: client.listdir("/etc"), errno.ENOENT)
    must_fail(lambda: client.readlink("/proc/self/exe"), errno.ENOENT)
    # destructive attacks aim at our own outside directory, by absolute path
    abs_secret = str(outside / "secret")
    for name, op in every_op_on(client, abs_secret):
        if name == "makedirs":
            continue  # would rightly create the whole path inside the export
        err = must_fail(op, errno.ENOENT)
        assert err.filename in (abs_secret, abs_secret + "/x/y", "stolen", "hardlink", "bait")
    must_fail(lambda: client.rmtree(str(outside)), errno.ENOENT)
    must_fail(lambda: client.link(abs_secret, "hl"), errno.ENOENT)
    # once that path exists inside the export, it is the export's file that changes
    client.makedirs(str(outside))
    with client.open(abs_secret, "wb") as f:
        f.write(b"pwned?")
    mirrored = export_dir / str(outside).lstrip("/") / "secret"
    assert mirrored.read_bytes() == b"pwned?"
    client.chmod(abs_secret, 0o777)
    assert stat.S_IMODE(os.lstat(mirrored).st_mode) == 0o777
    client.rmtree("/" + str(outside).lstrip("/").split("/")[0])
    assert os.listdir(export_dir) == []


def test_etc_passwd_is_enoent_with_path(client: Client) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        client.stat("/etc/passwd")
    assert ei.value.errno == errno.ENOENT and ei.value.filename == "/etc/passwd"
    with pytest.raises(FileNotFoundError):
        client.open("/etc/passwd")


# --- NUL bytes ---------------------------------------------------------------------------


def test_nul_bytes_in_paths_are_refused(client: Client, export_dir: Path, untouched: None) -> None:
    f = export_dir / "f"
    f.write_bytes(b"keep me")
    os.chmod(f, 0o640)
    (export_dir / "d").mkdir()
    (export_dir / "d" / "inner").write_bytes(b"inner")
    before = tree_snapshot(export_dir)
    # A C-level truncation at the NUL would act on "f" or "d": it must not happen.
    attacks: list[Callable[[], Any]] = [
        lambda: client.stat("f\0junk"),
        lambda: client.listdir("d\0junk"),
        lambda: client.open("f\0junk", "rb"),
        lambda: client.open("f\0junk", "wb"),
        lambda: client.open("new\0/../../outside/secret", "wb"),
        lambda: client.mkdir("new\0dir"),
        lambda: client.makedirs("new\0/a/b"),
        lambda: client.rmdir("d\0junk"),
        lambda: client.rmtree("d\0junk"),
        lambda: client.unlink("f\0junk"),
        lambda: client.rename("f\0junk", "moved"),
        lambda: client.rename("f", "moved\0junk"),
        lambda: client.link("f\0junk", "hl"),
        lambda: client.link("f", "hl\0junk"),
        lambda: client.symlink("target\0../../outside", "sl"),
        lambda: client.symlink("target", "sl\0junk"),
        lambda: client.readlink("f\0junk"),
        lambda: client.truncate("f\0junk", 0),
        lambda: client.chmod("f\0junk", 0o777),
        lambda: client.chown("f\0junk", 4321, 4321),
        lambda: client.utime("f\0junk", ns=(0, 0)),
        lambda: client.setxattr("f\0junk", "user.x", b"1"),
        lambda: client.setxattr("f", "user.x\0junk", b"1"),
        lambda: client.getxattr("f\0junk", "user.x"),
        lambda: client.listxattr("f\0junk"),
        lambda: client.removexattr("f\0junk", "user.x"),
        lambda: client.mknod("fifo\0junk", 0o644 | stat.S_IFIFO),
        lambda: client.stat(b"f\0junk"),
        lambda: client.unlink(b"f\0junk"),
    ]
    for i, attack in enumerate(attacks):
        with pytest.raises((OSError, ValueError)):
            attack()
        assert tree_snapshot(export_dir) == before, f"attack {i} changed the export"
    # and the connection is still good afterwards
    assert client.stat("f").st_size == 7


def test_export_refuses_nul_bytes_itself(export_dir: Path) -> None:
    # The storage layer must not rely on the client having checked.
    (export_dir / "f").write_bytes(b"keep")
    (export_dir / "d").mkdir()
    export = LocalExport(str(export_dir))
    try:
        ops: list[Callable[[], Any]] = [
            lambda: export.lookup(b"f\0x"),
            lambda: export.unlink(b"f\0x"),
            lambda: export.truncate(b"f\0x", 0),
            lambda: export.chmod(b"f\0x", 0o777),
            lambda: export.rmtree(b"d\0x"),
            lambda: export.rmdir(b"d\0x"),
            lambda: export.mkdir(b"n\0x", 0o755),
            lambda: export.makedirs(b"n\0x", 0o755),
            lambda: export.rename(b"f\0x", b"g", 0),
            lambda: export.rename(b"f", b"g\0x", 0),
            lambda: export.open(b"f\0x", os.O_RDWR | os.O_TRUNC, 0o644),
            lambda: list(export.readdir(b"d\0x")),
        ]
        for op in ops:
            with pytest.raises(OSError) as ei:
                op()
            assert ei.value.errno == errno.EINVAL
    finally:
        export.close()
    assert (export_dir / "f").read_bytes() == b"keep"
    assert sorted(os.listdir(export_dir)) == ["d", "f"]


# --- symlinks pointing outside -----------------------------------------------------------


@pytest.fixture
def planted(export_dir: Path, outside: Path) -> dict[str, str]:
    """Symlinks in the export that lead outside, in every flavour."""
    links = {
        "out": str(outside),  # absolute, to a directory
        "up": "../outside",  # relative, climbing
        "secret_link": str(outside / "secret"),  # to a file
        "rel_secret": "../outside/secret",
        "dangling_out": str(outside / "newfile"),  # to a name that does not exist yet
        "dangling_dir": str(outside / "newdir"),
    }
    for name, target in links.items():
        os.symlink(target, export_dir / name)
    (export_dir / "bait").write_bytes(b"bait")
    return links


@pytest.mark.parametrize("link", ["out", "up"])
@pytest.mark.parametrize(
    "below", ["secret", "subdir", "subdir/deep", "emptydir", "link", "newfile", "newdir/x"]
)
def test_symlink_as_parent_component_never_followed(
    client: Client,
    export_dir: Path,
    planted: dict[str, str],
    untouched: None,
    link: str,
    below: str,
) -> None:
    p = f"{link}/{below}"
    for name, op in every_op_on(client, p):
        must_fail(op)
        assert not os.path.lexists(export_dir / "stolen"), name
        assert not os.path.lexists(export_dir / "hardlink"), name
    export_unchanged_but_bait(export_dir, set(planted) | {"bait"})


@pytest.mark.parametrize("link", ["out", "up"])
def test_symlink_to_outside_dir_cannot_be_listed_or_entered(
    client: Client, export_dir: Path, planted: dict[str, str], untouched: None, link: str
) -> None:
    for p in (link, link + "/", link + "/.", link + "/subdir/.."):
        must_fail(lambda p=p: client.listdir(p))
        must_fail(lambda p=p: list(client.scandir(p)))
    # with ELOOP, as documented, when the link is a parent
    must_fail(lambda: client.stat(link + "/secret"), errno.ELOOP)
    must_fail(lambda: client.open(link + "/secret", "rb"), errno.ELOOP)
    must_fail(lambda: client.open(link + "/new", "wb"), errno.ELOOP)


def test_stat_and_readlink_show_the_link_itself(
    client: Client, export_dir: Path, planted: dict[str, str], outside: Path, untouched: None
) -> None:
    for name, target in planted.items():
        st = client.stat(name)
        assert stat.S_ISLNK(st.st_mode), name
        assert st.st_ino == os.lstat(export_dir / name).st_ino
        assert st.st_ino != os.lstat(outside).st_ino
        assert client.readlink(name) == target
    entries = {e.name: e for e in client.scandir("/")}
    for name in planted:
        assert entries[name].is_symlink() and not entries[name].is_dir()
        assert not entries[name].is_file()
    assert client.stat("secret_link").st_size == len(str(outside / "secret"))


def test_symlink_to_etc(client: Client, export_dir: Path) -> None:
    os.symlink("/etc", export_dir / "etc")
    os.symlink("/etc/passwd", export_dir / "passwd")
    assert stat.S_ISLNK(client.stat("etc").st_mode)
    assert client.readlink("etc") == "/etc"
    # reads only: nothing of /etc may be reachable
    must_fail(lambda: client.listdir("etc"))
    must_fail(lambda: client.stat("etc/passwd"), errno.ELOOP)
    must_fail(lambda: client.open("etc/passwd", "rb"), errno.ELOOP)
    must_fail(lambda: client.open("passwd", "rb"), errno.ELOOP)
    must_fail(lambda: client.open("passwd"), errno.ELOOP)
    must_fail(lambda: client.listxattr("etc/passwd"))
    must_fail(lambda: client.readlink("etc/mtab"))


def test_final_component_symlink_never_modifies_target(
    client: Client, export_dir: Path, planted: dict[str, str], outside: Path, untouched: None
) -> None:
    for name in ("secret_link", "rel_secret"):
        for mode in ("rb", "r", "r+b", "wb", "ab", "a+b", "w+b"):
            must_fail(lambda m=mode, n=name: client.open(n, m), errno.ELOOP)
        must_fail(lambda n=name: client.open(n, "xb"), errno.EEXIST)
        must_fail(lambda n=name: client.chmod(n, 0o777))
        must_fail(lambda n=name: client.truncate(n, 0))
        must_fail(lambda n=name: client.setxattr(n, "user.pwned", b"1"))
        must_fail(lambda n=name: client.removexattr(n, "user.tag"))
        # reading through the link must not leak the target's attributes
        with pytest.raises(OSError):
            client.getxattr(name, "user.tag")
        assert "user.tag" not in client.listxattr(name)
        must_fail(lambda n=name: client.rmtree(n), errno.ENOTDIR)
        must_fail(lambda n=name: client.listdir(n))
        must_fail(lambda n=name: client.mknod(n, 0o644 | stat.S_IFIFO), errno.EEXIST)
        must_fail(lambda n=name: client.mkdir(n), errno.EEXIST)
        must_fail(lambda n=name: client.symlink("x", n), errno.EEXIST)
        # lutimes / lchown semantics: the link itself changes, not the target
        client.utime(name, ns=(2_000_000_000, 3_000_000_000))
        assert os.lstat(export_dir / name).st_mtime_ns == 3_000_000_000
        if os.geteuid() == 0:
            client.chown(name, 4321, 8765)
            assert os.lstat(export_dir / name).st_uid == 4321
    for name in ("dangling_out", "dangling_dir"):
        for mode in ("wb", "ab", "r+b", "w", "a+"):
            must_fail(lambda m=mode, n=name: client.open(n, m), errno.ELOOP)
        must_fail(lambda n=name: client.open(n, "xb"), errno.EEXIST)
        must_fail(lambda n=name: client.makedirs(n, exist_ok=True))
        must_fail(lambda n=name: client.makedirs(n + "/sub"))
    must_fail(lambda: client.makedirs("out", exist_ok=True))
    assert not os.path.lexists(outside / "newfile")
    assert not os.path.lexists(outside / "newdir")


def test_hard_link_to_outside_file_impossible(
    client: Client, export_dir: Path, planted: dict[str, str], outside: Path, untouched: None
) -> None:
    secret = outside / "secret"
    for src in (str(secret), "../outside/secret", "out/secret", "up/secret", "/../outside/secret"):
        must_fail(lambda s=src: client.link(s, "hl"))
        assert not os.path.lexists(export_dir / "hl")
    # a hard link of a symlink that points outside links the symlink, not the file
    client.link("secret_link", "hl")
    assert os.path.islink(export_dir / "hl")
    assert os.lstat(export_dir / "hl").st_ino == os.lstat(export_dir / "secret_link").st_ino
    assert os.lstat(secret).st_nlink == 1
    must_fail(lambda: client.open("hl", "rb"), errno.ELOOP)


def test_moving_and_removing_links_leaves_targets(
    client: Client, export_dir: Path, planted: dict[str, str], outside: Path, untouched: None
) -> None:
    client.mkdir("sub")
    client.rename("out", "sub/moved")
    assert os.readlink(export_dir / "sub" / "moved") == str(outside)
    must_fail(lambda: client.listdir("sub/moved"))
    must_fail(lambda: client.unlink("sub/moved/secret"))
    client.rename("secret_link", "bait")  # replaces bait with the link
    assert os.readlink(export_dir / "bait") == str(outside / "secret")
    client.rename("rel_secret", "up", exchange=True)
    assert os.readlink(export_dir / "up") == "../outside/secret"
    client.unlink("sub/moved")
    client.unlink("up")
    client.unlink("bait")
    must_fail(lambda: client.rmtree("dangling_dir"), errno.ENOTDIR)
    must_fail(lambda: client.rmdir("rel_secret"), errno.ENOTDIR)
    client.rmtree("sub")
    assert sorted(os.listdir(export_dir)) == ["dangling_dir", "dangling_out", "rel_secret"]


def test_rmtree_removes_links_not_outside_files(
    client: Client, export_dir: Path, outside: Path, untouched: None
) -> None:
    tree = export_dir / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    os.symlink(str(outside), tree / "abs_dir_link")
    os.symlink("../../outside", tree / "rel_dir_link")
    os.symlink(str(outside / "secret"), tree / "a" / "file_link")
    os.symlink("../../../../outside/subdir", tree / "a" / "b" / "deep_link")
    (tree / "a" / "b" / "plain").write_bytes(b"x")
    client.rmtree("tree")
    assert not os.path.lexists(tree)
    assert sorted(os.listdir(outside)) == ["emptydir", "link", "secret", "subdir"]


def test_rmtree_through_link_to_outside_dir(
    client: Client, export_dir: Path, planted: dict[str, str], untouched: None
) -> None:
    for p in ("out", "up", "out/subdir", "up/subdir", "out/", "up/emptydir"):
        must_fail(lambda p=p: client.rmtree(p))
    assert os.path.islink(export_dir / "out") and os.path.islink(export_dir / "up")


def test_symlink_inside_export_is_not_followed_either(client: Client, export_dir: Path) -> None:
    (export_dir / "real").mkdir()
    (export_dir / "real" / "file").write_bytes(b"inside")
    os.symlink("real", export_dir / "inner")
    os.symlink("real/file", export_dir / "file_link")
    must_fail(lambda: client.stat("inner/file"), errno.ELOOP)
    must_fail(lambda: client.open("inner/file", "rb"), errno.ELOOP)
    must_fail(lambda: client.open("file_link", "rb"), errno.ELOOP)
    must_fail(lambda: client.mkdir("inner/new"), errno.ELOOP)
    assert os.listdir(export_dir / "real") == ["file"]


def test_makedirs_never_descends_through_symlink(
    client: Client, export_dir: Path, planted: dict[str, str], outside: Path, untouched: None
) -> None:
    for p in ("out/new", "out/subdir/new", "up/new/deeper", "dangling_dir/x"):
        must_fail(lambda p=p: client.makedirs(p))
        must_fail(lambda p=p: client.makedirs(p, exist_ok=True))
    assert not os.path.lexists(outside / "new")
    assert not os.path.lexists(outside / "newdir")


# --- device nodes --------------------------------------------------------------------------


class _Inotify:
    """Watch one inode for IN_OPEN: proves whether the server opened it."""

    IN_OPEN = 0x20

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip("inotify unavailable")
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN)
        if wd < 0:
            os.close(self.fd)
            pytest.skip("inotify watch failed")

    def opened(self) -> bool:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        pos = 0
        while pos < len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
            pos += 16 + length
            if mask & self.IN_OPEN:
                return True
        return False

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def device_node(export_dir: Path) -> Iterator[tuple[Path, _Inotify]]:
    node = export_dir / "nullnode"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pytest.skip("cannot create device nodes here")
    watch = _Inotify(node)
    yield node, watch
    watch.close()


def test_device_node_in_export_is_never_opened(
    client: Client, device_node: tuple[Path, _Inotify]
) -> None:
    node, watch = device_node
    for mode in ("rb", "wb", "r+b", "ab"):
        must_fail(lambda m=mode: client.open("nullnode", m), errno.EACCES)
    assert not watch.opened(), "open() of a device node reached the device"
    # metadata of the node itself is fine and does not open it
    assert stat.S_ISCHR(client.stat("nullnode").st_mode)
    client.chmod("nullnode", 0o600)
    assert stat.S_IMODE(os.lstat(node).st_mode) == 0o600
    assert not watch.opened()


def test_truncate_of_device_node_never_opens_it(
    client: Client, device_node: tuple[Path, _Inotify]
) -> None:
    # Devices "can be neither created nor opened (as with nodev)": truncate by
    # path must be refused without the device ever being opened.
    _node, watch = device_node
    must_fail(lambda: client.truncate("nullnode", 0))
    assert not watch.opened(), "truncate() opened a device node in the export"
