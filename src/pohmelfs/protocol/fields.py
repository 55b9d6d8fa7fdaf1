"""Payload field types of the pohmelfs protocol and their codecs.

A field type is a pair (encode, decode): ``encode(value) -> bytes`` checks the
value, ``decode(buf, pos) -> (value, newpos)``; both raise ProtocolError only.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

DEFAULT_MAX_PAYLOAD = 8 << 20
MAX_NAME = 4096  # names, symlink targets, xattr names
# Paths are counted from the export root, so a tree deeper than a syscall's
# PATH_MAX (4,096) still has one; a frame's payload limit bounds them too.
MAX_PATH = 1 << 20
FID_SIZE = 16  # a file's identity (see server/identity.py)
ANY_FILE = bytes(FID_SIZE)  # OPEN's ``fid`` when any file of that name will do
NONCE_SIZE = 32  # a handshake's fresh random value, or a proof (HMAC-SHA256)
SESSION_SIZE = 16  # a client session's id (random: 128 bits)
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


_NAME = _bytes_codec(_U16, MAX_NAME, no_nul=True)
_PATH = _bytes_codec(_U32, MAX_PATH, no_nul=True)
_BLOB = _bytes_codec(_U32, MAX_XATTR_VALUE, no_nul=False)
_ATTR_CODEC = _struct_codec(_ATTR, Attr)


def _enc_names(v: Any) -> bytes:
    try:
        out = [_U32.pack(len(v))]
        out.extend(_NAME[0](n) for n in v)
    except (TypeError, ValueError, struct.error) as e:
        raise ProtocolError(f"bad names: {e}") from None
    return b"".join(out)


def _dec_names(buf: memoryview, pos: int) -> tuple[tuple[bytes, ...], int]:
    n, pos = _U32_CODEC[1](buf, pos)
    names = []
    for _ in range(n):
        name, pos = _NAME[1](buf, pos)
        names.append(name)
    return tuple(names), pos


def _enc_entries(v: Any) -> bytes:
    try:
        out = [_U32.pack(len(v))]
        for name, attr in v:
            out.append(_NAME[0](name))
            out.append(_ATTR_CODEC[0](attr))
    except (TypeError, ValueError, struct.error) as e:
        raise ProtocolError(f"bad entries: {e}") from None
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


def _fixed_codec(size: int, what: str) -> tuple[Any, Any]:
    """Exactly ``size`` raw bytes."""

    def enc(v: Any) -> bytes:
        if not isinstance(v, bytes | bytearray) or len(v) != size:
            raise ProtocolError(f"{what} is {size} bytes")
        return bytes(v)

    def dec(buf: memoryview, pos: int) -> tuple[bytes, int]:
        _need(buf, pos, size)
        return bytes(buf[pos : pos + size]), pos + size

    return enc, dec


FIELD_TYPES: dict[str, tuple[Any, Any]] = {
    "u32": _U32_CODEC,
    "u64": _int_codec(_U64, 0, U64_MAX),
    "i64": _int_codec(_I64, -(1 << 63), (1 << 63) - 1),
    "name": _NAME,
    "path": _PATH,
    "fid": _fixed_codec(FID_SIZE, "a file id"),
    "nonce": _fixed_codec(NONCE_SIZE, "a nonce or proof"),
    "session": _fixed_codec(SESSION_SIZE, "a session id"),
    "blob": _BLOB,
    "cred": (_enc_cred, _dec_cred),
    "attr": _ATTR_CODEC,
    "statfs": _struct_codec(_STATFS, StatFs),
    "names": (_enc_names, _dec_names),
    "entries": (_enc_entries, _dec_entries),
}
