"""The pohmelfs wire protocol, sans-I/O: bytes in, typed messages out.

Nothing here touches a socket. Every frame is a fixed 48-byte header in
network byte order followed by a payload whose layout is fixed per command
(see ``docs/design.md``, "Wire protocol"). Any malformed input raises
:class:`ProtocolError` and nothing else.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAGIC = 0x504F  # "PO"
VERSION = 1
HEADER = struct.Struct("!HHHHIIQQQQ")
HEADER_SIZE = HEADER.size  # 48
DEFAULT_MAX_PAYLOAD = 8 << 20
MAX_PATH = 4096
MAX_GROUPS = 1024
MAX_XATTR_VALUE = 64 << 10
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


class ProtocolError(Exception):
    """The peer sent something that is not a valid pohmelfs frame.

    ``skip`` is set when the framing is still intact (good magic, payload
    length within the limit) but the frame itself is unusable: it holds
    ``(raw_cmd, xid, payload_len)`` so a receiver can discard the payload and
    answer with an error instead of dropping the connection.
    """

    def __init__(self, message: str, skip: tuple[int, int, int] | None = None) -> None:
        super().__init__(message)
        self.skip = skip


class Flag(enum.IntFlag):
    REPLY = 0x1  # answers the request with the same xid
    NOTIFY = 0x2  # server-initiated; xid is from the server's own sequence
    MORE = 0x4  # a streamed reply: further frames with this xid follow


KNOWN_FLAGS = int(Flag.REPLY | Flag.NOTIFY | Flag.MORE)
# Plain ints for the hot paths: IntFlag arithmetic builds enum objects.
FLAG_REPLY, FLAG_NOTIFY, FLAG_MORE = int(Flag.REPLY), int(Flag.NOTIFY), int(Flag.MORE)


class Cap(enum.IntFlag):
    READ_ONLY = 0x1
    XATTR = 0x2


class Command(enum.IntEnum):
    HELLO = 1
    PING = 2
    STATFS = 3
    LOOKUP = 4
    READDIR = 5
    OPEN = 6
    CLOSE = 7
    READ = 8
    WRITE = 9
    FSTAT = 10
    FTRUNCATE = 11
    FSYNC = 12
    TRUNCATE = 13
    MKDIR = 14
    MAKEDIRS = 15
    RMDIR = 16
    RMTREE = 17
    UNLINK = 18
    RENAME = 19
    LINK = 20
    SYMLINK = 21
    READLINK = 22
    MKNOD = 23
    CHMOD = 24
    CHOWN = 25
    UTIMES = 26
    GETXATTR = 27
    SETXATTR = 28
    LISTXATTR = 29
    REMOVEXATTR = 30
    FALLOCATE = 31


# Bits of the UTIMES "which" field.
UTIME_ATIME_NOW = 0x1
UTIME_ATIME_OMIT = 0x2
UTIME_MTIME_NOW = 0x4
UTIME_MTIME_OMIT = 0x8

# The value of CHOWN's uid or gid that leaves it unchanged.
ID_UNCHANGED = U32_MAX


class Cred(NamedTuple):
    """Who a request acts for: uid, primary gid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


