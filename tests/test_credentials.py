"""Requests act with the caller's credentials (uid, gid, groups) on a root server.

The server switches each thread's file-system identity to the request's
credentials, so the kernel applies ownership, setgid inheritance and
permission checks exactly as for that user.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import address_of, make_client
from pohmelfs import Client, Cred
from pohmelfs.server.service import Server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: a server only switches to the caller's uid/gid when it runs as root",
)

USER = Cred(1000, 1000, (1000,))
OTHER = Cred(1001, 1001, (1001,))
ROOT = Cred(0, 0, ())

Connect = Callable[[Cred], Client]


@pytest.fixture
def connect(server: Server) -> Iterator[Connect]:
    made: list[Client] = []

    def make(cred: Cred) -> Client:
        c = make_client(address_of(server), timeout=10, cred=cred, umask=0o022)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def user(connect: Connect) -> Client:
    return connect(USER)


@pytest.fixture
def root(connect: Connect) -> Client:
    return connect(ROOT)


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_export_is_world_writable(export_dir: Path) -> None:
    assert stat.S_IMODE(os.stat(export_dir).st_mode) == 0o777
    assert owner(export_dir) == (0, 0)


def test_new_objects_are_owned_by_the_caller(user: Client, export_dir: Path) -> None:
    with user.open("/file", "wb") as f:
        f.write(b"mine")
    user.mkdir("/dir")
    user.makedirs("/deep/er/still")
    user.symlink("file", "/link")
    user.mknod("/fifo", stat.S_IFIFO | 0o644)
    user.mknod("/empty", stat.S_IFREG | 0o600)
    user.link("/file", "/dir/hardlink")
    for name in ("file", "dir", "deep", "deep/er", "deep/er/still", "link", "fifo", "empty"):
        assert owner(export_dir / name) == (1000, 1000), name
        st = user.stat("/" + name)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name
    assert stat.S_ISFIFO(os.lstat(export_dir / "fifo").st_mode)
    assert stat.S_ISLNK(os.lstat(export_dir / "link").st_mode)
    assert stat.S_IMODE(os.lstat(export_dir / "file").st_mode) == 0o644


def test_other_users_objects_keep_their_owner(connect: Connect, export_dir: Path) -> None:
    a, b = connect(USER), connect(OTHER)
    with a.open("/a", "wb") as f:
        f.write(b"a")
    with b.open("/b", "wb") as f:
        f.write(b"b")
    a.mkdir("/da")
    b.mkdir("/db")
    assert owner(export_dir / "a") == (1000, 1000)
    assert owner(export_dir / "b") == (1001, 1001)
    assert owner(export_dir / "da") == (1000, 1000)
    assert owner(export_dir / "db") == (1001, 1001)


def test_setgid_directory_passes_on_its_group(user: Client, export_dir: Path) -> None:
    sg = export_dir / "shared"
    sg.mkdir()
    os.chown(sg, 0, 2000)
    os.chmod(sg, 0o2777)
    with user.open("/shared/f", "wb") as f:
        f.write(b"x")
    user.mkdir("/shared/sub")
    user.mknod("/shared/fifo", stat.S_IFIFO | 0o600)
    assert owner(sg / "f") == (1000, 2000)
    assert owner(sg / "fifo") == (1000, 2000)
    assert owner(sg / "sub") == (1000, 2000)
    assert os.stat(sg / "sub").st_mode & stat.S_ISGID, "a new subdirectory inherits setgid"
    with user.open("/shared/sub/g", "wb") as f:
        f.write(b"y")
    assert owner(sg / "sub" / "g") == (1000, 2000)
    # Outside the setgid directory the caller's own group applies.
    with user.open("/plain", "wb") as f:
        f.write(b"z")
    assert owner(export_dir / "plain") == (1000, 1000)


def test_non_owner_cannot_chmod(connect: Connect, export_dir: Path) -> None:
    user, other = connect(USER), connect(OTHER)
    (export_dir / "rootfile").write_bytes(b"r")
    os.chmod(export_dir / "rootfile", 0o644)
    with pytest.raises(PermissionError) as info:
        user.chmod("/rootfile", 0o666)
    assert info.value.errno == errno.EPERM
    assert stat.S_IMODE(os.stat(export_dir / "rootfile").st_mode) == 0o644
    with other.open("/theirs", "wb") as f:
        f.write(b"t")
    with pytest.raises(PermissionError) as info:
        user.chmod("/theirs", 0o777)
    assert info.value.errno == errno.EPERM
    # The owner may.
    other.chmod("/theirs", 0o600)
    assert stat.S_IMODE(os.stat(export_dir / "theirs").st_mode) == 0o600


def test_chown_rules_for_non_root(connect: Connect, export_dir: Path) -> None:
    user = connect(Cred(1000, 1000, (1000, 3000)))
    with user.open("/f", "wb") as f:
        f.write(b"x")
    with pytest.raises(PermissionError) as info:
        user.chown("/f", 1001, -1)
    assert info.value.errno == errno.EPERM
    assert owner(export_dir / "f") == (1000, 1000)
    user.chown("/f", -1, 3000)  # a group the caller belongs to
    assert owner(export_dir / "f") == (1000, 3000)
    with pytest.raises(PermissionError) as info:
        user.chown("/f", -1, 4000)  # a group it does not belong to
    assert info.value.errno == errno.EPERM
    assert owner(export_dir / "f") == (1000, 3000)
    # Not even to a group it is in: the file is not its own.
    (export_dir / "rootfile").write_bytes(b"r")
    with pytest.raises(PermissionError) as info:
        user.chown("/rootfile", -1, 3000)
    assert info.value.errno == errno.EPERM
    assert owner(export_dir / "rootfile") == (0, 0)


def test_supplementary_groups_are_per_request(connect: Connect, export_dir: Path) -> None:
    """Groups of one caller must not leak to another on the same server."""
    member = connect(Cred(1000, 1000, (1000, 3000)))
    outsider = connect(Cred(1000, 1000, (1000,)))
    with member.open("/f", "wb") as f:
        f.write(b"x")
    for _ in range(3):
        member.chown("/f", -1, 3000)
        assert owner(export_dir / "f") == (1000, 3000)
        member.chown("/f", -1, 1000)
        # (Setting the group a file already has is always allowed to its owner.)
        with pytest.raises(PermissionError):
            outsider.chown("/f", -1, 3000)
        assert owner(export_dir / "f") == (1000, 1000)
    g = export_dir / "group-only"
    g.mkdir()
    os.chown(g, 0, 3000)
    os.chmod(g, 0o070)
    for _ in range(3):
        assert member.listdir("/group-only") == []
        with pytest.raises(PermissionError):
            outsider.listdir("/group-only")


def test_permission_checks_apply(user: Client, export_dir: Path) -> None:
    secret = export_dir / "secret"
    secret.write_bytes(b"top secret")
    os.chmod(secret, 0o600)
    with pytest.raises(PermissionError) as info:
        user.open("/secret", "rb")
    assert info.value.errno == errno.EACCES
    with pytest.raises(PermissionError):
        user.open("/secret", "r+b")
    with pytest.raises(PermissionError):
        user.truncate("/secret", 0)
    assert secret.read_bytes() == b"top secret"
    assert user.stat("/secret").st_size == 10  # stat needs only search permission

    locked = export_dir / "locked"
    locked.mkdir()
    os.chmod(locked, 0o755)
    (locked / "existing").write_bytes(b"e")
    for action in (
        lambda: user.open("/locked/new", "wb"),
        lambda: user.mkdir("/locked/newdir"),
        lambda: user.symlink("x", "/locked/newlink"),
        lambda: user.mknod("/locked/fifo", stat.S_IFIFO | 0o644),
        lambda: user.unlink("/locked/existing"),
        lambda: user.rename("/locked/existing", "/locked/moved"),
    ):
        with pytest.raises(PermissionError) as info:
            action()
        assert info.value.errno == errno.EACCES
    assert sorted(os.listdir(locked)) == ["existing"]
    assert user.listdir("/locked") == ["existing"]  # 0755: reading is allowed

    private = export_dir / "private"
    private.mkdir()
    os.chmod(private, 0o700)
    (private / "inner").write_bytes(b"i")
    with pytest.raises(PermissionError) as info:
        user.listdir("/private")
    assert info.value.errno == errno.EACCES
    with pytest.raises(PermissionError) as info:
        user.stat("/private/inner")
    assert info.value.errno == errno.EACCES


def test_root_can_do_everything(root: Client, user: Client, export_dir: Path) -> None:
    secret = export_dir / "secret"
    secret.write_bytes(b"top secret")
    os.chmod(secret, 0o600)
    locked = export_dir / "locked"
    locked.mkdir()
    os.chmod(locked, 0o700)
    # A failed unprivileged request first: the thread switching back must work.
    with pytest.raises(PermissionError):
        user.open("/secret", "rb")
    with root.open("/secret", "rb") as f:
        assert f.read() == b"top secret"
    with root.open("/locked/new", "wb") as f:
        f.write(b"n")
    root.mkdir("/locked/d")
    assert sorted(root.listdir("/locked")) == ["d", "new"]
    assert owner(locked / "new") == (0, 0)
    with user.open("/users", "wb") as f:
        f.write(b"u")
    root.chmod("/users", 0o640)
    assert stat.S_IMODE(os.stat(export_dir / "users").st_mode) == 0o640
    root.chown("/secret", 1000, 1000)
    assert owner(secret) == (1000, 1000)
    root.chown("/users", 1234, 5678)
    assert owner(export_dir / "users") == (1234, 5678)
    # ...and now that the secret is its own, the user can read it.
    with user.open("/secret", "rb") as f:
        assert f.read() == b"top secret"
    # Alternate on the same server many times: no identity sticks to a thread.
    for _ in range(5):
        with pytest.raises(PermissionError):
            user.listdir("/locked")
        assert sorted(root.listdir("/locked")) == ["d", "new"]
        with pytest.raises(PermissionError):
            user.open("/locked/new", "rb")
        with root.open("/locked/new", "rb") as f:
            assert f.read() == b"n"
