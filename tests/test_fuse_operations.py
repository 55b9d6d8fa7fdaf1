"""The FUSE operations against a live in-process server, without a kernel.

The fake kernel (``fakekernel.py``) dispatches requests to :class:`Operations`
and decodes its replies. Results are checked on disk in the export directory,
errors by the errno the kernel would be sent. The NodeTable (node ids, lookup
counts, renames) is tested on its own at the end; coherent mounts, on the same
fake kernel, in ``test_fuse_coherent.py``.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import address_of, make_client, start_server
from fakekernel import FakeKernel, Reply, attr_out, dirents, entry, make, open_out
from pohmelfs import Client
from pohmelfs import errors as perrors
from pohmelfs.fuse import kernel as k
from pohmelfs.fuse.kernel import Op
from pohmelfs.fuse.nodes import ROOT_ID, NodeTable
from pohmelfs.fuse.operations import Operations, Replier, errno_of
from pohmelfs.server.service import Server

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the server applies request credentials only when run as root"
)

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
XATTR_CREATE, XATTR_REPLACE = 1, 2
FALLOC_FL_KEEP_SIZE = 1
DT_DIR, DT_REG, DT_LNK = 4, 8, 10
USER = (1000, 1000)  # an unprivileged uid/gid
NO_PID = 0  # no /proc/0/status: no supplementary groups


def same_attr(a: SimpleNamespace, path: Path) -> None:
    st = os.lstat(path)
    assert (a.ino, a.mode, a.nlink, a.size) == (st.st_ino, st.st_mode, st.st_nlink, st.st_size)
    assert (a.uid, a.gid, a.blocks) == (st.st_uid, st.st_gid, st.st_blocks)
    assert a.mtime_ns == st.st_mtime_ns


# --- fixtures -------------------------------------------------------------------------------


def _operations(server: Server) -> tuple[Client, Operations]:
    client = make_client([address_of(server)], timeout=10, umask=0)
    return client, Operations(client)


@pytest.fixture
def ops(server: Server) -> Iterator[Operations]:
    client, o = _operations(server)
    yield o
    o.close()
    client.close()


@pytest.fixture
def fk(ops: Operations) -> FakeKernel:
    return FakeKernel(ops)


def put(path: Path, data: bytes = b"") -> Path:
    path.write_bytes(data)
    return path


# --- names and attributes -------------------------------------------------------------------


def test_lookup(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f", b"12345")
    e = fk.lookup(b"f")
    assert e.nodeid not in (0, ROOT_ID)
    assert e.generation == 0
    assert e.entry_valid == fk.ops.opts.entry_timeout and e.attr_valid == fk.ops.opts.attr_timeout
    same_attr(e.attr, export_dir / "f")
    assert fk.lookup(b"f").nodeid == e.nodeid
    node = fk.ops.nodes.get(e.nodeid)
    assert node is not None and node.lookups == 2 and node.path() == b"/f"


def test_lookup_nested(fk: FakeKernel, export_dir: Path) -> None:
    (export_dir / "d" / "e").mkdir(parents=True)
    put(export_dir / "d" / "e" / "g", b"x")
    d = fk.lookup(b"d").nodeid
    e = fk.lookup(b"e", d).nodeid
    g = fk.lookup(b"g", e)
    same_attr(g.attr, export_dir / "d" / "e" / "g")
    assert fk.ops.nodes.get(g.nodeid).path() == b"/d/e/g"


def test_lookup_errors(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    assert fk.fails(Op.LOOKUP, names=(b"missing",)) == "ENOENT"
    f = fk.lookup(b"f").nodeid
    assert fk.fails(Op.LOOKUP, f, names=(b"x",)) == "ENOTDIR"
    assert fk.fails(Op.LOOKUP, 987654, names=(b"f",)) == "ESTALE"
    assert len(fk.ops.nodes) == 2  # failures remember nothing


def test_forget(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    n = fk.lookup(b"f").nodeid
    fk.lookup(b"f")
    fk.lookup(b"f")
    fk.forget(n, 2)
    assert fk.ops.nodes.get(n).lookups == 1
    fk.forget(n, 1)
    assert fk.ops.nodes.get(n) is None
    assert len(fk.ops.nodes) == 1
    assert fk.fails(Op.GETATTR, n, make(k.GetattrIn)) == "ESTALE"
    assert fk.lookup(b"f").nodeid != n  # a new node id once forgotten


def test_forget_of_a_hard_linked_node_forgets_every_name(fk: FakeKernel, export_dir: Path) -> None:
    """``ln a b; stat a b; drop_caches; stat b``: the kernel forgets the node both
    names found; a lookup through either name then makes a new node, whose id the
    kernel can use (not the forgotten one, which would be ESTALE)."""
    put(export_dir / "a", b"linked")
    os.link(export_dir / "a", export_dir / "b")
    n = fk.lookup(b"a").nodeid
    assert fk.lookup(b"b").nodeid == n  # one node for both names
    fk.forget(n, 2)
    assert fk.ops.nodes.get(n) is None
    for name in (b"b", b"a"):
        again = fk.lookup(name).nodeid
        assert again != n
        assert fk.getattr(again).nlink == 2
    assert len(fk.ops.nodes) == 2


def test_forget_root_and_unknown_are_ignored(fk: FakeKernel) -> None:
    fk.forget(ROOT_ID, 1000)
    fk.forget(424242, 1)
    assert fk.getattr(ROOT_ID).ino == fk.ops.nodes.root.ino


def test_batch_forget(fk: FakeKernel, export_dir: Path) -> None:
    for name in ("a", "b", "c"):
        put(export_dir / name)
    a = fk.lookup(b"a").nodeid
    fk.lookup(b"a")
    b = fk.lookup(b"b").nodeid
    c = fk.lookup(b"c").nodeid
    forgets = [(a, 2), (b, 1), (c, 0), (99999, 5)]
    data = b"".join(k.FORGET_ONE.pack(*f) for f in forgets)
    fk.no_reply(Op.BATCH_FORGET, ROOT_ID, make(k.BatchForgetIn, count=len(forgets)), data=data)
    assert fk.ops.nodes.get(a) is None and fk.ops.nodes.get(b) is None
    assert fk.ops.nodes.get(c).lookups == 1
    assert len(fk.ops.nodes) == 2


def test_getattr(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f", b"hello")
    os.utime(export_dir / "f", ns=(1_000_000_001, -2_500_000_000))
    f = fk.lookup(b"f").nodeid
    a = fk.getattr(f)
    same_attr(a, export_dir / "f")
    assert a.mtime_ns == -2_500_000_000 and (a.mtime, a.mtimensec) == ((1 << 64) - 3, 500_000_000)
    assert a.valid == fk.ops.opts.attr_timeout
    root = fk.getattr(ROOT_ID)
    same_attr(root, export_dir)


def test_getattr_with_fh_uses_the_open_file(fk: FakeKernel, export_dir: Path) -> None:
    """GETATTR_FH: fstat of the handle, which works after the name is gone."""
    put(export_dir / "f", b"data")
    f = fk.lookup(b"f").nodeid
    fh = fk.open(f)
    os.unlink(export_dir / "f")
    a = fk.getattr(f, fh=fh)
    assert (a.size, a.nlink) == (4, 0)
    # fstat(2) comes without GETATTR_FH: the node's open handle still answers
    a = fk.getattr(f)
    assert (a.size, a.nlink) == (4, 0)
    # with no open handle left, the (gone) path is all there is: ESTALE makes the
    # kernel look the name up again (and then report ENOENT)
    fk.ok(Op.RELEASE, f, make(k.ReleaseIn, fh=fh))
    assert fk.fails(Op.GETATTR, f, make(k.GetattrIn)) == "ESTALE"


# --- setattr -----------------------------------------------------------------------------------


def setattr(fk: FakeKernel, nodeid: int, **fields: int) -> SimpleNamespace:
    return attr_out(fk.ok(Op.SETATTR, nodeid, make(k.SetattrIn, **fields)))


@pytest.fixture
def victim(fk: FakeKernel, export_dir: Path) -> tuple[int, Path]:
    path = put(export_dir / "v", b"0123456789")
    os.chmod(path, 0o644)
    os.utime(path, ns=(5_000_000_000, 6_000_000_000))
    return fk.lookup(b"v").nodeid, path


def test_setattr_mode(fk: FakeKernel, victim: tuple[int, Path]) -> None:
    n, path = victim
    a = setattr(fk, n, valid=k.FATTR_MODE, mode=stat.S_IFREG | 0o4751)
    assert os.lstat(path).st_mode == stat.S_IFREG | 0o4751 == a.mode


@needs_root
def test_setattr_uid_gid(fk: FakeKernel, victim: tuple[int, Path]) -> None:
    n, path = victim
    a = setattr(fk, n, valid=k.FATTR_UID | k.FATTR_GID, uid=1234, gid=5678)
    assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (1234, 5678) == (a.uid, a.gid)
    setattr(fk, n, valid=k.FATTR_UID, uid=4321, gid=1)  # gid not valid: unchanged
    assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (4321, 5678)
    setattr(fk, n, valid=k.FATTR_GID, uid=1, gid=8765)
    assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (4321, 8765)


def test_setattr_size(fk: FakeKernel, victim: tuple[int, Path]) -> None:
    n, path = victim
    a = setattr(fk, n, valid=k.FATTR_SIZE, size=3)
    assert path.read_bytes() == b"012" and a.size == 3
    a = setattr(fk, n, valid=k.FATTR_SIZE, size=1 << 20)
    assert os.lstat(path).st_size == 1 << 20 == a.size


def test_setattr_size_with_fh_truncates_the_open_file(
    fk: FakeKernel, victim: tuple[int, Path]
) -> None:
    n, path = victim
    fh = fk.open(n)
    a = setattr(fk, n, valid=k.FATTR_SIZE | k.FATTR_FH, size=4, fh=fh)
    assert path.read_bytes() == b"0123" and a.size == 4
    os.unlink(path)  # by handle: the name does not matter
    a = setattr(fk, n, valid=k.FATTR_SIZE | k.FATTR_FH, size=2, fh=fh)
    assert (a.size, a.nlink) == (2, 0)
    assert fk.read(fh, 0, 100) == b"01"


def test_setattr_times(fk: FakeKernel, victim: tuple[int, Path]) -> None:
    n, path = victim
    a = setattr(
        fk,
        n,
        valid=k.FATTR_ATIME | k.FATTR_MTIME,
        atime=1_000_000,
        atimensec=123,
        mtime=2_000_000,
        mtimensec=999_999_999,
    )
    st = os.lstat(path)
    assert st.st_atime_ns == 1_000_000 * 10**9 + 123
    assert st.st_mtime_ns == 2_000_000 * 10**9 + 999_999_999 == a.mtime_ns
    setattr(fk, n, valid=k.FATTR_MTIME, mtime=7, mtimensec=8)  # atime omitted
    st = os.lstat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000 * 10**9 + 123, 7 * 10**9 + 8)
    setattr(fk, n, valid=k.FATTR_ATIME, atime=9, atimensec=10)  # mtime omitted
    st = os.lstat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (9 * 10**9 + 10, 7 * 10**9 + 8)


def test_setattr_negative_time(fk: FakeKernel, victim: tuple[int, Path]) -> None:
    """The kernel sends a time64_t in an unsigned field: -5 s is 2**64 - 5."""
    n, path = victim
    a = setattr(fk, n, valid=k.FATTR_MTIME, mtime=(1 << 64) - 5, mtimensec=250)
    assert os.lstat(path).st_mtime_ns == -5 * 10**9 + 250 == a.mtime_ns


def test_setattr_times_now(fk: FakeKernel, victim: tuple[int, Path]) -> None:
    n, path = victim
    before = time.time_ns() - 10**9
    setattr(fk, n, valid=k.FATTR_ATIME | k.FATTR_ATIME_NOW)
    st = os.lstat(path)
    assert st.st_atime_ns >= before and st.st_mtime_ns == 6_000_000_000
    setattr(fk, n, valid=k.FATTR_MTIME | k.FATTR_MTIME_NOW, mtime=1, mtimensec=1)
    st = os.lstat(path)
    assert st.st_mtime_ns >= before


def test_setattr_ignored_bits_just_return_attributes(
    fk: FakeKernel, victim: tuple[int, Path]
) -> None:
    n, path = victim
    a = setattr(fk, n, valid=k.FATTR_CTIME | k.FATTR_LOCKOWNER, ctime=1, lock_owner=77)
    same_attr(a, path)


def test_setattr_errors(fk: FakeKernel, export_dir: Path) -> None:
    (export_dir / "d").mkdir()
    d = fk.lookup(b"d").nodeid
    assert fk.fails(Op.SETATTR, d, make(k.SetattrIn, valid=k.FATTR_SIZE, size=0)) == "EISDIR"
    put(export_dir / "f")
    f = fk.lookup(b"f").nodeid
    os.unlink(export_dir / "f")
    assert fk.fails(Op.SETATTR, f, make(k.SetattrIn, valid=k.FATTR_MODE, mode=0o600)) == "ENOENT"


# --- readlink, statfs ----------------------------------------------------------------------------


def test_readlink(fk: FakeKernel, export_dir: Path) -> None:
    os.symlink("../some/where else", export_dir / "l")
    put(export_dir / "f")
    assert fk.ok(Op.READLINK, fk.lookup(b"l").nodeid) == b"../some/where else"
    assert fk.fails(Op.READLINK, fk.lookup(b"f").nodeid) == "EINVAL"


def test_statfs(fk: FakeKernel, export_dir: Path) -> None:
    payload = fk.ok(Op.STATFS)
    assert len(payload) == k.STATFS_OUT.size
    blocks, _bfree, _bavail, files, _ffree, bsize, namelen, frsize = k.STATFS_OUT.unpack(payload)[
        :8
    ]
    s = os.statvfs(export_dir)
    assert (blocks, files, bsize, namelen, frsize) == (
        s.f_blocks,
        s.f_files,
        s.f_bsize,
        s.f_namemax,
        s.f_frsize,
    )


# --- creating and removing names -------------------------------------------------------------


def mknod(
    fk: FakeKernel, name: bytes, mode: int, rdev: int = 0, parent: int = ROOT_ID, **kw: Any
) -> Reply:
    return fk.call(Op.MKNOD, parent, make(k.MknodIn, mode=mode, rdev=rdev), names=(name,), **kw)


def test_mknod_fifo_and_socket(fk: FakeKernel, export_dir: Path) -> None:
    r = mknod(fk, b"fifo", stat.S_IFIFO | 0o640)
    assert r.error == 0
    e = entry(r.payload)
    assert stat.S_ISFIFO(os.lstat(export_dir / "fifo").st_mode)
    same_attr(e.attr, export_dir / "fifo")
    assert stat.S_IMODE(e.attr.mode) == 0o640
    assert fk.ops.nodes.get(e.nodeid).path() == b"/fifo"
    r = mknod(fk, b"sock", stat.S_IFSOCK | 0o600)
    assert r.error == 0
    assert stat.S_ISSOCK(os.lstat(export_dir / "sock").st_mode)
    r = mknod(fk, b"reg", stat.S_IFREG | 0o600)
    assert r.error == 0 and stat.S_ISREG(os.lstat(export_dir / "reg").st_mode)


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_mknod_device_is_refused(fk: FakeKernel, export_dir: Path, kind: int) -> None:
    r = mknod(fk, b"dev", kind | 0o600, os.makedev(1, 3))
    assert errno.errorcode[r.error] == "EPERM"
    assert not os.path.lexists(export_dir / "dev")


def test_mknod_exists(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    assert errno.errorcode[mknod(fk, b"f", stat.S_IFIFO | 0o600).error] == "EEXIST"


def test_mkdir(fk: FakeKernel, export_dir: Path) -> None:
    e = entry(fk.ok(Op.MKDIR, ROOT_ID, make(k.MkdirIn, mode=0o751), names=(b"d",)))
    st = os.lstat(export_dir / "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o751
    same_attr(e.attr, export_dir / "d")
    inner = entry(fk.ok(Op.MKDIR, e.nodeid, make(k.MkdirIn, mode=0o700), names=(b"in",)))
    assert (export_dir / "d" / "in").is_dir()
    assert fk.ops.nodes.get(inner.nodeid).path() == b"/d/in"
    assert fk.fails(Op.MKDIR, ROOT_ID, make(k.MkdirIn, mode=0o755), names=(b"d",)) == "EEXIST"
    assert fk.fails(Op.MKDIR, 5555, make(k.MkdirIn, mode=0o755), names=(b"x",)) == "ESTALE"


def test_symlink(fk: FakeKernel, export_dir: Path) -> None:
    e = entry(fk.ok(Op.SYMLINK, names=(b"l", b"target/../x")))
    assert os.readlink(export_dir / "l") == "target/../x"
    assert stat.S_ISLNK(e.attr.mode) and e.attr.size == len("target/../x")
    assert fk.fails(Op.SYMLINK, names=(b"l", b"other")) == "EEXIST"


def test_link_gives_the_original_node(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f", b"x")
    (export_dir / "d").mkdir()
    f = fk.lookup(b"f").nodeid
    d = fk.lookup(b"d").nodeid
    e = entry(fk.ok(Op.LINK, d, make(k.LinkIn, oldnodeid=f), names=(b"g",)))
    assert e.nodeid == f
    assert e.attr.nlink == 2 and os.lstat(export_dir / "d" / "g").st_nlink == 2
    assert fk.ops.nodes.get(f).lookups == 2
    assert fk.lookup(b"g", d).nodeid == f  # looked up by the new name: still the same node


def test_link_then_unlink_the_new_name(fk: FakeKernel, export_dir: Path) -> None:
    """``ln f g; rm g; stat f``: the kernel's node for f must still work."""
    put(export_dir / "f", b"x")
    f = fk.lookup(b"f").nodeid
    assert entry(fk.ok(Op.LINK, ROOT_ID, make(k.LinkIn, oldnodeid=f), names=(b"g",))).nodeid == f
    assert fk.ok(Op.UNLINK, names=(b"g",)) == b""
    a = fk.getattr(f)
    assert (a.nlink, a.size) == (1, 1)
    assert fk.read(fk.open(f), 0, 10) == b"x"