class Attr(NamedTuple):
    """File attributes, lstat semantics; times in nanoseconds."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    blksize: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


class StatFs(NamedTuple):
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int


class DirEntry(NamedTuple):
    name: bytes
    attr: Attr


_ATTR = struct.Struct("!QIIIIQQQIqqq")
_STATFS = struct.Struct("!IIQQQQQI")
ATTR_SIZE = _ATTR.size  # 76
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")


# --- payload field codecs ---------------------------------------------------
#
# A field type is a pair (encode, decode). encode(value) -> bytes and checks the
# value; decode(buf, pos) -> (value, newpos) and raises ProtocolError.


def _need(buf: memoryview, pos: int, n: int) -> None:
    if pos + n > len(buf):
        raise ProtocolError("payload truncated")


def _int_codec(st: struct.Struct, lo: int, hi: int) -> tuple[Any, Any]:
    def enc(v: Any) -> bytes:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ProtocolError(f"integer field out of range: {v!r}")
        return st.pack(v)

    def dec(buf: memoryview, pos: int) -> tuple[int, int]:
        _need(buf, pos, st.size)
        return st.unpack_from(buf, pos)[0], pos + st.size

    return enc, dec


def _bytes_codec(len_st: struct.Struct, limit: int, no_nul: bool) -> tuple[Any, Any]:
    def enc(v: Any) -> bytes:
        if not isinstance(v, bytes | bytearray):
            raise ProtocolError(f"expected bytes, got {type(v).__name__}")
        if len(v) > limit:
            raise ProtocolError(f"field longer than {limit} bytes")
        if no_nul and b"\0" in v:
            raise ProtocolError("NUL byte in name")
        return len_st.pack(len(v)) + bytes(v)

    def dec(buf: memoryview, pos: int) -> tuple[bytes, int]:
        _need(buf, pos, len_st.size)
        n = len_st.unpack_from(buf, pos)[0]
        pos += len_st.size
        if n > limit:
            raise ProtocolError(f"field longer than {limit} bytes")
        _need(buf, pos, n)
        v = bytes(buf[pos : pos + n])
        if no_nul and b"\0" in v:
            raise ProtocolError("NUL byte in name")
        return v, pos + n

    return enc, dec


def _struct_codec(st: struct.Struct, cls: type) -> tuple[Any, Any]:
    def enc(v: Any) -> bytes:
        try:
            return st.pack(*cls(*v))
        except (struct.error, TypeError) as e:
            raise ProtocolError(f"bad {cls.__name__}: {e}") from None

    def dec(buf: memoryview, pos: int) -> tuple[Any, int]:
        _need(buf, pos, st.size)
        return cls._make(st.unpack_from(buf, pos)), pos + st.size

    return enc, dec


def _enc_cred(v: Any) -> bytes:
    try:
        uid, gid, groups = Cred(*v)
        groups = tuple(groups)
        if len(groups) > MAX_GROUPS:
            raise ProtocolError("too many groups")
        return struct.pack(f"!IIH{len(groups)}I", uid, gid, len(groups), *groups)
    except (struct.error, TypeError) as e:
        raise ProtocolError(f"bad credentials: {e}") from None


def _dec_cred(buf: memoryview, pos: int) -> tuple[Cred, int]:
    _need(buf, pos, 10)
    uid, gid, n = struct.unpack_from("!IIH", buf, pos)
    pos += 10
    if n > MAX_GROUPS:
        raise ProtocolError("too many groups")
    _need(buf, pos, 4 * n)
    groups = struct.unpack_from(f"!{n}I", buf, pos)
    return Cred(uid, gid, groups), pos + 4 * n


_NAME = _bytes_codec(_U16, MAX_PATH, no_nul=True)
_BLOB = _bytes_codec(_U32, MAX_XATTR_VALUE, no_nul=False)
_ATTR_CODEC = _struct_codec(_ATTR, Attr)


def _enc_names(v: Any) -> bytes:
    out = [_U32.pack(len(v))]
    out.extend(_NAME[0](n) for n in v)
    return b"".join(out)


def _dec_names(buf: memoryview, pos: int) -> tuple[tuple[bytes, ...], int]:
    n, pos = _U32_CODEC[1](buf, pos)
    names = []
    for _ in range(n):
        name, pos = _NAME[1](buf, pos)
        names.append(name)
    return tuple(names), pos


def _enc_entries(v: Any) -> bytes:
    out = [_U32.pack(len(v))]
    for name, attr in v:
        out.append(_NAME[0](name))
        out.append(_ATTR_CODEC[0](attr))
    return b"".join(out)


def _dec_entries(buf: memoryview, pos: int) -> tuple[tuple[DirEntry, ...], int]:
    n, pos = _U32_CODEC[1](buf, pos)
    # Each entry needs at least 2 + 76 bytes: refuse absurd counts before looping.
    if n * (2 + _ATTR.size) > len(buf) - pos:
        raise ProtocolError("payload truncated")
    entries = []
    for _ in range(n):
        name, pos = _NAME[1](buf, pos)
        attr, pos = _ATTR_CODEC[1](buf, pos)
        entries.append(DirEntry(name, attr))
    return tuple(entries), pos


_U32_CODEC = _int_codec(_U32, 0, U32_MAX)

FIELD_TYPES: dict[str, tuple[Any, Any]] = {
    "u32": _U32_CODEC,
    "u64": _int_codec(_U64, 0, U64_MAX),
    "i64": _int_codec(_I64, -(1 << 63), (1 << 63) - 1),
    "name": _NAME,
    "blob": _BLOB,
    "cred": (_enc_cred, _dec_cred),
    "attr": _ATTR_CODEC,
    "statfs": _struct_codec(_STATFS, StatFs),
    "names": (_enc_names, _dec_names),
    "entries": (_enc_entries, _dec_entries),
}

Schema = tuple[tuple[str, str], ...]
# "data" as the last field means: the rest of the payload, raw.
DATA = ("data", "data")

_C = Command
REQUESTS: dict[Command, Schema] = {
    _C.HELLO: (("version", "u32"), ("max_payload", "u32"), ("client", "name")),
    _C.PING: (),
    _C.STATFS: (("cred", "cred"),),
    _C.LOOKUP: (("cred", "cred"), ("path", "name")),
    _C.READDIR: (("cred", "cred"), ("path", "name")),
    _C.OPEN: (("cred", "cred"), ("path", "name"), ("flags", "u32"), ("mode", "u32")),
    _C.CLOSE: (),
    _C.READ: (),
    _C.WRITE: (DATA,),
    _C.FSTAT: (),
    _C.FTRUNCATE: (),
    _C.FSYNC: (("datasync", "u32"),),
    _C.TRUNCATE: (("cred", "cred"), ("path", "name")),
    _C.MKDIR: (("cred", "cred"), ("path", "name"), ("mode", "u32")),
    _C.MAKEDIRS: (("cred", "cred"), ("path", "name"), ("mode", "u32"), ("parent_mode", "u32")),
    _C.RMDIR: (("cred", "cred"), ("path", "name")),
    _C.RMTREE: (("cred", "cred"), ("path", "name")),
    _C.UNLINK: (("cred", "cred"), ("path", "name")),
    _C.RENAME: (("cred", "cred"), ("path", "name"), ("new", "name"), ("flags", "u32")),
    _C.LINK: (("cred", "cred"), ("path", "name"), ("new", "name")),
    _C.SYMLINK: (("cred", "cred"), ("target", "name"), ("path", "name")),
    _C.READLINK: (("cred", "cred"), ("path", "name")),
    _C.MKNOD: (("cred", "cred"), ("path", "name"), ("mode", "u32"), ("rdev", "u64")),
    _C.CHMOD: (("cred", "cred"), ("path", "name"), ("mode", "u32")),
    _C.CHOWN: (("cred", "cred"), ("path", "name"), ("uid", "u32"), ("gid", "u32")),
    _C.UTIMES: (
        ("cred", "cred"),
        ("path", "name"),
        ("atime_ns", "i64"),
        ("mtime_ns", "i64"),
        ("which", "u32"),
    ),
    _C.GETXATTR: (("cred", "cred"), ("path", "name"), ("name", "name")),
    _C.SETXATTR: (
        ("cred", "cred"),
        ("path", "name"),
        ("name", "name"),
        ("value", "blob"),
        ("flags", "u32"),
    ),
    _C.LISTXATTR: (("cred", "cred"), ("path", "name")),
    _C.REMOVEXATTR: (("cred", "cred"), ("path", "name"), ("name", "name")),
    _C.FALLOCATE: (("mode", "u32"),),
}

_ATTR_REPLY: Schema = (("attr", "attr"),)
REPLIES: dict[Command, Schema] = {c: () for c in Command}
REPLIES.update(
    {
        _C.HELLO: (
            ("version", "u32"),
            ("max_payload", "u32"),
            ("caps", "u32"),
            ("fsid", "u64"),
            ("statfs", "statfs"),
        ),
        _C.STATFS: (("statfs", "statfs"),),
        _C.LOOKUP: _ATTR_REPLY,
        _C.READDIR: (("entries", "entries"),),
        _C.OPEN: _ATTR_REPLY,
        _C.READ: (DATA,),
        _C.FSTAT: _ATTR_REPLY,
        _C.MKDIR: _ATTR_REPLY,
        _C.MAKEDIRS: _ATTR_REPLY,
        _C.LINK: _ATTR_REPLY,
        _C.SYMLINK: _ATTR_REPLY,
        _C.MKNOD: _ATTR_REPLY,
        _C.READLINK: (("target", "name"),),
        _C.GETXATTR: (("value", "blob"),),
        _C.LISTXATTR: (("names", "names"),),
    }
)
# An error reply (status != 0) carries a human-readable message as its data.
ERROR_REPLY: Schema = (DATA,)
# Server-initiated messages; none are defined in version 1.
NOTIFICATIONS: dict[Command, Schema] = {}


def schema_for(cmd: Command, flags: int, status: int) -> Schema:
    if flags & FLAG_NOTIFY:
        try:
            return NOTIFICATIONS[cmd]
        except KeyError:
            raise ProtocolError(f"unknown notification {cmd.name}") from None
    if flags & FLAG_REPLY:
        return ERROR_REPLY if status else REPLIES[cmd]
    return REQUESTS[cmd]


def _flag_problem(flags: int, status: int) -> str | None:
    if (flags == 0 and status == 0) or flags == FLAG_REPLY:
        return None  # the common cases, decided at once
    if flags & ~KNOWN_FLAGS:
        return f"unknown flags {flags:#x}"
    if flags & FLAG_REPLY and flags & FLAG_NOTIFY:
        return "frame is both reply and notification"
    if flags & FLAG_MORE and not flags & FLAG_REPLY:
        return "MORE on a frame that is not a reply"
    if status and not flags & FLAG_REPLY:
        return "status set on a frame that is not a reply"
    return None


_SCHEMA_NAMES: dict[Schema, frozenset[str]] = {}


def _names(schema: Schema) -> frozenset[str]:
    names = _SCHEMA_NAMES.get(schema)
    if names is None:
        names = _SCHEMA_NAMES[schema] = frozenset(n for n, _ in schema)
    return names


@dataclass(frozen=True, slots=True)
class Header:
    """A validated frame header."""

    cmd: Command
    flags: int
    status: int
    payload_len: int
    xid: int
    oid: int = 0
    offset: int = 0
    length: int = 0

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, max_payload: int) -> Header:
        if len(buf) < HEADER_SIZE:
            raise ProtocolError("header truncated")
        magic, cmd, flags, tag_len, status, plen, xid, oid, off, length = HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic {magic:#06x}")
        if plen > max_payload:
            raise ProtocolError(f"payload of {plen} bytes exceeds limit {max_payload}")
        if tag_len:  # the trailer's length is unknown to version 1: cannot resync
            raise ProtocolError("authentication tags are not supported by version 1")
        skip = (cmd, xid, plen)
        problem = _flag_problem(flags, status)
        if problem:
            raise ProtocolError(problem, skip)
        try:
            command = Command(cmd)
        except ValueError:
            raise ProtocolError(f"unknown command {cmd}", skip) from None
        return cls(command, flags, status, plen, xid, oid, off, length)

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            self.cmd,
            self.flags,
            0,
            self.status,
            self.payload_len,
            self.xid,
            self.oid,
            self.offset,
            self.length,
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One frame: header numbers plus the payload fields of its command.

    ``fields`` holds the decoded payload by field name. A ``data`` field is a
    buffer (bytes, bytearray or memoryview) sent and received without copying.
    """

    cmd: Command
    xid: int
    flags: int = 0
    status: int = 0
    oid: int = 0
    offset: int = 0
    length: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in (
            ("xid", self.xid),
            ("oid", self.oid),
            ("offset", self.offset),
            ("length", self.length),
        ):
            if not isinstance(value, int) or not 0 <= value <= U64_MAX:
                raise ProtocolError(f"header field {name} out of range: {value!r}")
        if not isinstance(self.status, int) or not 0 <= self.status <= U32_MAX:
            raise ProtocolError(f"status out of range: {self.status!r}")
        if not isinstance(self.cmd, Command):
            raise ProtocolError(f"unknown command {self.cmd!r}")
        problem = _flag_problem(self.flags, self.status)
        if problem:
            raise ProtocolError(problem)
        names = _names(self.schema)
        if self.fields.keys() != names:
            missing, extra = names - set(self.fields), set(self.fields) - names
            raise ProtocolError(
                f"{self.cmd.name}: missing {sorted(missing)}, extra {sorted(extra)}"
            )

    @property
    def schema(self) -> Schema:
        return schema_for(self.cmd, self.flags, self.status)

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def _header(self, plen: int) -> Header:
        return Header(
            self.cmd, self.flags, self.status, plen, self.xid, self.oid, self.offset, self.length
        )

    def encode(self) -> list[bytes | bytearray | memoryview]:
        """Return the frame as a list of buffers for ``sendmsg``; data is not copied."""
        parts: list[bytes | bytearray | memoryview] = []
        for name, kind in self.schema:
            value = self.fields[name]
            if kind == "data":
                if not isinstance(value, bytes | bytearray | memoryview):
                    raise ProtocolError("data field must be a buffer")
                parts.append(value)
            else:
                parts.append(FIELD_TYPES[kind][0](value))
        plen = sum(memoryview(p).nbytes for p in parts)
        return [self._header(plen).pack(), *parts]

    def to_bytes(self) -> bytes:
        return b"".join(bytes(p) for p in self.encode())


