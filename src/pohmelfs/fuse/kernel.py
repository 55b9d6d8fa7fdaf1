"""The Linux kernel's FUSE protocol (``include/uapi/linux/fuse.h``), sans-I/O.

Requests read from ``/dev/fuse`` are parsed into :class:`Request` objects with
the operation's fixed struct decoded and its trailing names or data split off;
replies and notifications are encoded to lists of buffers for one ``writev``.
Native byte order (the kernel's), structs as laid out for protocol 7.12+.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

KERNEL_MAJOR = 7
# The highest minor this module implements. 7.39 added only FUSE_STATX (answered
# ENOSYS, after which the kernel stops asking) and the DIRECT_IO_ALLOW_MMAP flag.
OUR_MINOR = 39
ROOT_ID = 1


class FuseError(Exception):
    """A request from the kernel that does not parse."""


class Op(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51


class Notify(enum.IntEnum):
    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    INC_EPOCH = 8  # 7.44: every cached name must be looked up again


# INIT flags
ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
SPLICE_WRITE = 1 << 7
SPLICE_MOVE = 1 << 8
SPLICE_READ = 1 << 9
FLOCK_LOCKS = 1 << 10
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
POSIX_ACL = 1 << 20
ABORT_ERROR = 1 << 21
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
EXPLICIT_INVAL_DATA = 1 << 25
SETXATTR_EXT = 1 << 29
HANDLE_KILLPRIV_V2 = 1 << 28
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36  # 7.39: shared mmap of FOPEN_DIRECT_IO files

# setattr valid bits
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# open reply flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3

GETATTR_FH = 1 << 0
WRITE_CACHE = 1 << 0  # written back from the page cache (not a write(2) of its own)
WRITE_LOCKOWNER = 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
READ_LOCKOWNER = 1 << 1  # set on direct reads (read(2) of a direct-I/O file) only
FSYNC_FDATASYNC = 1 << 0
LK_FLOCK = 1 << 0
RELEASE_FLUSH = 1 << 0
RELEASE_FLOCK_UNLOCK = 1 << 1

IN_HEADER = struct.Struct("=IIQQIIIHH")  # 40 bytes
OUT_HEADER = struct.Struct("=IiQ")  # 16 bytes
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")  # 88 bytes
ENTRY_OUT_HEAD = struct.Struct("=QQQQII")  # + ATTR = 128 bytes
ATTR_OUT_HEAD = struct.Struct("=QII")  # + ATTR = 104 bytes
OPEN_OUT = struct.Struct("=QII")
WRITE_OUT = struct.Struct("=II")
STATFS_OUT = struct.Struct("=QQQQQIIII24x")  # 80 bytes
GETXATTR_OUT = struct.Struct("=II")
LK_OUT = struct.Struct("=QQII")
LSEEK_OUT = struct.Struct("=Q")
INIT_OUT = struct.Struct("=IIIIHHIIHHI28x")  # 64 bytes
DIRENT_HEAD = struct.Struct("=QQII")  # ino, off, namelen, type
NOTIFY_INVAL_INODE = struct.Struct("=Qqq")
NOTIFY_INVAL_ENTRY = struct.Struct("=QII")
NOTIFY_DELETE = struct.Struct("=QQII")
NOTIFY_STORE = struct.Struct("=QQII")
NOTIFY_RETRIEVE = struct.Struct("=QQQII")


class InHeader(NamedTuple):
    len: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    total_extlen: int
    padding: int


def _args(name: str, fmt: str, fields: str) -> tuple[struct.Struct, type]:
    return struct.Struct("=" + fmt), NamedTuple(name, [(f, int) for f in fields.split()])  # type: ignore[misc]


# Fixed argument structs per opcode: (struct, namedtuple type).
GetattrIn = _args("GetattrIn", "IIQ", "getattr_flags dummy fh")
SetattrIn = _args(
    "SetattrIn",
    "IIQQQQQQIIIIIIII",
    "valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec "
    "mode unused4 uid gid unused5",
)
MknodIn = _args("MknodIn", "IIII", "mode rdev umask padding")
MkdirIn = _args("MkdirIn", "II", "mode umask")
RenameIn = _args("RenameIn", "Q", "newdir")
Rename2In = _args("Rename2In", "QII", "newdir flags padding")
LinkIn = _args("LinkIn", "Q", "oldnodeid")
OpenIn = _args("OpenIn", "II", "flags open_flags")
CreateIn = _args("CreateIn", "IIII", "flags mode umask open_flags")
ReleaseIn = _args("ReleaseIn", "QIIQ", "fh flags release_flags lock_owner")
FlushIn = _args("FlushIn", "QIIQ", "fh unused padding lock_owner")
ReadIn = _args("ReadIn", "QQIIQII", "fh offset size read_flags lock_owner flags padding")
WriteIn = _args("WriteIn", "QQIIQII", "fh offset size write_flags lock_owner flags padding")
FsyncIn = _args("FsyncIn", "QII", "fh fsync_flags padding")
SetxattrIn = _args("SetxattrIn", "II", "size flags")
SetxattrExtIn = _args("SetxattrExtIn", "IIII", "size flags setxattr_flags padding")
GetxattrIn = _args("GetxattrIn", "II", "size padding")
LkIn = _args("LkIn", "QQQQIIII", "fh owner start end type pid lk_flags padding")
AccessIn = _args("AccessIn", "II", "mask padding")
InitIn = _args("InitIn", "IIIII44x", "major minor max_readahead flags flags2")
InitInOld = _args("InitInOld", "IIII", "major minor max_readahead flags")
InterruptIn = _args("InterruptIn", "Q", "unique")
ForgetIn = _args("ForgetIn", "Q", "nlookup")
BatchForgetIn = _args("BatchForgetIn", "II", "count dummy")
FallocateIn = _args("FallocateIn", "QQQII", "fh offset length mode padding")
LseekIn = _args("LseekIn", "QQII", "fh offset whence padding")
CopyFileRangeIn = _args(
    "CopyFileRangeIn", "QQQQQQQ", "fh_in off_in nodeid_out fh_out off_out len flags"
)
PollIn = _args("PollIn", "QQII", "fh kh flags events")
SyncfsIn = _args("SyncfsIn", "Q", "padding")
FORGET_ONE = struct.Struct("=QQ")

# opcode -> (fixed struct or None, number of NUL-terminated names after it, rest is data)
LAYOUT: dict[int, tuple[tuple[struct.Struct, type] | None, int, bool]] = {
    Op.LOOKUP: (None, 1, False),
    Op.FORGET: (ForgetIn, 0, False),
    Op.GETATTR: (GetattrIn, 0, False),
    Op.SETATTR: (SetattrIn, 0, False),
    Op.READLINK: (None, 0, False),
    Op.SYMLINK: (None, 2, False),
    Op.MKNOD: (MknodIn, 1, False),
    Op.MKDIR: (MkdirIn, 1, False),
    Op.UNLINK: (None, 1, False),
    Op.RMDIR: (None, 1, False),
    Op.RENAME: (RenameIn, 2, False),
    Op.LINK: (LinkIn, 1, False),
    Op.OPEN: (OpenIn, 0, False),
    Op.READ: (ReadIn, 0, False),
    Op.WRITE: (WriteIn, 0, True),
    Op.STATFS: (None, 0, False),
    Op.RELEASE: (ReleaseIn, 0, False),
    Op.FSYNC: (FsyncIn, 0, False),
    Op.SETXATTR: (SetxattrIn, 1, True),
    Op.GETXATTR: (GetxattrIn, 1, False),
    Op.LISTXATTR: (GetxattrIn, 0, False),
    Op.REMOVEXATTR: (None, 1, False),
    Op.FLUSH: (FlushIn, 0, False),
    Op.INIT: (InitInOld, 0, True),
    Op.OPENDIR: (OpenIn, 0, False),
    Op.READDIR: (ReadIn, 0, False),
    Op.RELEASEDIR: (ReleaseIn, 0, False),
    Op.FSYNCDIR: (FsyncIn, 0, False),
    Op.GETLK: (LkIn, 0, False),
    Op.SETLK: (LkIn, 0, False),
    Op.SETLKW: (LkIn, 0, False),
    Op.ACCESS: (AccessIn, 0, False),
    Op.CREATE: (CreateIn, 1, False),
    Op.INTERRUPT: (InterruptIn, 0, False),
    Op.DESTROY: (None, 0, False),
    Op.BATCH_FORGET: (BatchForgetIn, 0, True),
    Op.FALLOCATE: (FallocateIn, 0, False),
    Op.READDIRPLUS: (ReadIn, 0, False),
    Op.RENAME2: (Rename2In, 2, False),
    Op.LSEEK: (LseekIn, 0, False),
    Op.COPY_FILE_RANGE: (CopyFileRangeIn, 0, False),
    Op.POLL: (PollIn, 0, False),
    Op.SYNCFS: (SyncfsIn, 0, False),
}


@dataclass(slots=True)
class Request:
    header: InHeader
    args: Any  # the op's fixed struct as a NamedTuple, or None
    names: tuple[bytes, ...]
    data: memoryview  # WRITE data, SETXATTR value, BATCH_FORGET entries, INIT tail

    @property
    def opcode(self) -> int:
        return self.header.opcode

    @property
    def unique(self) -> int:
        return self.header.unique

    @property
    def nodeid(self) -> int:
        return self.header.nodeid


def parse_request(buf: memoryview, setxattr_ext: bool = False) -> Request:
    """Parse one request as read from /dev/fuse (``buf`` is exactly one message)."""
    if len(buf) < IN_HEADER.size:
        raise FuseError("request shorter than its header")
    header = InHeader._make(IN_HEADER.unpack_from(buf))
    if header.len != len(buf):
        raise FuseError(f"length field {header.len} != {len(buf)} bytes read")
    # Extensions (security contexts...) are only sent when negotiated; we never ask.
    body = buf[IN_HEADER.size : len(buf) - header.total_extlen * 8]
    layout = LAYOUT.get(header.opcode)
    if layout is None:
        return Request(header, None, (), body)
    fixed, nnames, _has_data = layout
    if header.opcode == Op.SETXATTR and setxattr_ext:
        fixed = SetxattrExtIn
    pos = 0
    args = None
    if fixed is not None:
        st, cls = fixed
        if len(body) < st.size:
            raise FuseError(f"{Op(header.opcode).name}: body of {len(body)} bytes too short")
        args = cls._make(st.unpack_from(body))
        pos = st.size
    names = []
    for _ in range(nnames):
        end = bytes(body[pos : pos + 4097]).find(b"\0")  # names are at most PATH_MAX
        if end < 0:
            raise FuseError(f"{Op(header.opcode).name}: name not NUL-terminated")
        names.append(bytes(body[pos : pos + end]))
        pos += end + 1
    return Request(header, args, tuple(names), body[pos:])


def parse_forgets(req: Request) -> list[tuple[int, int]]:
    """(nodeid, nlookup) pairs of a BATCH_FORGET."""
    count = req.args.count
    if len(req.data) < count * FORGET_ONE.size:
        raise FuseError("BATCH_FORGET shorter than its count")
    return [FORGET_ONE.unpack_from(req.data, i * FORGET_ONE.size) for i in range(count)]


def parse_init(req: Request) -> tuple[int, int, int, int, int]:
    """(major, minor, max_readahead, flags, flags2) of an INIT request."""
    a = req.args
    flags2 = 0
    if a.flags & INIT_EXT and len(req.data) >= 4:
        flags2 = struct.unpack_from("=I", req.data)[0]
    return a.major, a.minor, a.max_readahead, a.flags, flags2


# --- replies -------------------------------------------------------------------


class Attr(NamedTuple):
    ino: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int


def pack_attr(a: Attr) -> bytes:
    asec, ansec = divmod(a.atime_ns, 1_000_000_000)
    msec, mnsec = divmod(a.mtime_ns, 1_000_000_000)
    csec, cnsec = divmod(a.ctime_ns, 1_000_000_000)
    return ATTR.pack(
        a.ino, a.size, a.blocks, asec & 0xFFFFFFFFFFFFFFFF, msec & 0xFFFFFFFFFFFFFFFF,
        csec & 0xFFFFFFFFFFFFFFFF, ansec, mnsec, cnsec, a.mode, a.nlink, a.uid, a.gid,
        a.rdev & 0xFFFFFFFF, a.blksize, 0,
    )  # fmt: skip


def _split_timeout(seconds: float) -> tuple[int, int]:
    sec = int(seconds)
    return sec, int((seconds - sec) * 1e9)


def pack_entry(nodeid: int, generation: int, attr: Attr | None, entry_timeout: float,
               attr_timeout: float) -> bytes:  # fmt: skip
    """fuse_entry_out; nodeid 0 with attr None is a cacheable negative entry."""
    es, ens = _split_timeout(entry_timeout)
    as_, ans = _split_timeout(attr_timeout)
    head = ENTRY_OUT_HEAD.pack(nodeid, generation, es, as_, ens, ans)
    return head + (pack_attr(attr) if attr is not None else bytes(ATTR.size))


def pack_attr_out(attr: Attr, attr_timeout: float) -> bytes:
    s, ns = _split_timeout(attr_timeout)
    return ATTR_OUT_HEAD.pack(s, ns, 0) + pack_attr(attr)


def pack_open(fh: int, open_flags: int = 0) -> bytes:
    return OPEN_OUT.pack(fh, open_flags, 0)


def pack_write(size: int) -> bytes:
    return WRITE_OUT.pack(size, 0)


def pack_statfs(blocks: int, bfree: int, bavail: int, files: int, ffree: int, bsize: int,
                namelen: int, frsize: int) -> bytes:  # fmt: skip
    return STATFS_OUT.pack(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, 0)


def pack_xattr_size(size: int) -> bytes:
    return GETXATTR_OUT.pack(size, 0)


def pack_lk(start: int, end: int, type_: int, pid: int) -> bytes:
    return LK_OUT.pack(start, end, type_, pid)


def pack_lseek(offset: int) -> bytes:
    return LSEEK_OUT.pack(offset)


def pack_init(minor: int, max_readahead: int, flags: int, max_background: int,
              congestion_threshold: int, max_write: int, time_gran: int, max_pages: int,
              flags2: int = 0) -> bytes:  # fmt: skip
    return INIT_OUT.pack(
        KERNEL_MAJOR, minor, max_readahead, flags & 0xFFFFFFFF, max_background,
        congestion_threshold, max_write, time_gran, max_pages, 0, flags2,
    )  # fmt: skip


def _align8(n: int) -> int:
    return (n + 7) & ~7


def dirent_size(name: bytes, plus: bool) -> int:
    head = (ENTRY_OUT_HEAD.size + ATTR.size if plus else 0) + DIRENT_HEAD.size
    return _align8(head + len(name))


def pack_dirent(ino: int, off: int, type_: int, name: bytes) -> bytes:
    rec = DIRENT_HEAD.pack(ino, off, len(name), type_) + name
    return rec + bytes(_align8(len(rec)) - len(rec))


def pack_direntplus(entry: bytes, ino: int, off: int, type_: int, name: bytes) -> bytes:
    rec = entry + DIRENT_HEAD.pack(ino, off, len(name), type_) + name
    return rec + bytes(_align8(len(rec)) - len(rec))


def reply_parts(unique: int, error: int = 0, *payload: Any) -> list[Any]:
    """Buffers for one writev: the out header then the payload; ``error`` is a
    positive errno (sent negated)."""
    length = OUT_HEADER.size + sum(len(p) for p in payload)
    return [OUT_HEADER.pack(length, -error, unique), *payload]


def notify_parts(code: Notify, *payload: Any) -> list[Any]:
    """A notification: unique 0, the notify code in the error field."""
    length = OUT_HEADER.size + sum(len(p) for p in payload)
    return [OUT_HEADER.pack(length, int(code), 0), *payload]


def notify_inval_inode(nodeid: int, offset: int = 0, length: int = -1) -> list[Any]:
    """Drop cached data of [offset, offset+length) (length -1: to the end) and attributes.
    A negative offset invalidates only the attributes."""
    return notify_parts(Notify.INVAL_INODE, NOTIFY_INVAL_INODE.pack(nodeid, offset, length))


def notify_inval_entry(parent: int, name: bytes) -> list[Any]:
    return notify_parts(Notify.INVAL_ENTRY, NOTIFY_INVAL_ENTRY.pack(parent, len(name), 0),
                        name + b"\0")  # fmt: skip


def notify_delete(parent: int, child: int, name: bytes) -> list[Any]:
    return notify_parts(Notify.DELETE, NOTIFY_DELETE.pack(parent, child, len(name), 0),
                        name + b"\0")  # fmt: skip


def notify_inc_epoch() -> list[Any]:
    """Make every dentry of the mount (positive or negative) stale at once: the
    kernel takes no inode lock for it, so it is safe from any thread."""
    return notify_parts(Notify.INC_EPOCH)


def notify_store(nodeid: int, offset: int, data: Any) -> list[Any]:
    return notify_parts(Notify.STORE, NOTIFY_STORE.pack(nodeid, offset, len(data), 0), data)