def test_link_errors(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    (export_dir / "d").mkdir()
    f = fk.lookup(b"f").nodeid
    d = fk.lookup(b"d").nodeid
    assert fk.fails(Op.LINK, ROOT_ID, make(k.LinkIn, oldnodeid=f), names=(b"f",)) == "EEXIST"
    assert fk.fails(Op.LINK, ROOT_ID, make(k.LinkIn, oldnodeid=d), names=(b"d2",)) == "EPERM"
    os.unlink(export_dir / "f")
    assert fk.fails(Op.LINK, ROOT_ID, make(k.LinkIn, oldnodeid=f), names=(b"h",)) == "ENOENT"


def test_unlink(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    f = fk.lookup(b"f").nodeid
    assert fk.ok(Op.UNLINK, names=(b"f",)) == b""
    assert not os.path.lexists(export_dir / "f")
    assert fk.ops.nodes.get(f).linked is False  # still known: the kernel holds a lookup
    fk.forget(f, 1)
    assert len(fk.ops.nodes) == 1
    assert fk.fails(Op.UNLINK, names=(b"f",)) == "ENOENT"
    (export_dir / "d").mkdir()
    assert fk.fails(Op.UNLINK, names=(b"d",)) == "EISDIR"


def test_rmdir(fk: FakeKernel, export_dir: Path) -> None:
    (export_dir / "d").mkdir()
    (export_dir / "full").mkdir()
    put(export_dir / "full" / "x")
    put(export_dir / "f")
    d = fk.lookup(b"d").nodeid
    assert fk.ok(Op.RMDIR, names=(b"d",)) == b""
    assert not (export_dir / "d").exists()
    assert fk.ops.nodes.get(d).linked is False
    assert fk.fails(Op.RMDIR, names=(b"d",)) == "ENOENT"
    assert fk.fails(Op.RMDIR, names=(b"full",)) == "ENOTEMPTY"
    assert fk.fails(Op.RMDIR, names=(b"f",)) == "ENOTDIR"


# --- rename ----------------------------------------------------------------------------------


def rename(
    fk: FakeKernel,
    old: bytes,
    new: bytes,
    src: int = ROOT_ID,
    dst: int = ROOT_ID,
    flags: int | None = None,
) -> Reply:
    if flags is None:
        return fk.call(Op.RENAME, src, make(k.RenameIn, newdir=dst), names=(old, new))
    return fk.call(Op.RENAME2, src, make(k.Rename2In, newdir=dst, flags=flags), names=(old, new))


def test_rename_moves_the_node(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "a", b"A")
    (export_dir / "d").mkdir()
    a = fk.lookup(b"a").nodeid
    d = fk.lookup(b"d").nodeid
    assert rename(fk, b"a", b"b").error == 0
    assert (export_dir / "b").read_bytes() == b"A" and not (export_dir / "a").exists()
    assert fk.ops.nodes.get(a).path() == b"/b"
    assert rename(fk, b"b", b"c", ROOT_ID, d).error == 0
    assert (export_dir / "d" / "c").read_bytes() == b"A"
    assert fk.ops.nodes.get(a).path() == b"/d/c"
    assert fk.getattr(a).size == 1
    assert fk.lookup(b"c", d).nodeid == a


def test_rename_directory_moves_its_subtree(fk: FakeKernel, export_dir: Path) -> None:
    (export_dir / "d" / "e").mkdir(parents=True)
    put(export_dir / "d" / "e" / "f", b"deep")
    d = fk.lookup(b"d").nodeid
    e = fk.lookup(b"e", d).nodeid
    f = fk.lookup(b"f", e).nodeid
    assert rename(fk, b"d", b"renamed").error == 0
    assert fk.ops.nodes.get(f).path() == b"/renamed/e/f"
    assert fk.read(fk.open(f), 0, 100) == b"deep"


def test_rename_over_an_existing_file(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "a", b"A")
    put(export_dir / "b", b"B")
    a = fk.lookup(b"a").nodeid
    b = fk.lookup(b"b").nodeid
    assert rename(fk, b"a", b"b").error == 0
    assert (export_dir / "b").read_bytes() == b"A"
    assert fk.ops.nodes.get(b).linked is False
    assert fk.ops.nodes.get(a).path() == b"/b"
    assert fk.lookup(b"b").nodeid == a


def test_rename_errors(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    (export_dir / "empty").mkdir()
    (export_dir / "full").mkdir()
    put(export_dir / "full" / "x")
    err = {
        "missing": rename(fk, b"nothing", b"x").error,
        "file over dir": rename(fk, b"f", b"empty").error,
        "dir over file": rename(fk, b"empty", b"f").error,
        "dir over non-empty dir": rename(fk, b"empty", b"full").error,
    }
    assert {w: errno.errorcode[e] for w, e in err.items()} == {
        "missing": "ENOENT",
        "file over dir": "EISDIR",
        "dir over file": "ENOTDIR",
        "dir over non-empty dir": "ENOTEMPTY",
    }


def test_rename2_noreplace(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "a", b"A")
    put(export_dir / "b", b"B")
    a = fk.lookup(b"a").nodeid
    assert errno.errorcode[rename(fk, b"a", b"b", flags=RENAME_NOREPLACE).error] == "EEXIST"
    assert (export_dir / "b").read_bytes() == b"B"
    assert fk.ops.nodes.get(a).path() == b"/a"
    assert rename(fk, b"a", b"c", flags=RENAME_NOREPLACE).error == 0
    assert (export_dir / "c").read_bytes() == b"A"
    assert fk.ops.nodes.get(a).path() == b"/c"


def test_rename2_exchange(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "a", b"A")
    (export_dir / "d").mkdir()
    put(export_dir / "d" / "b", b"BB")
    a = fk.lookup(b"a").nodeid
    d = fk.lookup(b"d").nodeid
    b = fk.lookup(b"b", d).nodeid
    assert rename(fk, b"a", b"b", ROOT_ID, d, flags=RENAME_EXCHANGE).error == 0
    assert (export_dir / "a").read_bytes() == b"BB"
    assert (export_dir / "d" / "b").read_bytes() == b"A"
    assert fk.ops.nodes.get(a).path() == b"/d/b" and fk.ops.nodes.get(b).path() == b"/a"
    assert fk.ops.nodes.get(a).linked and fk.ops.nodes.get(b).linked
    assert fk.getattr(a).size == 1 and fk.getattr(b).size == 2
    assert fk.lookup(b"a").nodeid == b
    assert errno.errorcode[rename(fk, b"a", b"nothing", flags=RENAME_EXCHANGE).error] == "ENOENT"


def test_rename2_whiteout_is_refused(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "a")
    a = fk.lookup(b"a").nodeid
    assert errno.errorcode[rename(fk, b"a", b"b", flags=RENAME_WHITEOUT).error] == "EINVAL"
    assert (export_dir / "a").exists() and not (export_dir / "b").exists()
    assert fk.ops.nodes.get(a).path() == b"/a"


# --- files -------------------------------------------------------------------------------------


def test_open_read_write_release(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f", b"0123456789")
    f = fk.lookup(b"f").nodeid
    fh = fk.open(f, os.O_RDWR)
    assert fk.read(fh, 0, 4) == b"0123"
    assert fk.read(fh, 8, 100) == b"89"  # short read at the end
    assert fk.read(fh, 10, 100) == b""  # at EOF
    assert fk.read(fh, 1 << 40, 100) == b""  # far past EOF
    assert fk.write(fh, 5, b"abcdefgh") == 8
    assert (export_dir / "f").read_bytes() == b"01234abcdefgh"
    assert fk.read(fh, 3, 6) == b"34abcd"
    assert fk.ok(Op.FLUSH, f, make(k.FlushIn, fh=fh, lock_owner=7)) == b""
    fk.release(fh)
    assert fh not in fk.ops.files
    assert fk.fails(Op.READ, f, make(k.ReadIn, fh=fh, size=10)) == "EBADF"
    assert fk.fails(Op.WRITE, f, make(k.WriteIn, fh=fh, size=1), data=b"x") == "EBADF"
    fk.release(fh)  # a second release is harmless


def test_read_large_and_many_in_flight(fk: FakeKernel, export_dir: Path) -> None:
    data = os.urandom(3 << 20)
    put(export_dir / "big", data)
    fh = fk.open(fk.lookup(b"big").nodeid, os.O_RDONLY)
    pending = [
        (off, fk.send(Op.READ, ROOT_ID, make(k.ReadIn, fh=fh, offset=off, size=1 << 20)))
        for off in range(0, 3 << 20, 1 << 20)
    ]
    for off, (_unique, q) in pending:
        buf = q.get(timeout=10)
        assert buf[16:] == data[off : off + (1 << 20)]


def test_open_flags(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f", b"0123456789")
    f = fk.lookup(b"f").nodeid
    ro = fk.open(f, os.O_RDONLY)
    assert fk.fails(Op.WRITE, f, make(k.WriteIn, fh=ro, size=1), data=b"x") == "EBADF"
    wo = fk.open(f, os.O_WRONLY)
    assert fk.fails(Op.READ, f, make(k.ReadIn, fh=wo, size=10)) == "EBADF"
    fk.open(f, os.O_WRONLY | os.O_TRUNC)
    assert (export_dir / "f").read_bytes() == b""
    app = fk.open(f, os.O_WRONLY | os.O_APPEND)
    fk.write(app, 0, b"one")
    fk.write(app, 0, b"two")
    assert (export_dir / "f").read_bytes() == b"onetwo"


def test_open_errors(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    (export_dir / "d").mkdir()
    f = fk.lookup(b"f").nodeid
    d = fk.lookup(b"d").nodeid
    assert fk.fails(Op.OPEN, d, make(k.OpenIn, flags=os.O_RDWR)) == "EISDIR"
    os.unlink(export_dir / "f")  # by another client: the kernel's name is stale
    assert fk.fails(Op.OPEN, f, make(k.OpenIn, flags=os.O_RDONLY)) == "ESTALE"
    assert fk.fails(Op.OPEN, 31337, make(k.OpenIn, flags=os.O_RDONLY)) == "ESTALE"


def test_create(fk: FakeKernel, export_dir: Path) -> None:
    args = make(k.CreateIn, flags=os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=stat.S_IFREG | 0o640)
    payload = fk.ok(Op.CREATE, ROOT_ID, args, names=(b"new",))
    head = k.ENTRY_OUT_HEAD.size + k.ATTR.size
    assert len(payload) == head + k.OPEN_OUT.size
    e = entry(payload[:head])
    fh = open_out(payload[head:])
    st = os.lstat(export_dir / "new")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    same_attr(e.attr, export_dir / "new")
    assert fk.ops.nodes.get(e.nodeid).path() == b"/new"
    assert fk.write(fh, 0, b"created") == 7
    assert fk.read(fh, 0, 100) == b"created"
    assert fk.fails(Op.CREATE, ROOT_ID, args, names=(b"new",)) == "EEXIST"
    # without O_EXCL an existing file is opened (and O_TRUNC truncates it)
    args = make(k.CreateIn, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o600)
    payload = fk.ok(Op.CREATE, ROOT_ID, args, names=(b"new",))
    assert entry(payload[:head]).nodeid == e.nodeid
    assert (export_dir / "new").read_bytes() == b""


def test_fsync(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    f = fk.lookup(b"f").nodeid
    fh = fk.open(f)
    fk.write(fh, 0, b"durable")
    assert fk.ok(Op.FSYNC, f, make(k.FsyncIn, fh=fh)) == b""
    assert fk.ok(Op.FSYNC, f, make(k.FsyncIn, fh=fh, fsync_flags=k.FSYNC_FDATASYNC)) == b""
    assert fk.fails(Op.FSYNC, f, make(k.FsyncIn, fh=fh + 100)) == "EBADF"


def test_fallocate(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    f = fk.lookup(b"f").nodeid
    fh = fk.open(f)
    assert fk.ok(Op.FALLOCATE, f, make(k.FallocateIn, fh=fh, offset=0, length=8192)) == b""
    assert os.lstat(export_dir / "f").st_size == 8192
    args = make(k.FallocateIn, fh=fh, offset=8192, length=1 << 20, mode=FALLOC_FL_KEEP_SIZE)
    assert fk.ok(Op.FALLOCATE, f, args) == b""
    st = os.lstat(export_dir / "f")
    assert st.st_size == 8192 and st.st_blocks * 512 >= (1 << 20) + 8192
    assert fk.fails(Op.FALLOCATE, f, make(k.FallocateIn, fh=fh + 100, length=1)) == "EBADF"


def test_write_kill_suidgid(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    os.chmod(export_dir / "f", 0o6755)
    f = fk.lookup(b"f").nodeid
    fh = fk.open(f)
    fk.write(fh, 0, b"plain")  # no flag: bits stay
    assert stat.S_IMODE(os.lstat(export_dir / "f").st_mode) == 0o6755
    fk.write(fh, 0, b"kill", write_flags=k.WRITE_KILL_SUIDGID)
    assert stat.S_IMODE(os.lstat(export_dir / "f").st_mode) == 0o755
    assert (export_dir / "f").read_bytes() == b"killn"
    os.chmod(export_dir / "f", 0o2745)  # setgid without group exec: not a set-id program
    fk.write(fh, 0, b"k", write_flags=k.WRITE_KILL_SUIDGID)
    assert stat.S_IMODE(os.lstat(export_dir / "f").st_mode) == 0o2745


def test_write_kill_suidgid_after_rename(fk: FakeKernel, export_dir: Path) -> None:
    """The set-id bits are cleared on the file written, wherever its name went."""
    put(export_dir / "f")
    os.chmod(export_dir / "f", 0o4755)
    f = fk.lookup(b"f").nodeid
    fh = fk.open(f)
    assert rename(fk, b"f", b"g").error == 0
    assert fk.write(fh, 0, b"data", write_flags=k.WRITE_KILL_SUIDGID) == 4
    assert stat.S_IMODE(os.lstat(export_dir / "g").st_mode) == 0o755


# --- directories -------------------------------------------------------------------------------


def opendir(fk: FakeKernel, nodeid: int, **kw: Any) -> int:
    return open_out(fk.ok(Op.OPENDIR, nodeid, make(k.OpenIn, flags=os.O_RDONLY), **kw))


def readdir_all(
    fk: FakeKernel, nodeid: int, fh: int, plus: bool, size: int, **kw: Any
) -> list[SimpleNamespace]:
    """READDIR(PLUS) until an empty reply, each call resuming at the last entry's offset."""
    opcode = Op.READDIRPLUS if plus else Op.READDIR
    out: list[SimpleNamespace] = []
    offset = 0
    for _ in range(1000):
        payload = fk.ok(opcode, nodeid, make(k.ReadIn, fh=fh, offset=offset, size=size), **kw)
        assert len(payload) <= size
        batch = dirents(payload, plus)
        if not batch:
            return out
        out.extend(batch)
        offset = batch[-1].off
    raise AssertionError("READDIR never ended")


@pytest.fixture
def listing(export_dir: Path) -> Path:
    d = export_dir / "dir"
    d.mkdir()
    for i in range(23):
        put(d / ("f" * (1 + i % 9) + str(i)), b"x" * i)
    (d / "sub").mkdir()
    os.symlink("f0", d / "link")
    return d


def check_listing(entries: list[SimpleNamespace], d: Path) -> None:
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), "an entry came twice"
    assert set(names) == {b".", b".."} | {os.fsencode(n) for n in os.listdir(d)}
    assert [e.off for e in entries] == list(range(1, len(entries) + 1))
    for e in entries:
        if e.name in (b".", b".."):
            assert e.type == DT_DIR
            continue
        st = os.lstat(d / os.fsdecode(e.name))
        assert e.ino == st.st_ino
        assert (
            e.type
            == {stat.S_IFREG: DT_REG, stat.S_IFDIR: DT_DIR, stat.S_IFLNK: DT_LNK}[
                stat.S_IFMT(st.st_mode)
            ]
        )
    dot = next(e for e in entries if e.name == b".")
    assert dot.ino == os.lstat(d).st_ino


@pytest.mark.parametrize("size", [80, 200, 4096])
def test_readdir(fk: FakeKernel, listing: Path, size: int) -> None:
    d = fk.lookup(b"dir").nodeid
    fh = opendir(fk, d)
    entries = readdir_all(fk, d, fh, plus=False, size=size)
    check_listing(entries, listing)
    assert len(fk.ops.nodes) == 2  # READDIR looks nothing up
    # reading again from an offset in the middle resumes there
    payload = fk.ok(Op.READDIR, d, make(k.ReadIn, fh=fh, offset=10, size=4096))
    assert [e.name for e in dirents(payload, False)] == [e.name for e in entries[10:]]
    assert fk.ok(Op.RELEASEDIR, d, make(k.ReleaseIn, fh=fh)) == b""
    assert fk.fails(Op.READDIR, d, make(k.ReadIn, fh=fh, size=4096)) == "EBADF"


def test_readdir_root_and_empty(fk: FakeKernel, export_dir: Path) -> None:
    fh = opendir(fk, ROOT_ID)
    entries = readdir_all(fk, ROOT_ID, fh, plus=False, size=4096)
    assert [e.name for e in entries] == [b".", b".."]
    assert entries[0].ino == os.lstat(export_dir).st_ino


def test_readdir_is_a_snapshot_taken_at_opendir(fk: FakeKernel, listing: Path) -> None:
    d = fk.lookup(b"dir").nodeid
    fh = opendir(fk, d)
    put(listing / "later")
    names = {e.name for e in readdir_all(fk, d, fh, plus=False, size=4096)}
    assert b"later" not in names and b"sub" in names


@pytest.mark.parametrize("size", [300, 4096])
def test_readdirplus(fk: FakeKernel, listing: Path, size: int) -> None:
    d = fk.lookup(b"dir").nodeid
    fh = opendir(fk, d)
    entries = readdir_all(fk, d, fh, plus=True, size=size)
    check_listing(entries, listing)
    for e in entries:
        if e.name in (b".", b".."):
            assert e.entry.nodeid == 0  # the kernel does not take these as lookups
            continue
        assert e.entry.nodeid not in (0, ROOT_ID, d)
        same_attr(e.entry.attr, listing / os.fsdecode(e.name))
        node = fk.ops.nodes.get(e.entry.nodeid)
        assert node.lookups == 1 and node.path() == b"/dir/" + e.name
    assert len(fk.ops.nodes) == 2 + len(entries) - 2
    # the kernel forgets each entry's count: everything is freed
    for e in entries:
        if e.entry.nodeid:
            fk.forget(e.entry.nodeid, 1)
    assert len(fk.ops.nodes) == 2


def test_readdirplus_counts_add_up_with_lookups(fk: FakeKernel, listing: Path) -> None:
    d = fk.lookup(b"dir").nodeid
    fh = opendir(fk, d)
    first = readdir_all(fk, d, fh, plus=True, size=4096)
    n = next(e.entry.nodeid for e in first if e.name == b"sub")
    assert fk.lookup(b"sub", d).nodeid == n
    again = readdir_all(fk, d, fh, plus=True, size=4096)  # the kernel re-reads from 0
    assert next(e.entry.nodeid for e in again if e.name == b"sub") == n
    assert fk.ops.nodes.get(n).lookups == 3
    fk.forget(n, 2)
    assert fk.ops.nodes.get(n) is not None
    fk.forget(n, 1)
    assert fk.ops.nodes.get(n) is None


def test_readdirplus_entry_that_does_not_fit_is_not_counted(fk: FakeKernel, listing: Path) -> None:
    d = fk.lookup(b"dir").nodeid
    fh = opendir(fk, d)
    one = k.dirent_size(b"..", True) * 2 + k.dirent_size(b"x" * 20, True)
    payload = fk.ok(Op.READDIRPLUS, d, make(k.ReadIn, fh=fh, offset=0, size=one))
    got = dirents(payload, True)
    assert 3 <= len(got) < 2 + 23 + 2  # ".", ".." and at least one file, not all
    counted = sum(n.lookups for n in fk.ops.nodes._by_id.values()) - 2  # minus root and dir
    assert counted == sum(1 for e in got if e.entry.nodeid) == len(got) - 2


def test_opendir_errors(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    assert fk.fails(Op.OPENDIR, fk.lookup(b"f").nodeid, make(k.OpenIn)) == "ENOTDIR"
    assert fk.fails(Op.OPENDIR, 4242, make(k.OpenIn)) == "ESTALE"
    assert fk.ok(Op.FSYNCDIR, ROOT_ID, make(k.FsyncIn, fh=opendir(fk, ROOT_ID))) == b""


# --- extended attributes -----------------------------------------------------------------------


def setxattr(fk: FakeKernel, n: int, name: bytes, value: bytes, flags: int = 0) -> Reply:
    args = make(k.SetxattrIn, size=len(value), flags=flags)
    return fk.call(Op.SETXATTR, n, args, names=(name,), data=value)


def test_xattrs(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    n = fk.lookup(b"f").nodeid
    value = b"val\0ue with a NUL"
    assert setxattr(fk, n, b"user.one", value).error == 0
    assert os.getxattr(export_dir / "f", "user.one") == value
    # size 0 asks for the size
    payload = fk.ok(Op.GETXATTR, n, make(k.GetxattrIn, size=0), names=(b"user.one",))
    assert k.GETXATTR_OUT.unpack(payload) == (len(value), 0)
    r = fk.call(Op.GETXATTR, n, make(k.GetxattrIn, size=len(value) - 1), names=(b"user.one",))
    assert errno.errorcode[r.error] == "ERANGE"
    for size in (len(value), 65536):
        assert fk.ok(Op.GETXATTR, n, make(k.GetxattrIn, size=size), names=(b"user.one",)) == value
    assert setxattr(fk, n, b"user.two", b"").error == 0
    listed = b"user.one\0user.two\0"
    payload = fk.ok(Op.LISTXATTR, n, make(k.GetxattrIn, size=0))
    assert k.GETXATTR_OUT.unpack(payload) == (len(listed), 0)
    assert errno.errorcode[fk.call(Op.LISTXATTR, n, make(k.GetxattrIn, size=5)).error] == "ERANGE"
    names = fk.ok(Op.LISTXATTR, n, make(k.GetxattrIn, size=4096))
    assert sorted(names.split(b"\0")[:-1]) == [b"user.one", b"user.two"] and names[-1:] == b"\0"
    assert fk.ok(Op.REMOVEXATTR, n, names=(b"user.one",)) == b""
    assert os.listxattr(export_dir / "f") == ["user.two"]
    r = fk.call(Op.GETXATTR, n, make(k.GetxattrIn, size=0), names=(b"user.one",))
    assert errno.errorcode[r.error] == "ENODATA"
    assert errno.errorcode[fk.call(Op.REMOVEXATTR, n, names=(b"user.one",)).error] == "ENODATA"


def test_setxattr_flags(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    n = fk.lookup(b"f").nodeid
    assert errno.errorcode[setxattr(fk, n, b"user.x", b"1", XATTR_REPLACE).error] == "ENODATA"
    assert setxattr(fk, n, b"user.x", b"1", XATTR_CREATE).error == 0
    assert errno.errorcode[setxattr(fk, n, b"user.x", b"2", XATTR_CREATE).error] == "EEXIST"
    assert setxattr(fk, n, b"user.x", b"3", XATTR_REPLACE).error == 0
    assert os.getxattr(export_dir / "f", "user.x") == b"3"


def test_setxattr_value_is_cut_to_its_size(fk: FakeKernel, export_dir: Path) -> None:
    put(export_dir / "f")
    n = fk.lookup(b"f").nodeid
    args = make(k.SetxattrIn, size=3, flags=0)
    fk.ok(Op.SETXATTR, n, args, names=(b"user.cut",), data=b"abcdef")
    assert os.getxattr(export_dir / "f", "user.cut") == b"abc"


def test_requests_parsed_from_bytes(fk: FakeKernel, export_dir: Path) -> None:
    """The reader thread's path: parse_request on a /dev/fuse image, then dispatch."""
    put(export_dir / "f", b"old")
    replies: list[bytes] = []

    def run(opcode: int, nodeid: int, body: bytes, unique: int) -> tuple[int, bytes]:
        head = k.IN_HEADER.pack(k.IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0,
                                os.getpid(), 0, 0)  # fmt: skip
        req = k.parse_request(memoryview(head + body))
        fk.ops.dispatch(req, Replier(req.unique, lambda p: replies.append(b"".join(p))))
        length, error, got = k.OUT_HEADER.unpack_from(replies[-1])
        assert (length, got) == (len(replies[-1]), unique)
        return -error, replies[-1][k.OUT_HEADER.size :]

    error, payload = run(Op.LOOKUP, ROOT_ID, b"f\0", 10)
    assert error == 0
    f = entry(payload).nodeid
    error, payload = run(Op.OPEN, f, k.OpenIn[0].pack(os.O_RDWR, 0), 12)
    fh = open_out(payload)
    body = k.WriteIn[0].pack(fh, 1, 5, 0, 0, 0, 0) + b"NEWER"
    error, payload = run(Op.WRITE, f, body, 14)
    assert (error, k.WRITE_OUT.unpack(payload)[0]) == (0, 5)
    assert run(Op.FLUSH, f, k.FlushIn[0].pack(fh, 0, 0, 0), 15) == (0, b"")  # write-behind
    assert (export_dir / "f").read_bytes() == b"oNEWER"
    error, payload = run(Op.LOOKUP, ROOT_ID, b"nothing\0", 16)
    assert (error, payload) == (errno.ENOENT, b"")


# --- what is not implemented, and requests without replies ----------------------------------------


@pytest.mark.parametrize(
    "opcode",
    [
        Op.BMAP,
        Op.IOCTL,
        Op.POLL,
        Op.LSEEK,
        Op.COPY_FILE_RANGE,
        Op.TMPFILE,
        4095,
        123456,
    ],
)
def test_unknown_opcodes_are_enosys(fk: FakeKernel, opcode: int) -> None:
    assert fk.fails(opcode) == "ENOSYS"


def test_interrupt_is_not_answered(fk: FakeKernel) -> None:
    fk.no_reply(Op.INTERRUPT, ROOT_ID, make(k.InterruptIn, unique=1234))


# --- read-only exports and credentials ------------------------------------------------------


@pytest.fixture
def ro_kernel(tmp_path: Path) -> Iterator[tuple[FakeKernel, Path]]:
    root = tmp_path / "ro"
    root.mkdir()
    put(root / "f", b"readable")
    (root / "d").mkdir()
    os.setxattr(root / "f", "user.x", b"1")
    srv = start_server(root, read_only=True)
    client, o = _operations(srv)
    yield FakeKernel(o), root
    o.close()
    client.close()
    srv.stop()
    srv.export.close()


def test_read_only_export(ro_kernel: tuple[FakeKernel, Path]) -> None:
    fk, root = ro_kernel
    f = fk.lookup(b"f").nodeid
    d = fk.lookup(b"d").nodeid
    assert fk.read(fk.open(f, os.O_RDONLY), 0, 100) == b"readable"
    attempts = {
        "mkdir": fk.call(Op.MKDIR, ROOT_ID, make(k.MkdirIn, mode=0o755), names=(b"x",)),
        "mknod": mknod(fk, b"x", stat.S_IFIFO | 0o644),
        "symlink": fk.call(Op.SYMLINK, names=(b"x", b"f")),
        "link": fk.call(Op.LINK, ROOT_ID, make(k.LinkIn, oldnodeid=f), names=(b"x",)),
        "create": fk.call(
            Op.CREATE,
            ROOT_ID,
            make(k.CreateIn, flags=os.O_RDWR | os.O_CREAT, mode=0o644),
            names=(b"x",),
        ),
        "open for writing": fk.call(Op.OPEN, f, make(k.OpenIn, flags=os.O_WRONLY)),
        "open with O_TRUNC": fk.call(Op.OPEN, f, make(k.OpenIn, flags=os.O_RDONLY | os.O_TRUNC)),
        "unlink": fk.call(Op.UNLINK, names=(b"f",)),
        "rmdir": fk.call(Op.RMDIR, names=(b"d",)),
        "rename": rename(fk, b"f", b"g"),
        "chmod": fk.call(Op.SETATTR, f, make(k.SetattrIn, valid=k.FATTR_MODE, mode=0o600)),
        "chown": fk.call(Op.SETATTR, f, make(k.SetattrIn, valid=k.FATTR_UID, uid=5)),
        "truncate": fk.call(Op.SETATTR, f, make(k.SetattrIn, valid=k.FATTR_SIZE, size=1)),
        "utimes": fk.call(Op.SETATTR, f, make(k.SetattrIn, valid=k.FATTR_MTIME_NOW)),
        "setxattr": setxattr(fk, f, b"user.y", b"2"),
        "removexattr": fk.call(Op.REMOVEXATTR, f, names=(b"user.x",)),
    }
    assert {what: errno.errorcode[r.error] for what, r in attempts.items()} == dict.fromkeys(
        attempts, "EROFS"
    )
    assert (root / "f").read_bytes() == b"readable" and (root / "d").is_dir()
    assert not os.path.lexists(root / "x") and not os.path.lexists(root / "g")
    assert os.getxattr(root / "f", "user.x") == b"1"
    listed = readdir_all(fk, ROOT_ID, opendir(fk, ROOT_ID), plus=True, size=4096)
    assert {e.name for e in listed} == {b".", b"..", b"f", b"d"}
    assert fk.getattr(d).ino == os.lstat(root / "d").st_ino


@needs_root
def test_credentials_apply(fk: FakeKernel, export_dir: Path) -> None:
    """Requests act as the header's uid/gid: a 0700 root-owned directory is closed."""
    uid, gid = USER
    as_user = {"uid": uid, "gid": gid, "pid": NO_PID}
    put(export_dir / "f")
    # the export root is 0777: the user may work in it
    e = entry(fk.ok(Op.MKDIR, ROOT_ID, make(k.MkdirIn, mode=0o755), names=(b"mine",), **as_user))
    assert (os.lstat(export_dir / "mine").st_uid, os.lstat(export_dir / "mine").st_gid) == USER
    assert e.attr.uid == uid
    fk.lookup(b"f", **as_user)
    os.chmod(export_dir, 0o700)
    assert fk.fails(Op.LOOKUP, names=(b"f",), **as_user) == "EACCES"
    assert fk.fails(Op.OPENDIR, ROOT_ID, make(k.OpenIn), **as_user) == "EACCES"
    assert (
        fk.fails(Op.MKDIR, ROOT_ID, make(k.MkdirIn, mode=0o755), names=(b"x",), **as_user)
        == "EACCES"
    )
    create = make(k.CreateIn, flags=os.O_RDWR | os.O_CREAT, mode=0o644)
    assert fk.fails(Op.CREATE, ROOT_ID, create, names=(b"x",), **as_user) == "EACCES"
    assert fk.fails(Op.UNLINK, names=(b"f",), **as_user) == "EACCES"
    assert fk.lookup(b"f").nodeid  # root still may


@needs_root
def test_credentials_on_files(fk: FakeKernel, export_dir: Path) -> None:
    uid, gid = USER
    as_user = {"uid": uid, "gid": gid, "pid": NO_PID}
    put(export_dir / "secret", b"s")
    os.chmod(export_dir / "secret", 0o600)
    n = fk.lookup(b"secret", **as_user).nodeid  # lookup needs only the directory
    assert fk.fails(Op.OPEN, n, make(k.OpenIn, flags=os.O_RDONLY), **as_user) == "EACCES"
    assert (
        fk.fails(Op.SETATTR, n, make(k.SetattrIn, valid=k.FATTR_MODE, mode=0o666), **as_user)
        == "EPERM"
    )
    os.chown(export_dir / "secret", uid, gid)
    fh = fk.open(n, os.O_RDONLY, **as_user)
    assert fk.read(fh, 0, 10) == b"s"


# --- errno_of -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, code",
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), errno.EIO),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), errno.EIO),
        (BrokenPipeError(errno.EPIPE, "pipe"), errno.EIO),
        (perrors.connection_error("h:1", "gone"), errno.EIO),
        (perrors.unreachable_error("h:1", "down"), errno.EIO),
        (TimeoutError(errno.ETIMEDOUT, "slow"), errno.ETIMEDOUT),
        (perrors.timeout_error("h:1", 5.0), errno.ETIMEDOUT),
        (FileNotFoundError(errno.ENOENT, "x"), errno.ENOENT),
        (OSError(errno.ENOSPC, "full"), errno.ENOSPC),
        (perrors.remote_error(errno.EXDEV, "h:1"), errno.EXDEV),
        (OSError("no errno"), errno.EIO),
        (ValueError("I/O operation on closed file"), errno.EIO),
        (KeyError("x"), errno.EIO),
        (AssertionError(), errno.EIO),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_errno_of(exc: BaseException, code: int) -> None:
    assert errno_of(exc) == code


def test_handler_exceptions_become_errors(fk: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(req: k.Request, reply: Replier) -> None:
        raise RuntimeError("bug")

    def gone(req: k.Request, reply: Replier) -> None:
        raise perrors.connection_error("h:1", "lost")

    monkeypatch.setitem(fk.ops.handlers, Op.STATFS, boom)
    assert fk.fails(Op.STATFS) == "EIO"
    monkeypatch.setitem(fk.ops.handlers, Op.STATFS, gone)
    assert fk.fails(Op.STATFS) == "EIO"


# --- NodeTable ------------------------------------------------------------------------------------


def test_nodes_remember_and_forget() -> None:
    t = NodeTable(root_ino=2)
    assert len(t) == 1 and t.get(ROOT_ID) is t.root and t.root.path() == b"/"
    a = t.remember(t.root, b"a", 100, 1)
    assert t.remember(t.root, b"a", 100, 1) is a
    assert t.remember(t.root, b"a", 100, 1) is a
    assert a.lookups == 3 and a.nodeid != ROOT_ID and len(t) == 2
    b = t.remember(a, b"b", 101, 1)
    assert b.nodeid != a.nodeid and b.path() == b"/a/b"
    t.forget(a.nodeid, 2)
    assert t.get(a.nodeid) is a
    t.forget(a.nodeid, 1)
    assert t.get(a.nodeid) is None and len(t) == 2
    assert b.path() == b"/a/b"  # a child keeps its parent's path alive
    t.forget(b.nodeid, 1)
    assert len(t) == 1
    t.forget(ROOT_ID, 5)
    t.forget(12345, 1)
    assert t.get(ROOT_ID) is t.root and len(t) == 1
    a2 = t.remember(t.root, b"a", 100, 1)
    assert a2 is not a and a2.lookups == 1


def test_nodes_same_name_new_object() -> None:
    t = NodeTable()
    old = t.remember(t.root, b"f", 100, 1)
    new = t.remember(t.root, b"f", 200, 1)  # replaced behind our back
    assert new is not old and new.lookups == 1
    t.forget(old.nodeid, 1)
    assert t.remember(t.root, b"f", 200, 1) is new


def test_nodes_million_cycles_leave_nothing() -> None:
    t = NodeTable(root_ino=2)
    d = t.remember(t.root, b"d", 3, 2)
    start = (len(t), len(t._by_name), len(t._by_ino))
    root, remember, forget = t.root, t.remember, t.forget
    for i in range(1_000_000):
        n = remember(d if i & 1 else root, b"n%d" % (i % 5000), 10 + i % 7000, 1 + (i & 2))
        forget(n.nodeid, 1)
    assert (len(t), len(t._by_name), len(t._by_ino)) == start
    assert d.lookups == 1 and t.get(d.nodeid) is d


def test_nodes_hard_links_share_a_node() -> None:
    t = NodeTable()
    d = t.remember(t.root, b"d", 5, 2)
    a = t.remember(t.root, b"a", 100, 2)
    b = t.remember(d, b"b", 100, 2)
    assert b is a and a.lookups == 2
    single = t.remember(t.root, b"c", 100, 1)  # nlink 1: another object by that ino
    assert single is not a


def test_nodes_renamed_moves_subtree() -> None:
    t = NodeTable()
    d = t.remember(t.root, b"d", 10, 2)
    e = t.remember(d, b"e", 11, 2)
    f = t.remember(e, b"f", 12, 1)
    other = t.remember(t.root, b"other", 13, 2)
    t.renamed(t.root, b"d", other, b"moved")
    assert d.path() == b"/other/moved"
    assert e.path() == b"/other/moved/e" and f.path() == b"/other/moved/e/f"
    assert t.remember(other, b"moved", 10, 2) is d
    assert t.remember(d, b"e", 11, 2) is e
    assert e.linked and f.linked and d.linked
    fresh = t.remember(t.root, b"d", 20, 2)  # a new object under the old name
    assert fresh is not d and d.path() == b"/other/moved"


def test_nodes_renamed_over_existing() -> None:
    t = NodeTable()
    a = t.remember(t.root, b"a", 10, 1)
    b = t.remember(t.root, b"b", 11, 1)
    t.renamed(t.root, b"a", t.root, b"b")
    assert a.path() == b"/b" and a.linked
    assert b.linked is False
    assert t.remember(t.root, b"b", 10, 1) is a
    assert t.remember(t.root, b"a", 12, 1) not in (a, b)


def test_nodes_exchange() -> None:
    t = NodeTable()
    d = t.remember(t.root, b"d", 9, 2)
    a = t.remember(t.root, b"a", 10, 1)
    b = t.remember(d, b"b", 11, 1)
    t.renamed(t.root, b"a", d, b"b", exchange=True)
    assert a.path() == b"/d/b" and b.path() == b"/a"
    assert a.linked and b.linked
    assert t.remember(d, b"b", 10, 1) is a and t.remember(t.root, b"a", 11, 1) is b


def test_nodes_unlinked() -> None:
    t = NodeTable()
    a = t.remember(t.root, b"a", 10, 1)
    t.unlinked(t.root, b"a")
    assert a.linked is False and t.get(a.nodeid) is a
    fresh = t.remember(t.root, b"a", 10, 1)  # a new file that got the same inode number
    assert fresh is not a
    t.forget(a.nodeid, 1)
    assert t.get(a.nodeid) is None and t.get(fresh.nodeid) is fresh
    t.unlinked(t.root, b"never-known")  # harmless
    assert len(t) == 2


def test_nodes_unlink_one_of_two_links() -> None:
    """After ``ln a b; rm b`` the node (still reachable as a) keeps a usable path."""
    t = NodeTable()
    a = t.remember(t.root, b"a", 10, 1)
    assert t.remember(t.root, b"b", 10, 2) is a  # LINK's reply
    t.unlinked(t.root, b"b")
    assert a.path() == b"/a"


def test_child_path() -> None:
    t = NodeTable()
    d = t.remember(t.root, b"d", 10, 2)
    assert t.child_path(t.root, b"x") == b"/x"
    assert t.child_path(d, b"x") == b"/d/x"


def test_a_blocking_lock_that_cannot_be_sent_leaves_no_waiter(
    fk: FakeKernel, export_dir: Path
) -> None:
    """A SETLKW whose request cannot even be sent (the connection is gone and the
    file cannot reopen) fails at once, and nothing is left waiting for an answer."""
    put(export_dir / "f")
    fh = fk.open(fk.lookup(b"f").nodeid)
    f = fk.ops.files.get(fh)
    assert f is not None

    def cut_off() -> Any:
        raise ConnectionResetError(errno.ECONNRESET, "cut off")

    f.handle = cut_off  # type: ignore[method-assign]
    args = make(k.LkIn, fh=fh, owner=7, start=0, end=99, type=1, pid=os.getpid())
    assert fk.fails(Op.SETLKW, ROOT_ID, args) == "EIO"
    assert fk.ops.locks._waiting == {}