def request(
    cmd: Command, xid: int, *, oid: int = 0, offset: int = 0, length: int = 0, **fields: Any
) -> Message:
    return Message(cmd, xid, 0, 0, oid, offset, length, fields)


def reply(
    req: Header | Message,
    *,
    status: int = 0,
    more: bool = False,
    oid: int = 0,
    offset: int = 0,
    length: int = 0,
    **fields: Any,
) -> Message:
    flags = FLAG_REPLY | (FLAG_MORE if more else 0)
    if status and not fields:
        fields = {"data": b""}
    return Message(req.cmd, req.xid, int(flags), status, oid, offset, length, fields)


def decode_payload(header: Header, payload: bytes | bytearray | memoryview) -> Message:
    """Decode a payload of exactly ``header.payload_len`` bytes into a Message.

    A trailing ``data`` field is returned as a memoryview of ``payload``.
    """
    buf = memoryview(payload)
    if len(buf) != header.payload_len:
        raise ProtocolError("payload length does not match header")
    fields: dict[str, Any] = {}
    pos = 0
    for name, kind in schema_for(header.cmd, header.flags, header.status):
        if kind == "data":
            fields[name] = buf[pos:]
            pos = len(buf)
        else:
            fields[name], pos = FIELD_TYPES[kind][1](buf, pos)
    if pos != len(buf):
        raise ProtocolError(f"{len(buf) - pos} unexpected bytes after {header.cmd.name} payload")
    # The header and every field were validated while decoding: skip __post_init__.
    msg = object.__new__(Message)
    for name, value in zip(
        _MESSAGE_SLOTS,
        (
            header.cmd,
            header.xid,
            header.flags,
            header.status,
            header.oid,
            header.offset,
            header.length,
            fields,
        ),
        strict=True,
    ):
        object.__setattr__(msg, name, value)
    return msg


_MESSAGE_SLOTS = ("cmd", "xid", "flags", "status", "oid", "offset", "length", "fields")


class FrameDecoder:
    """Incremental decoder: feed bytes in any chunking, get whole Messages out.

    The buffer never holds more than one header plus ``max_payload`` bytes of
    an incomplete frame, so a peer cannot make it grow without bound.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self._header: Header | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Message]:
        self._buf += data
        while True:
            if self._header is None:
                if len(self._buf) < HEADER_SIZE:
                    return
                self._header = Header.unpack(self._buf, self.max_payload)
                del self._buf[:HEADER_SIZE]
            need = self._header.payload_len
            if len(self._buf) < need:
                return
            payload = bytes(self._buf[:need])
            del self._buf[:need]
            header, self._header = self._header, None
            yield decode_payload(header, payload)

    @property
    def pending(self) -> int:
        """Bytes buffered towards the next frame."""
        return len(self._buf) + (HEADER_SIZE if self._header else 0)
