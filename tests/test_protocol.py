"""Tests for the sans-I/O wire protocol in :mod:`pohmelfs.protocol`."""

from __future__ import annotations

import errno
import itertools
import random
import struct
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pohmelfs import protocol as p
from pohmelfs.protocol import (
    DEFAULT_MAX_PAYLOAD,
    HEADER,
    HEADER_SIZE,
    ID_UNCHANGED,
    MAGIC,
    MAX_GROUPS,
    MAX_NAME,
    MAX_PATH,
    MAX_XATTR_VALUE,
    U32_MAX,
    U64_MAX,
    UTIME_ATIME_OMIT,
    UTIME_MTIME_NOW,
    Attr,
    Cap,
    Command,
    Cred,
    DirEntry,
    Flag,
    FrameDecoder,
    Header,
    Message,
    ProtocolError,
    StatFs,
    decode_payload,
    reply,
    request,
)

# --- realistic sample values ------------------------------------------------

CRED = Cred(1000, 100, (4, 24, 27, 100, 1000, 65534))
ROOT = Cred(0, 0, ())
NOBODY = Cred(U32_MAX - 1, U32_MAX - 1, (U32_MAX,))

PATH = b"home/user/caf\xc3\xa9/\xff\xfe-latin1-\xe9t\xe9.bin"
PATH2 = b"home/user/renamed-\xfe\xff"

ATTR_FILE = Attr(
    ino=0x1234_5678_9ABC,
    mode=0o100644,
    nlink=1,
    uid=1000,
    gid=100,
    rdev=0,
    size=(1 << 40) + 17,
    blocks=(1 << 31) + 8,
    blksize=4096,
    atime_ns=-1_234_567_890_123,  # before the epoch
    mtime_ns=1_700_000_000_123_456_789,
    ctime_ns=(1 << 63) - 1,
)
ATTR_DIR = Attr(2, 0o40755, 5, 0, 0, 0, 4096, 8, 4096, 0, 1, -(1 << 63))
ATTR_DEV = Attr(U64_MAX, 0o20620, U32_MAX, 0, 5, (136 << 8) | 3, 0, 0, 1024, 7, 8, 9)

STATFS = StatFs(
    bsize=4096,
    frsize=4096,
    blocks=(1 << 40),
    bfree=123_456_789,
    bavail=123_456_000,
    files=U64_MAX,
    ffree=42,
    namemax=255,
)

ENTRIES = (
    DirEntry(b".", ATTR_DIR),
    DirEntry(b"..", ATTR_DIR),
    DirEntry(b"\xff\xfe", ATTR_FILE),
    DirEntry(b"n" * 255, ATTR_DEV),
    DirEntry(b"caf\xc3\xa9 with spaces", ATTR_FILE),
)

XATTR_VALUE = b"\x00\x01\x02 binary \x00 value \xff"
FID = bytes(range(0xF0, 0x100))
DATA = bytes(range(256)) * 17


def _request_fields() -> dict[Command, tuple[dict[str, Any], dict[str, Any]]]:
    """Per command: (header numbers, payload fields) of a realistic request."""
    c = Command
    path = {"cred": CRED, "path": PATH}
    return {
        c.HELLO: (
            {},
            {
                "version": p.VERSION,
                "max_payload": 8 << 20,
                "keepalive_ms": 1000,
                "notices": 1,
                "client": b"host-\xff\xfe",
                "key": b"laptop",
                "nonce": bytes(range(32)),
                "session": bytes(range(64, 80)),
            },
        ),
        c.AUTH: ({}, {"proof": bytes(range(32, 64))}),
        c.PING: ({}, {}),
        c.STATFS: ({}, {"cred": ROOT}),
        c.LOOKUP: ({}, path),
        c.READDIR: ({}, {"cred": NOBODY, "path": b""}),
        c.OPEN: (
            {},
            {**path, "flags": 0o102 | 0o2000000, "mode": 0o644, "cache": 0, "fid": FID},
        ),
        c.CLOSE: ({"oid": 42}, {}),
        c.READ: ({"oid": 42, "offset": 1 << 33, "length": 65536}, {}),
        c.WRITE: ({"oid": 42, "offset": 4096}, {"data": bytearray(DATA)}),
        c.COPY: ({"oid": 42, "offset": 4096, "length": 1 << 24}, {"src": 43, "src_offset": 7}),
        c.FSTAT: ({"oid": U64_MAX}, {}),
        c.FTRUNCATE: ({"oid": 42, "length": 1 << 40}, {}),
        c.FSYNC: ({"oid": 42}, {"datasync": 1}),
        c.TRUNCATE: ({"length": 0}, path),
        c.MKDIR: ({}, {**path, "mode": 0o755}),
        c.MAKEDIRS: (
            {},
            {"cred": CRED, "path": b"a/b/\xff/c", "mode": 0o700, "parent_mode": 0o755},
        ),
        c.RMDIR: ({}, path),
        c.RMTREE: ({}, path),
        c.UNLINK: ({}, path),
        c.RENAME: ({}, {**path, "new": PATH2, "flags": 1}),
        c.LINK: ({}, {**path, "new": PATH2}),
        c.SYMLINK: ({}, {"cred": CRED, "target": b"../\xff\xfe/target", "path": PATH}),
        c.READLINK: ({}, path),
        c.MKNOD: ({}, {**path, "mode": 0o20644, "rdev": U64_MAX}),
        c.CHMOD: ({}, {**path, "mode": 0o4755}),
        c.CHOWN: ({}, {**path, "uid": ID_UNCHANGED, "gid": 100}),
        c.UTIMES: (
            {},
            {
                **path,
                "atime_ns": -(1 << 63),
                "mtime_ns": 1_700_000_000_987_654_321,
                "which": UTIME_ATIME_OMIT | UTIME_MTIME_NOW,
            },
        ),
        c.GETXATTR: ({}, {**path, "name": b"user.\xff\xfe"}),
        c.SETXATTR: (
            {},
            {**path, "name": b"user.comment", "value": XATTR_VALUE, "flags": 2},
        ),
        c.LISTXATTR: ({}, path),
        c.REMOVEXATTR: ({}, {**path, "name": b"trusted.\xfe"}),
        # FALLOC_FL_KEEP_SIZE over a range of an open file
        c.FALLOCATE: ({"oid": 42, "offset": 1 << 32, "length": 1 << 20}, {"mode": 1}),
        # a blocking exclusive record lock from byte 100 to the end, and its test
        c.LOCK: (
            {"oid": 42, "offset": 100},
            {"owner": 1 << 62, "type": 1, "flags": 1, "pid": 4242},
        ),
        c.GETLK: ({"oid": 42, "length": 10}, {"owner": 5, "type": 0, "flags": 2, "pid": 1}),
        # an exclusive cache lock on the first MiB; REVOKE "requests" never travel
        c.CACHE: ({"oid": 42, "length": 1 << 20}, {"type": 1}),
        c.REVOKE: ({}, {}),
        c.RESIZE: ({}, {}),  # likewise only ever an answer
        c.MARKED: ({}, {}),  # likewise
        c.LEASE: ({}, path),
        c.VERSION: ({}, path),
        # a resync's: the version of the copy, if the object is still as it was read
        c.SETVERSION: ({}, {**path, "expect": (1 << 62) - 1, "version": 1 << 61}),
        c.PEERS: ({}, {}),
        c.MISSING: ({}, {"names": (b"10.0.0.2:7400", b"[::1]:7401"), "now": 1}),
        c.CLEAR: ({}, {"cred": CRED, "names": (b"10.0.0.2:7400",), "expect": 7}),
    }


def _reply_fields() -> dict[Command, tuple[dict[str, Any], dict[str, Any]]]:
    """Per command: (header numbers, payload fields) of a realistic success reply."""
    c = Command
    out: dict[Command, tuple[dict[str, Any], dict[str, Any]]] = {cmd: ({}, {}) for cmd in c}
    out.update(
        {
            c.HELLO: ({}, {"version": p.VERSION, "auth": p.AUTH_SECRET, "nonce": bytes(32)}),
            c.AUTH: (
                {},
                {
                    "max_payload": 4 << 20,
                    "idle_ms": 600_000,
                    "caps": int(Cap.READ_ONLY | Cap.XATTR),
                    "fsid": 0xDEAD_BEEF_CAFE_F00D,
                    "statfs": STATFS,
                    "proof": b"\xff" * 32,
                    "resumed": 1,
                },
            ),
            c.STATFS: ({}, {"statfs": STATFS}),
            c.LOOKUP: ({}, {"attr": ATTR_FILE}),
            c.READDIR: ({}, {"entries": ENTRIES}),
            c.OPEN: (
                {"oid": 77},
                {
                    "attr": ATTR_FILE,
                    "writers": 2,
                    "cached": 0,
                    "dir": ATTR_DIR,
                    "fid": FID,
                    "watchers": 1,
                    "version": (1 << 62) - 3,
                },
            ),
            c.READ: ({"offset": 1 << 33}, {"data": memoryview(DATA)}),
            c.FSTAT: ({}, {"attr": ATTR_DEV}),
            c.MKDIR: ({}, {"attr": ATTR_DIR, "dir": ATTR_DIR}),
            c.MAKEDIRS: ({}, {"attr": ATTR_DIR}),
            c.LINK: ({}, {"attr": ATTR_FILE._replace(nlink=2), "dir": ATTR_DIR}),
            c.SYMLINK: ({}, {"attr": ATTR_FILE._replace(mode=0o120777), "dir": ATTR_DIR}),
            c.MKNOD: ({}, {"attr": ATTR_DEV, "dir": ATTR_DIR}),
            c.UNLINK: ({}, {"dir": ATTR_DIR}),
            c.RMDIR: ({}, {"dir": ATTR_DIR}),
            c.RENAME: ({}, {"dir": ATTR_DIR, "new_dir": ATTR_DIR._replace(ino=99)}),
            c.READLINK: ({}, {"target": b"/tmp/\xff\xfe"}),
            c.GETXATTR: ({}, {"value": XATTR_VALUE}),
            c.LISTXATTR: ({}, {"names": (b"user.a", b"user.\xff\xfe", b"security.selinux")}),
            c.WRITE: ({"length": len(DATA)}, {}),
            c.COPY: ({"length": 1 << 24, "offset": 4096 + (1 << 24)}, {}),
            c.GETLK: ({"offset": 100, "length": 0}, {"type": 1, "pid": 4242}),
            c.CACHE: ({}, {"attr": ATTR_FILE, "writers": 0, "watchers": 3}),
            c.LEASE: ({"oid": 78}, {"attr": ATTR_FILE, "cached": 0}),
            c.VERSION: ({}, {"version": (1 << 62) - 1, "busy": 2}),
            c.PEERS: ({}, {"behind": (b"10.0.0.2:7400 3",)}),
        }
    )
    return out


REQUEST_SAMPLES = _request_fields()
REPLY_SAMPLES = _reply_fields()


def sample_request(cmd: Command, xid: int = 7) -> Message:
    numbers, fields = REQUEST_SAMPLES[cmd]
    return request(cmd, xid, **numbers, **fields)


def sample_reply(cmd: Command, xid: int = 7, more: bool = False) -> Message:
    numbers, fields = REPLY_SAMPLES[cmd]
    return reply(sample_request(cmd, xid), more=more, **numbers, **fields)


def raw_header(
    cmd: int = Command.PING,
    *,
    magic: int = MAGIC,
    flags: int = 0,
    tag_len: int = 0,
    status: int = 0,
    plen: int = 0,
    xid: int = 7,
    oid: int = 0,
    offset: int = 0,
    length: int = 0,
) -> bytes:
    """A header built by hand, so it can be as wrong as a test needs."""
    return struct.pack(
        "!HHHHIIQQQQ", magic, cmd, flags, tag_len, status, plen, xid, oid, offset, length
    )


def raw_frame(cmd: int, payload: bytes, **kw: Any) -> bytes:
    return raw_header(cmd, plen=len(payload), **kw) + payload


def feed_all(dec: FrameDecoder, chunks: Iterable[bytes | bytearray | memoryview]) -> list[Message]:
    out: list[Message] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    return out


def decode_one(frame: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Message:
    dec = FrameDecoder(max_payload)
    msgs = list(dec.feed(frame))
    assert len(msgs) == 1
    assert dec.pending == 0
    return msgs[0]


def payload_of(msg: Message) -> bytes:
    return msg.to_bytes()[HEADER_SIZE:]


def all_sample_messages() -> list[Message]:
    msgs: list[Message] = []
    for i, cmd in enumerate(Command):
        msgs.append(sample_request(cmd, xid=2 * i + 1))
        msgs.append(sample_reply(cmd, xid=2 * i + 1))
        msgs.append(reply(sample_request(cmd, 1000 + i), status=errno.ENOENT, data=b"no \xff"))
    return msgs


ALL_MESSAGES = all_sample_messages()
STREAM = b"".join(m.to_bytes() for m in ALL_MESSAGES)


# --- header -----------------------------------------------------------------


def test_header_size_is_48() -> None:
    assert HEADER_SIZE == 48
    assert HEADER.size == 48
    assert len(Header(Command.PING, 0, 0, 0, 1).pack()) == 48


def test_header_pack_layout() -> None:
    h = Header(Command.READ, int(Flag.REPLY | Flag.MORE), 5, 1000, 0x0102030405060708, 9, 10, 11)
    assert h.pack() == raw_header(
        Command.READ,
        flags=5,
        status=5,
        plen=1000,
        xid=0x0102030405060708,
        oid=9,
        offset=10,
        length=11,
    )
    # Network byte order, magic "PO" first, tag_len always zero.
    assert h.pack()[:8] == b"PO\x00\x08\x00\x05\x00\x00"


def test_header_unpack_reads_every_field() -> None:
    raw = raw_header(
        Command.WRITE, flags=1, status=U32_MAX, plen=3, xid=U64_MAX, oid=1, offset=2, length=3
    )
    h = Header.unpack(raw, 3)
    assert h == Header(Command.WRITE, 1, U32_MAX, 3, U64_MAX, 1, 2, 3)
    assert isinstance(h.cmd, Command)


def test_header_unpack_accepts_any_buffer_type_and_ignores_what_follows() -> None:
    raw = raw_header(Command.PING, xid=3) + b"payload bytes"
    for buf in (raw, bytearray(raw), memoryview(raw)):
        assert Header.unpack(buf, 100) == Header(Command.PING, 0, 0, 0, 3)


@settings(max_examples=150, deadline=None)
@given(
    cmd=st.sampled_from(list(Command)),
    flags=st.sampled_from([0, int(Flag.REPLY), int(Flag.REPLY | Flag.MORE)]),
    status=st.integers(0, U32_MAX),
    plen=st.integers(0, U32_MAX),
    xid=st.integers(0, U64_MAX),
    oid=st.integers(0, U64_MAX),
    offset=st.integers(0, U64_MAX),
    length=st.integers(0, U64_MAX),
)
def test_header_pack_unpack_roundtrip(
    cmd: Command, flags: int, status: int, plen: int, xid: int, oid: int, offset: int, length: int
) -> None:
    if not flags & Flag.REPLY:
        status = 0
    h = Header(cmd, flags, status, plen, xid, oid, offset, length)
    raw = h.pack()
    assert len(raw) == HEADER_SIZE
    assert Header.unpack(raw, U32_MAX) == h
    assert Header.unpack(raw, U32_MAX).pack() == raw


def test_header_unpack_truncated() -> None:
    raw = raw_header()
    for n in (0, 1, 47):
        with pytest.raises(ProtocolError):
            Header.unpack(raw[:n], 100)


# --- round trips of every command -------------------------------------------


def test_samples_cover_every_command() -> None:
    assert set(REQUEST_SAMPLES) == set(Command)
    assert set(REPLY_SAMPLES) == set(Command)
    # Every schema field of every request and reply is exercised.
    for cmd in Command:
        assert set(REQUEST_SAMPLES[cmd][1]) == {n for n, _ in p.REQUESTS[cmd]}
        assert set(REPLY_SAMPLES[cmd][1]) == {n for n, _ in p.REPLIES[cmd]}


def _check_roundtrip(msg: Message) -> Message:
    parts = msg.encode()
    frame = msg.to_bytes()
    assert frame == b"".join(bytes(x) for x in parts)
    assert parts[0] == frame[:HEADER_SIZE]
    header = Header.unpack(frame, DEFAULT_MAX_PAYLOAD)
    assert header.payload_len == len(frame) - HEADER_SIZE
    assert (header.cmd, header.xid, header.flags, header.status) == (
        msg.cmd,
        msg.xid,
        msg.flags,
        msg.status,
    )
    got = decode_one(frame)
    assert got == msg
    assert got.fields == msg.fields
    assert (got.oid, got.offset, got.length) == (msg.oid, msg.offset, msg.length)
    # Decoding is canonical: re-encoding what was decoded gives the same bytes.
    assert got.to_bytes() == frame
    # decode_payload agrees with the FrameDecoder.
    assert decode_payload(header, frame[HEADER_SIZE:]) == msg
    return got


@pytest.mark.parametrize("cmd", list(Command), ids=lambda c: c.name)
def test_request_roundtrip(cmd: Command) -> None:
    msg = sample_request(cmd, xid=0x0123_4567_89AB_CDEF)
    assert not msg.is_reply
    assert msg.flags == 0 and msg.status == 0
    got = _check_roundtrip(msg)
    assert not got.is_reply
    for name, value in REQUEST_SAMPLES[cmd][1].items():
        assert got[name] == value


@pytest.mark.parametrize("cmd", list(Command), ids=lambda c: c.name)
def test_reply_roundtrip(cmd: Command) -> None:
    req = sample_request(cmd, xid=99)
    msg = sample_reply(cmd, xid=99)
    assert msg.is_reply
    assert msg.cmd == req.cmd and msg.xid == req.xid
    assert msg.flags == Flag.REPLY and msg.status == 0
    got = _check_roundtrip(msg)
    assert got.is_reply
    for name, value in REPLY_SAMPLES[cmd][1].items():
        assert got[name] == value


def test_decoded_structures_have_their_types() -> None:
    got = decode_one(sample_request(Command.LOOKUP).to_bytes())
    assert isinstance(got["cred"], Cred)
    assert got["cred"].groups == CRED.groups
    assert isinstance(got["cred"].groups, tuple)
    assert isinstance(got["path"], bytes)

    got = decode_one(sample_reply(Command.READDIR).to_bytes())
    assert isinstance(got["entries"], tuple)
    assert all(type(e) is DirEntry and type(e.attr) is Attr for e in got["entries"])
    assert got["entries"][2].name == b"\xff\xfe"
    assert got["entries"][2].attr.atime_ns == ATTR_FILE.atime_ns

    got = decode_one(sample_reply(Command.AUTH).to_bytes())
    assert type(got["statfs"]) is StatFs
    assert got["statfs"].files == U64_MAX

    got = decode_one(sample_reply(Command.LISTXATTR).to_bytes())
    assert got["names"] == (b"user.a", b"user.\xff\xfe", b"security.selinux")
    assert isinstance(got["names"], tuple)


def test_reply_built_from_header_matches_reply_built_from_message() -> None:
    req = sample_request(Command.LOOKUP, xid=1234)
    header = Header.unpack(req.to_bytes(), DEFAULT_MAX_PAYLOAD)
    a = reply(header, attr=ATTR_FILE)
    b = reply(req, attr=ATTR_FILE)
    assert a == b
    assert a.to_bytes() == b.to_bytes()


def test_header_numbers_default_to_zero() -> None:
    frame = request(Command.PING, 5).to_bytes()
    assert frame == raw_header(Command.PING, xid=5)


@pytest.mark.parametrize(
    "buf",
    [DATA, bytearray(DATA), memoryview(DATA), memoryview(bytearray(DATA))[10:-10], b""],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice", "empty"],
)
def test_data_buffers_are_sent_uncopied_and_received_as_memoryview(buf: Any) -> None:
    msg = request(Command.WRITE, 3, oid=1, offset=2, data=buf)
    parts = msg.encode()
    assert parts[-1] is buf  # zero copy: the caller's buffer goes to sendmsg as is
    frame = msg.to_bytes()
    assert frame[HEADER_SIZE:] == bytes(buf)
    got = decode_one(frame)
    assert isinstance(got["data"], memoryview)
    assert bytes(got["data"]) == bytes(buf)

    rep = reply(request(Command.READ, 3, oid=1, length=len(buf)), data=buf)
    assert rep.encode()[-1] is buf
    assert bytes(decode_one(rep.to_bytes())["data"]) == bytes(buf)


def test_data_memoryview_of_wide_items_counts_bytes() -> None:
    import array

    arr = array.array("I", [1, 2, 3, 0xFFFFFFFF])
    msg = request(Command.WRITE, 3, data=memoryview(arr))
    frame = msg.to_bytes()
    assert Header.unpack(frame, 100).payload_len == arr.itemsize * len(arr)
    assert bytes(decode_one(frame)["data"]) == arr.tobytes()


def test_decode_payload_returns_view_of_given_payload() -> None:
    frame = sample_request(Command.WRITE).to_bytes()
    header = Header.unpack(frame, DEFAULT_MAX_PAYLOAD)
    payload = bytearray(frame[HEADER_SIZE:])
    got = decode_payload(header, payload)
    assert got["data"].obj is payload
    assert bytes(got["data"]) == DATA


# --- golden bytes: the exact layout on the wire ------------------------------


def _be(n: int, width: int, signed: bool = False) -> bytes:
    return n.to_bytes(width, "big", signed=signed)


def _golden_attr(a: Attr) -> bytes:
    widths = (8, 4, 4, 4, 4, 8, 8, 8, 4, 8, 8, 8)
    return b"".join(
        _be(v, w, signed=i >= 9) for i, (v, w) in enumerate(zip(a, widths, strict=True))
    )


def test_golden_lookup_request() -> None:
    payload = (
        _be(1000, 4)
        + _be(100, 4)
        + _be(2, 2)
        + _be(4, 4)
        + _be(24, 4)
        + _be(len(b"a/\xff"), 4)  # paths: u32 length (names: u16)
        + b"a/\xff"
    )
    frame = request(Command.LOOKUP, 0x11, cred=Cred(1000, 100, (4, 24)), path=b"a/\xff").to_bytes()
    assert frame == raw_header(Command.LOOKUP, plen=len(payload), xid=0x11) + payload


def test_golden_lookup_reply_attr() -> None:
    body = _golden_attr(ATTR_FILE)
    assert len(body) == 76
    msg = reply(request(Command.LOOKUP, 9, cred=ROOT, path=b"x"), attr=ATTR_FILE)
    assert msg.to_bytes() == raw_header(Command.LOOKUP, flags=1, plen=76, xid=9) + body


def test_golden_statfs_reply() -> None:
    s = STATFS
    body = (
        _be(s.bsize, 4)
        + _be(s.frsize, 4)
        + b"".join(_be(v, 8) for v in (s.blocks, s.bfree, s.bavail, s.files, s.ffree))
        + _be(s.namemax, 4)
    )
    msg = reply(request(Command.STATFS, 9, cred=ROOT), statfs=s)
    assert payload_of(msg) == body


def test_golden_readdir_and_listxattr_reply() -> None:
    entries = (DirEntry(b"a", ATTR_DIR), DirEntry(b"\xff", ATTR_FILE))
    msg = reply(request(Command.READDIR, 1, cred=ROOT, path=b""), entries=entries)
    body = _be(2, 4)
    for e in entries:
        body += _be(len(e.name), 2) + e.name + _golden_attr(e.attr)
    assert payload_of(msg) == body

    msg = reply(request(Command.LISTXATTR, 1, cred=ROOT, path=b""), names=(b"u.a", b""))
    assert payload_of(msg) == _be(2, 4) + _be(3, 2) + b"u.a" + _be(0, 2)


def test_golden_setxattr_and_utimes_request() -> None:
    msg = request(Command.SETXATTR, 1, cred=ROOT, path=b"p", name=b"n", value=b"\0v", flags=U32_MAX)
    cred = _be(0, 4) + _be(0, 4) + _be(0, 2)
    expected = cred + _be(1, 4) + b"p" + _be(1, 2) + b"n" + _be(2, 4) + b"\0v" + _be(U32_MAX, 4)
    assert payload_of(msg) == expected

    msg = request(Command.UTIMES, 1, cred=ROOT, path=b"p", atime_ns=-2, mtime_ns=3, which=5)
    expected = cred + _be(1, 4) + b"p" + _be(-2, 8, True) + _be(3, 8) + _be(5, 4)
    assert payload_of(msg) == expected


# --- error and streamed replies ----------------------------------------------


@pytest.mark.parametrize("cmd", list(Command), ids=lambda c: c.name)
def test_error_reply_roundtrip(cmd: Command) -> None:
    req = sample_request(cmd, xid=55)
    msg = reply(req, status=errno.EACCES, data=b"Permission denied: \xff\xfe")
    assert msg.flags == Flag.REPLY and msg.status == errno.EACCES
    got = _check_roundtrip(msg)
    assert bytes(got["data"]) == b"Permission denied: \xff\xfe"
    assert set(got.fields) == {"data"}


def test_error_reply_without_message_has_empty_data() -> None:
    msg = reply(sample_request(Command.LOOKUP), status=errno.ENOENT)
    assert bytes(msg["data"]) == b""
    got = _check_roundtrip(msg)
    assert bytes(got["data"]) == b""


def test_error_reply_status_extremes() -> None:
    for status in (1, U32_MAX):
        msg = reply(sample_request(Command.OPEN), status=status, data=b"x")
        assert decode_one(msg.to_bytes()).status == status


def test_error_reply_rejects_success_fields() -> None:
    with pytest.raises(ProtocolError):
        reply(sample_request(Command.LOOKUP), status=errno.ENOENT, attr=ATTR_FILE)


def test_error_payload_is_raw_message_even_for_commands_with_fields() -> None:
    # A status != 0 selects the error schema: payload is just the message.
    frame = raw_frame(Command.READDIR, b"\x00\x00", flags=1, status=errno.ENOTDIR)
    got = decode_one(frame)
    assert bytes(got["data"]) == b"\x00\x00"


def test_streamed_read_reply() -> None:
    req = sample_request(Command.READ, xid=31)
    chunks = [DATA[i : i + 1000] for i in range(0, len(DATA), 1000)]
    frames = [
        reply(req, more=i < len(chunks) - 1, offset=i * 1000, data=memoryview(c))
        for i, c in enumerate(chunks)
    ]
    stream = b"".join(f.to_bytes() for f in frames)
    got = list(FrameDecoder().feed(stream))
    assert got == frames
    assert all(m.xid == 31 and m.is_reply for m in got)
    assert [bool(m.flags & Flag.MORE) for m in got] == [True] * (len(chunks) - 1) + [False]
    assert b"".join(bytes(m["data"]) for m in got) == DATA


def test_streamed_readdir_and_listxattr_replies() -> None:
    req = sample_request(Command.READDIR, xid=8)
    frames = [
        reply(req, more=True, entries=ENTRIES[:2]),
        reply(req, more=True, entries=()),
        reply(req, more=True, entries=ENTRIES[2:]),
        reply(req, status=errno.EIO, data=b"disk on fire"),
    ]
    req2 = sample_request(Command.LISTXATTR, xid=9)
    frames += [reply(req2, more=True, names=(b"user.a",)), reply(req2, names=(b"user.\xff",))]
    stream = b"".join(f.to_bytes() for f in frames)
    got = feed_all(FrameDecoder(), [stream[i : i + 7] for i in range(0, len(stream), 7)])
    assert got == frames
    assert got[0].flags == Flag.REPLY | Flag.MORE
    assert got[3].flags == Flag.REPLY and got[3].status == errno.EIO
    assert sum((m["entries"] for m in got[:3]), ()) == ENTRIES


def test_streamed_error_reply_with_more() -> None:
    msg = reply(sample_request(Command.READ), status=errno.EIO, more=True, data=b"partial")
    got = decode_one(msg.to_bytes())
    assert got.flags == Flag.REPLY | Flag.MORE and got.status == errno.EIO


# --- chunking ------------------------------------------------------------------


def test_stream_whole() -> None:
    dec = FrameDecoder()
    assert list(dec.feed(STREAM)) == ALL_MESSAGES
    assert dec.pending == 0


def test_stream_byte_by_byte() -> None:
    dec = FrameDecoder()
    got: list[Message] = []
    frame_ends = set()
    pos = 0
    for m in ALL_MESSAGES:
        pos += len(m.to_bytes())
        frame_ends.add(pos)
    for i in range(len(STREAM)):
        out = list(dec.feed(STREAM[i : i + 1]))
        # A message comes out exactly when its last byte arrives, not before.
        assert len(out) == (1 if i + 1 in frame_ends else 0)
        got.extend(out)
    assert got == ALL_MESSAGES
    assert dec.pending == 0


@pytest.mark.parametrize("seed", range(8))
def test_stream_random_chunking(seed: int) -> None:
    rng = random.Random(seed)
    chunks: list[bytes | bytearray | memoryview] = []
    pos = 0
    while pos < len(STREAM):
        n = rng.choice([0, 1, 2, 47, 48, 49, rng.randrange(1, 5000)])
        chunk = STREAM[pos : pos + n]
        chunks.append(rng.choice([bytes, bytearray, memoryview])(chunk))
        pos += n
    dec = FrameDecoder()
    assert feed_all(dec, chunks) == ALL_MESSAGES
    assert dec.pending == 0


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_stream_arbitrary_cut_points(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    dec = FrameDecoder()
    assert feed_all(dec, chunks) == ALL_MESSAGES
    assert dec.pending == 0


def test_pending_counts_partial_frame() -> None:
    frame = sample_request(Command.WRITE).to_bytes()
    dec = FrameDecoder()
    assert dec.pending == 0
    assert list(dec.feed(frame[:10])) == []
    assert dec.pending == 10
    assert list(dec.feed(frame[10:60])) == []
    assert dec.pending == 60
    assert list(dec.feed(frame[60:-1])) == []
    assert dec.pending == len(frame) - 1
    assert len(list(dec.feed(frame[-1:]))) == 1
    assert dec.pending == 0


def test_caller_buffer_reuse_does_not_corrupt_decoder() -> None:
    frame = sample_request(Command.WRITE).to_bytes()
    buf = bytearray(frame[:100])
    dec = FrameDecoder()
    assert list(dec.feed(memoryview(buf))) == []
    buf[:] = b"\xaa" * len(buf)  # the caller reuses its receive buffer
    got = list(dec.feed(frame[100:]))
    assert got == [sample_request(Command.WRITE)]


def test_decoded_data_survives_later_feeds() -> None:
    a = request(Command.WRITE, 1, data=b"A" * 100).to_bytes()
    b = request(Command.WRITE, 2, data=b"B" * 100).to_bytes()
    dec = FrameDecoder()
    (first,) = list(dec.feed(a + b[:50]))
    list(dec.feed(b[50:]))
    assert bytes(first["data"]) == b"A" * 100


# --- malformed frames ------------------------------------------------------------


def expect_error(frame: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> ProtocolError:
    """Feed frame whole and byte by byte; both must raise ProtocolError."""
    with pytest.raises(ProtocolError) as whole:
        list(FrameDecoder(max_payload).feed(frame))
    dec = FrameDecoder(max_payload)
    with pytest.raises(ProtocolError):
        for i in range(len(frame)):
            list(dec.feed(frame[i : i + 1]))
    return whole.value


@pytest.mark.parametrize("magic", [0, 0x4F50, MAGIC + 1, 0xFFFF])
def test_bad_magic(magic: int) -> None:
    e = expect_error(raw_header(magic=magic))
    assert e.skip is None
    with pytest.raises(ProtocolError):
        Header.unpack(raw_header(magic=magic), 100)


@pytest.mark.parametrize("cmd", [0, max(Command) + 1, 0x100, 0xFFFF])
def test_unknown_command_sets_skip(cmd: int) -> None:
    frame = raw_frame(cmd, b"xyz", xid=0xABCDEF0123)
    e = expect_error(frame)
    assert e.skip == (cmd, 0xABCDEF0123, 3)
    with pytest.raises(ProtocolError) as info:
        Header.unpack(frame, 100)
    assert info.value.skip == (cmd, 0xABCDEF0123, 3)


def test_pending_is_an_empty_interim_reply() -> None:
    msg = decode_one(p.pending(sample_request(Command.CACHE, xid=99)).to_bytes())
    assert (msg.cmd, msg.xid, msg.flags, msg.fields) == (
        Command.CACHE,
        99,
        p.FLAG_REPLY | p.FLAG_PENDING,
        {},
    )
    # with a payload, a status or MORE it is not one
    expect_error(raw_frame(Command.CACHE, b"x", flags=p.FLAG_REPLY | p.FLAG_PENDING))
    expect_error(raw_header(Command.CACHE, flags=p.FLAG_REPLY | p.FLAG_PENDING, status=5))
    expect_error(raw_header(Command.CACHE, flags=p.FLAG_REPLY | p.FLAG_PENDING | p.FLAG_MORE))


def test_behind_marks_a_request_only() -> None:
    msg = decode_one(request(Command.CLOSE, 5, oid=9, behind=True).to_bytes())
    assert (msg.flags, msg.oid, msg.is_reply) == (p.FLAG_BEHIND, 9, False)
    expect_error(raw_header(Command.CLOSE, flags=p.FLAG_BEHIND | p.FLAG_REPLY))
    expect_error(raw_header(Command.REVOKE, flags=p.FLAG_BEHIND | p.FLAG_NOTIFY))


def test_resent_marks_a_request_only() -> None:
    msg = decode_one(p.Message(Command.UNLINK, 5, p.FLAG_RESENT | p.FLAG_BEHIND, 0, 0, 0, 0,
                             {"cred": CRED, "path": PATH}).to_bytes())  # fmt: skip
    assert msg.flags == p.FLAG_RESENT | p.FLAG_BEHIND and not msg.is_reply
    expect_error(raw_header(Command.CLOSE, flags=p.FLAG_RESENT | p.FLAG_REPLY))
    expect_error(raw_header(Command.REVOKE, flags=p.FLAG_RESENT | p.FLAG_NOTIFY))


@pytest.mark.parametrize("flags", [0x8, 0x80, 0x8000, 0xFFFF, 0xD, 0xA, 0x11])
def test_unknown_flags_sets_skip(flags: int) -> None:
    e = expect_error(raw_frame(Command.LOOKUP, b"\0" * 12, flags=flags, xid=3))
    assert e.skip == (Command.LOOKUP, 3, 12)


@pytest.mark.parametrize(
    "flags, status",
    [
        (Flag.REPLY | Flag.NOTIFY, 0),
        (Flag.REPLY | Flag.NOTIFY | Flag.MORE, 0),
        (Flag.MORE, 0),
        (Flag.MORE | Flag.NOTIFY, 0),
        (0, 1),
        (0, U32_MAX),
        (Flag.NOTIFY, errno.EIO),
    ],
    ids=[
        "reply+notify",
        "reply+notify+more",
        "more-only",
        "more+notify",
        "status-on-request",
        "max-status-on-request",
        "status-on-notify",
    ],
)
def test_inconsistent_flags_set_skip(flags: int, status: int) -> None:
    e = expect_error(raw_frame(Command.PING, b"ab", flags=int(flags), status=status, xid=4))
    assert e.skip == (Command.PING, 4, 2)


@pytest.mark.parametrize("tag_len", [1, 16, 0xFFFF])
def test_nonzero_tag_len(tag_len: int) -> None:
    # 16 is a tag's length, but a tag is checked by a socket reader holding the keys
    e = expect_error(raw_header(tag_len=tag_len))
    assert e.skip is None  # the trailer length is unknown: framing is lost


def test_a_header_with_a_tag_is_read_with_its_length() -> None:
    assert Header.unpack(raw_header(tag_len=p.TAG_SIZE), 1 << 20).tag_len == p.TAG_SIZE
    with pytest.raises(ProtocolError, match="tag of 1 bytes"):
        Header.unpack(raw_header(tag_len=1), 1 << 20)


def test_payload_at_limit_is_accepted() -> None:
    frame = request(Command.WRITE, 1, data=b"z" * 1024).to_bytes()
    assert bytes(decode_one(frame, max_payload=1024)["data"]) == b"z" * 1024


@pytest.mark.parametrize("plen", [1025, 1 << 20, U32_MAX])
def test_payload_over_limit_rejected_at_header(plen: int) -> None:
    header = raw_header(Command.WRITE, plen=plen)
    e = expect_error(header, max_payload=1024)
    assert e.skip is None
    # Byte by byte: silent for 47 bytes, an error on the 48th, without
    # waiting for (or buffering) any of the announced payload.
    dec = FrameDecoder(1024)
    for i in range(HEADER_SIZE - 1):
        assert list(dec.feed(header[i : i + 1])) == []
    with pytest.raises(ProtocolError):
        list(dec.feed(header[-1:]))
    assert dec.pending <= HEADER_SIZE


def test_default_limit_applies() -> None:
    assert FrameDecoder().max_payload == DEFAULT_MAX_PAYLOAD
    expect_error(raw_header(Command.WRITE, plen=DEFAULT_MAX_PAYLOAD + 1))


def test_decoder_buffer_bounded_while_waiting_for_payload() -> None:
    max_payload = 4096
    frame = request(Command.WRITE, 1, data=b"q" * max_payload).to_bytes()
    dec = FrameDecoder(max_payload)
    for i in range(0, len(frame) - 1, 100):
        assert list(dec.feed(frame[i : min(i + 100, len(frame) - 1)])) == []
        assert dec.pending <= HEADER_SIZE + max_payload
    assert len(list(dec.feed(frame[-1:]))) == 1
    assert dec.pending == 0


def test_oversized_frame_after_good_frames() -> None:
    good = sample_request(Command.LOOKUP).to_bytes()
    bad = raw_header(Command.WRITE, plen=2000)
    dec = FrameDecoder(1024)
    assert dec.feed(good + good + bad) == [sample_request(Command.LOOKUP)] * 2
    with pytest.raises(ProtocolError):
        dec.feed(b"")


def _cred_bytes(uid: int = 1, gid: int = 2, groups: tuple[int, ...] = ()) -> bytes:
    return struct.pack(f"!IIH{len(groups)}I", uid, gid, len(groups), *groups)


def _name_bytes(name: bytes) -> bytes:
    return struct.pack("!H", len(name)) + name


def _path_bytes(path: bytes) -> bytes:
    return struct.pack("!I", len(path)) + path


ATTR_BYTES = _golden_attr(ATTR_FILE)

# (command, flags, status, payload) of payloads that must not decode.
BAD_PAYLOADS: list[tuple[str, Command, int, bytes]] = [
    ("empty-lookup", Command.LOOKUP, 0, b""),
    ("cred-truncated", Command.STATFS, 0, _cred_bytes()[:9]),
    ("groups-truncated", Command.STATFS, 0, _cred_bytes(groups=(1, 2, 3))[:-1]),
    ("groups-count-too-big", Command.STATFS, 0, _cred_bytes()[:8] + b"\x00\x05" + b"\0" * 16),
    ("path-len-too-big", Command.LOOKUP, 0, _cred_bytes() + b"\0\0\x00\x10" + b"abc"),
    ("path-len-missing", Command.LOOKUP, 0, _cred_bytes() + b"\x00\x00\x00"),
    ("path-len-ffffffff", Command.LOOKUP, 0, _cred_bytes() + b"\xff" * 4 + b"a" * 100),
    ("name-len-too-big", Command.GETXATTR, 0, _cred_bytes() + _path_bytes(b"p") + b"\0\x10ab"),
    ("name-len-ffff", Command.GETXATTR, 0, _cred_bytes() + _path_bytes(b"p") + b"\xff\xffab"),
    ("u32-truncated", Command.MKDIR, 0, _cred_bytes() + _path_bytes(b"d") + b"\0\0\0"),
    ("u64-truncated", Command.MKNOD, 0, _cred_bytes() + _path_bytes(b"d") + b"\0" * 11),
    ("i64-truncated", Command.UTIMES, 0, _cred_bytes() + _path_bytes(b"d") + b"\0" * 19),
    ("fsync-empty", Command.FSYNC, 0, b""),
    ("second-path-missing", Command.RENAME, 0, _cred_bytes() + _path_bytes(b"a")),
    ("fid-truncated", Command.OPEN, 1, ATTR_BYTES + b"\0" * 8 + ATTR_BYTES + b"\0" * 15),
    ("watchers-missing", Command.OPEN, 1, ATTR_BYTES + b"\0" * 8 + ATTR_BYTES + b"\0" * 16),
    ("version-truncated", Command.OPEN, 1, ATTR_BYTES + b"\0" * 8 + ATTR_BYTES + b"\0" * 27),
    (
        "blob-len-too-big",
        Command.SETXATTR,
        0,
        _cred_bytes() + _path_bytes(b"p") + _name_bytes(b"n") + b"\x00\x00\x01\x00" + b"v",
    ),
    ("attr-truncated", Command.LOOKUP, 1, ATTR_BYTES[:-1]),
    ("statfs-truncated", Command.STATFS, 1, b"\0" * 47),
    ("hello-reply-truncated", Command.HELLO, 1, b"\0" * 20),
    ("getxattr-blob-truncated", Command.GETXATTR, 1, b"\x00\x00\x00\x05abcd"),
    ("readlink-truncated", Command.READLINK, 1, b"\x00\x05abcd"),
    ("names-count-too-big", Command.LISTXATTR, 1, b"\x00\x00\x00\x02" + _name_bytes(b"a")),
    ("names-count-huge", Command.LISTXATTR, 1, b"\xff\xff\xff\xff" + _name_bytes(b"a")),
    ("names-count-truncated", Command.LISTXATTR, 1, b"\x00\x00"),
    (
        "entries-count-too-big",
        Command.READDIR,
        1,
        b"\x00\x00\x00\x02" + _name_bytes(b"a") + ATTR_BYTES,
    ),
    ("entries-attr-truncated", Command.READDIR, 1, b"\x00\x00\x00\x01" + _name_bytes(b"a")),
    ("entries-count-truncated", Command.READDIR, 1, b"\x00"),
]


@pytest.mark.parametrize(
    "cmd, flags, payload", [b[1:] for b in BAD_PAYLOADS], ids=[b[0] for b in BAD_PAYLOADS]
)
def test_truncated_payload_fields(cmd: Command, flags: int, payload: bytes) -> None:
    e = expect_error(raw_frame(cmd, payload, flags=flags))
    assert isinstance(e, ProtocolError)
    with pytest.raises(ProtocolError):
        decode_payload(Header(cmd, flags, 0, len(payload), 1), payload)


def test_entries_absurd_count_fails_fast() -> None:
    # 2**32-1 entries announced in a 4-byte payload: refused up front, not by
    # looping or allocating billions of entries.
    for count in (U32_MAX, 1 << 20, 2):
        payload = struct.pack("!I", count) + _name_bytes(b"") + ATTR_BYTES[:-2]
        with pytest.raises(ProtocolError):
            decode_payload(Header(Command.READDIR, 1, 0, len(payload), 1), payload)
    payload = struct.pack("!I", U32_MAX)
    with pytest.raises(ProtocolError):
        decode_payload(Header(Command.READDIR, 1, 0, 4, 1), payload)


@pytest.mark.parametrize("cmd", list(Command), ids=lambda c: c.name)
def test_trailing_garbage_after_payload(cmd: Command) -> None:
    for msg in (sample_request(cmd), sample_reply(cmd)):
        if msg.schema and msg.schema[-1] == p.DATA:
            continue  # a trailing data field takes the rest of the payload
        payload = payload_of(msg) + b"\x00"
        e = expect_error(raw_frame(cmd, payload, flags=msg.flags))
        assert isinstance(e, ProtocolError)
        with pytest.raises(ProtocolError):
            decode_payload(Header(cmd, msg.flags, 0, len(payload), 7), payload)


def test_decode_payload_length_must_match_header() -> None:
    payload = payload_of(sample_request(Command.LOOKUP))
    for delta in (-1, 1):
        header = Header(Command.LOOKUP, 0, 0, len(payload) + delta, 1)
        with pytest.raises(ProtocolError):
            decode_payload(header, payload)


@pytest.mark.parametrize("name", [b"\0", b"a\0b", b"abc\0", b"\0" * 10])
def test_nul_in_name_rejected_on_decode(name: bytes) -> None:
    payload = _cred_bytes() + _path_bytes(name)
    expect_error(raw_frame(Command.LOOKUP, payload))
    # also in the second path, in directory entries, in xattr names, in HELLO
    payload = _cred_bytes() + _path_bytes(b"ok") + _path_bytes(name) + b"\0\0\0\0"
    expect_error(raw_frame(Command.RENAME, payload))
    payload = _cred_bytes() + _path_bytes(b"ok") + _name_bytes(name)
    expect_error(raw_frame(Command.GETXATTR, payload))
    payload = b"\0\0\0\x01" + _name_bytes(name) + ATTR_BYTES
    expect_error(raw_frame(Command.READDIR, payload, flags=1))
    payload = b"\0\0\0\x01" + _name_bytes(name)
    expect_error(raw_frame(Command.LISTXATTR, payload, flags=1))
    payload = b"\0\0\0\x01\0\0\0\x10\0\0\0\x10\0\0\0\0" + _name_bytes(name)
    expect_error(raw_frame(Command.HELLO, payload))


def test_nul_allowed_in_xattr_value_and_data() -> None:
    msg = request(Command.SETXATTR, 1, cred=ROOT, path=b"p", name=b"n", value=b"\0", flags=0)
    assert decode_one(msg.to_bytes())["value"] == b"\0"
    msg = request(Command.WRITE, 1, data=b"\0\0")
    assert bytes(decode_one(msg.to_bytes())["data"]) == b"\0\0"


def test_path_length_limit() -> None:
    """Paths are counted from the export's root: longer than a syscall's PATH_MAX."""
    ok = b"d/" * (MAX_PATH // 2)
    msg = request(Command.LOOKUP, 1, cred=ROOT, path=ok)
    assert decode_one(msg.to_bytes())["path"] == ok
    too_long = b"x" * (MAX_PATH + 1)
    expect_error(raw_frame(Command.LOOKUP, _cred_bytes() + _path_bytes(too_long)))
    with pytest.raises(ProtocolError):
        request(Command.LOOKUP, 1, cred=ROOT, path=too_long).encode()


def test_name_length_limit() -> None:
    ok = b"x" * MAX_NAME
    msg = request(Command.GETXATTR, 1, cred=ROOT, path=b"p", name=ok)
    assert decode_one(msg.to_bytes())["name"] == ok
    too_long = b"x" * (MAX_NAME + 1)
    payload = _cred_bytes() + _path_bytes(b"p") + _name_bytes(too_long)
    expect_error(raw_frame(Command.GETXATTR, payload))
    with pytest.raises(ProtocolError):
        request(Command.GETXATTR, 1, cred=ROOT, path=b"p", name=too_long).encode()


def test_xattr_value_length_limit() -> None:
    ok = b"v" * MAX_XATTR_VALUE
    msg = reply(sample_request(Command.GETXATTR), value=ok)
    assert decode_one(msg.to_bytes())["value"] == ok
    too_long = b"v" * (MAX_XATTR_VALUE + 1)
    expect_error(raw_frame(Command.GETXATTR, struct.pack("!I", len(too_long)) + too_long, flags=1))
    with pytest.raises(ProtocolError):
        reply(sample_request(Command.GETXATTR), value=too_long).encode()


def test_too_many_groups() -> None:
    groups = tuple(range(MAX_GROUPS))
    msg = request(Command.STATFS, 1, cred=Cred(1, 2, groups))
    assert decode_one(msg.to_bytes())["cred"].groups == groups

    over = tuple(range(MAX_GROUPS + 1))
    expect_error(raw_frame(Command.STATFS, _cred_bytes(groups=over)))
    # A huge count with too little data behind it is refused as well.
    expect_error(raw_frame(Command.STATFS, _cred_bytes()[:8] + b"\xff\xff"))
    with pytest.raises(ProtocolError):
        request(Command.STATFS, 1, cred=Cred(1, 2, over)).encode()


@pytest.mark.parametrize("cmd", list(Command), ids=lambda c: c.name)
def test_notifications_are_not_defined(cmd: Command) -> None:
    header = Header.unpack(raw_header(cmd, flags=int(Flag.NOTIFY)), 100)
    assert header.flags == Flag.NOTIFY
    with pytest.raises(ProtocolError):
        decode_payload(header, b"")
    expect_error(raw_header(cmd, flags=int(Flag.NOTIFY)))
    expect_error(raw_frame(cmd, payload_of(sample_request(cmd)), flags=int(Flag.NOTIFY)))
    with pytest.raises(ProtocolError):
        Message(cmd, 1, int(Flag.NOTIFY))


def test_error_after_good_frames_yields_the_good_ones_first() -> None:
    good = sample_reply(Command.READDIR).to_bytes()
    bad = raw_frame(Command.LOOKUP, b"\x00")
    dec = FrameDecoder()
    assert dec.feed(good + bad) == [sample_reply(Command.READDIR)]
    with pytest.raises(ProtocolError):
        dec.feed(b"")


# --- encode-side validation ------------------------------------------------------


def _encode(make: Any) -> None:
    """Build and encode; any validation failure must be a ProtocolError."""
    make().encode()


LOOKUP_REQ = sample_request(Command.LOOKUP)
READDIR_REQ = sample_request(Command.READDIR)
LISTXATTR_REQ = sample_request(Command.LISTXATTR)


def _req(cmd: Command, **override: Any) -> Any:
    numbers, fields = REQUEST_SAMPLES[cmd]
    return lambda: request(cmd, 1, **numbers, **{**fields, **override})


BAD_ENCODES: dict[str, Any] = {
    # integers out of range or of the wrong type
    "u32-negative": _req(Command.MKDIR, mode=-1),
    "u32-too-big": _req(Command.MKDIR, mode=1 << 32),
    "u32-bool": _req(Command.FSYNC, datasync=True),
    "u32-float": _req(Command.FSYNC, datasync=1.0),
    "u32-str": _req(Command.FSYNC, datasync="1"),
    "u32-none": _req(Command.CHOWN, uid=None),
    "u64-too-big": _req(Command.MKNOD, rdev=1 << 64),
    "u64-negative": _req(Command.MKNOD, rdev=-1),
    "i64-too-big": _req(Command.UTIMES, atime_ns=1 << 63),
    "i64-too-small": _req(Command.UTIMES, mtime_ns=-(1 << 63) - 1),
    "hello-version-bytes": _req(Command.HELLO, version=b"\x01"),
    "hello-session-short": _req(Command.HELLO, session=b"s" * 15),
    "hello-session-str": _req(Command.HELLO, session="s" * 16),
    # names
    "name-str": _req(Command.LOOKUP, path="home/user"),
    "name-memoryview": _req(Command.LOOKUP, path=memoryview(b"x")),
    "name-none": _req(Command.LOOKUP, path=None),
    "name-int": _req(Command.RENAME, new=5),
    "name-nul": _req(Command.RENAME, new=b"a\0b"),
    "name-too-long": _req(Command.SYMLINK, target=b"t" * (MAX_PATH + 1)),
    "hello-client-str": _req(Command.HELLO, client="me"),
    # blobs
    "blob-str": _req(Command.SETXATTR, value="text"),
    "blob-none": _req(Command.SETXATTR, value=None),
    "blob-too-long": _req(Command.SETXATTR, value=b"v" * (MAX_XATTR_VALUE + 1)),
    # credentials
    "cred-none": _req(Command.STATFS, cred=None),
    "cred-int": _req(Command.STATFS, cred=1000),
    "cred-short": _req(Command.STATFS, cred=(1,)),
    "cred-long": _req(Command.STATFS, cred=(1, 2, (), 4)),
    "cred-uid-negative": _req(Command.STATFS, cred=Cred(-1, 0)),
    "cred-uid-too-big": _req(Command.STATFS, cred=Cred(1 << 32, 0)),
    "cred-gid-str": _req(Command.STATFS, cred=Cred(0, "wheel")),
    "cred-group-negative": _req(Command.STATFS, cred=Cred(0, 0, (1, -1))),
    "cred-group-too-big": _req(Command.STATFS, cred=Cred(0, 0, (1 << 32,))),
    "cred-groups-none": _req(Command.STATFS, cred=Cred(0, 0, None)),  # type: ignore[arg-type]
    "cred-groups-int": _req(Command.STATFS, cred=Cred(0, 0, 5)),  # type: ignore[arg-type]
    "cred-too-many-groups": _req(Command.STATFS, cred=Cred(0, 0, (0,) * (MAX_GROUPS + 1))),
    # attributes and statfs
    "attr-none": lambda: reply(LOOKUP_REQ, attr=None),
    "attr-short": lambda: reply(LOOKUP_REQ, attr=tuple(ATTR_FILE)[:-1]),
    "attr-long": lambda: reply(LOOKUP_REQ, attr=(*ATTR_FILE, 0)),
    "attr-negative-ino": lambda: reply(LOOKUP_REQ, attr=ATTR_FILE._replace(ino=-1)),
    "attr-mode-too-big": lambda: reply(LOOKUP_REQ, attr=ATTR_FILE._replace(mode=1 << 32)),
    "attr-time-too-big": lambda: reply(LOOKUP_REQ, attr=ATTR_FILE._replace(mtime_ns=1 << 63)),
    "attr-float": lambda: reply(LOOKUP_REQ, attr=ATTR_FILE._replace(size=1.5)),
    "statfs-short": lambda: reply(sample_request(Command.STATFS), statfs=(1, 2, 3)),
    "statfs-negative": lambda: reply(
        sample_request(Command.STATFS), statfs=STATFS._replace(bfree=-1)
    ),
    # names lists
    "names-none": lambda: reply(LISTXATTR_REQ, names=None),
    "names-int": lambda: reply(LISTXATTR_REQ, names=3),
    "names-str": lambda: reply(LISTXATTR_REQ, names="abc"),
    "names-bytes": lambda: reply(LISTXATTR_REQ, names=b"abc"),
    "names-str-item": lambda: reply(LISTXATTR_REQ, names=(b"a", "b")),
    "names-nul-item": lambda: reply(LISTXATTR_REQ, names=(b"a\0",)),
    # directory entries
    "entries-none": lambda: reply(READDIR_REQ, entries=None),
    "entries-int": lambda: reply(READDIR_REQ, entries=2),
    "entries-item-int": lambda: reply(READDIR_REQ, entries=(5,)),
    "entries-item-short": lambda: reply(READDIR_REQ, entries=((b"x",),)),
    "entries-item-bare-name": lambda: reply(READDIR_REQ, entries=(b"x",)),
    "entries-item-long": lambda: reply(READDIR_REQ, entries=((b"x", ATTR_FILE, 1),)),
    "entries-name-str": lambda: reply(READDIR_REQ, entries=(("x", ATTR_FILE),)),
    "entries-name-nul": lambda: reply(READDIR_REQ, entries=((b"x\0", ATTR_FILE),)),
    "entries-attr-bad": lambda: reply(READDIR_REQ, entries=((b"x", (1, 2)),)),
    # data
    "data-str": _req(Command.WRITE, data="text"),
    "data-int": _req(Command.WRITE, data=5),
    "data-list": _req(Command.WRITE, data=[1, 2]),
    "data-none": _req(Command.WRITE, data=None),
    "error-data-str": lambda: reply(LOOKUP_REQ, status=errno.ENOENT, data="no such file"),
}


@pytest.mark.parametrize("make", list(BAD_ENCODES.values()), ids=list(BAD_ENCODES))
def test_encode_rejects_bad_fields(make: Any) -> None:
    with pytest.raises(ProtocolError):
        _encode(make)


BAD_MESSAGES: dict[str, Any] = {
    # header numbers
    "xid-negative": lambda: request(Command.PING, -1),
    "xid-too-big": lambda: request(Command.PING, 1 << 64),
    "xid-str": lambda: request(Command.PING, "1"),
    "xid-none": lambda: request(Command.PING, None),
    "xid-float": lambda: request(Command.PING, 1.0),
    "oid-too-big": lambda: request(Command.CLOSE, 1, oid=1 << 64),
    "offset-negative": lambda: request(Command.READ, 1, offset=-1),
    "length-str": lambda: request(Command.READ, 1, length="4096"),
    "reply-oid-negative": lambda: reply(LOOKUP_REQ, oid=-1, attr=ATTR_FILE),
    "status-negative": lambda: reply(LOOKUP_REQ, status=-1, data=b""),
    "status-too-big": lambda: reply(LOOKUP_REQ, status=1 << 32, data=b""),
    "status-str": lambda: reply(LOOKUP_REQ, status="ENOENT"),
    "status-float": lambda: reply(LOOKUP_REQ, status=2.0, data=b""),
    "status-none-message": lambda: Message(Command.PING, 1, int(Flag.REPLY), None),
    # flags and commands on hand-built messages
    "flags-unknown": lambda: Message(Command.PING, 1, 0x8),
    "flags-too-big": lambda: Message(Command.PING, 1, 1 << 16),
    "flags-negative": lambda: Message(Command.PING, 1, -1),
    "flags-str": lambda: Message(Command.PING, 1, "1"),
    "flags-none": lambda: Message(Command.PING, 1, None),
    "flags-float": lambda: Message(Command.PING, 1, 1.0),
    "flags-reply-notify": lambda: Message(Command.PING, 1, int(Flag.REPLY | Flag.NOTIFY)),
    "flags-more-request": lambda: Message(Command.PING, 1, int(Flag.MORE)),
    "status-on-request": lambda: Message(Command.PING, 1, 0, errno.EIO),
    "cmd-unknown": lambda: Message(99, 1),
    "cmd-too-big": lambda: Message(1 << 16, 1),
    "cmd-str": lambda: Message("PING", 1),
    "cmd-none": lambda: Message(None, 1),
    # missing and extra fields
    "request-missing-field": lambda: request(Command.LOOKUP, 1, cred=CRED),
    "request-missing-all": lambda: request(Command.RENAME, 1),
    "request-extra-field": lambda: request(Command.PING, 1, cred=CRED),
    "request-misnamed-field": lambda: request(Command.LOOKUP, 1, cred=CRED, name=b"x"),
    "reply-missing-field": lambda: reply(LOOKUP_REQ),
    "reply-extra-field": lambda: reply(LOOKUP_REQ, attr=ATTR_FILE, size=1),
    "reply-request-fields": lambda: reply(LOOKUP_REQ, cred=CRED, path=PATH),
    "request-reply-fields": lambda: request(Command.LOOKUP, 1, attr=ATTR_FILE),
    "error-reply-extra-field": lambda: reply(LOOKUP_REQ, status=1, data=b"", attr=ATTR_FILE),
    "fields-none": lambda: Message(Command.PING, 1, fields=None),
    "fields-list": lambda: Message(Command.PING, 1, fields=[]),
}


@pytest.mark.parametrize("make", list(BAD_MESSAGES.values()), ids=list(BAD_MESSAGES))
def test_message_rejects_bad_header_values_and_field_sets(make: Any) -> None:
    with pytest.raises(ProtocolError):
        make().encode()


def test_integer_limits_are_inclusive() -> None:
    msg = request(
        Command.UTIMES,
        U64_MAX,
        oid=U64_MAX,
        offset=U64_MAX,
        length=U64_MAX,
        cred=Cred(U32_MAX, U32_MAX, (0, U32_MAX)),
        path=b"",
        atime_ns=-(1 << 63),
        mtime_ns=(1 << 63) - 1,
        which=U32_MAX,
    )
    assert decode_one(msg.to_bytes()) == msg
    msg = request(Command.MKNOD, 0, cred=ROOT, path=b"d", mode=0, rdev=U64_MAX)
    assert decode_one(msg.to_bytes())["rdev"] == U64_MAX


def test_fields_given_as_plain_tuples_and_lists_encode_like_namedtuples() -> None:
    a = request(Command.STATFS, 1, cred=(1, 2, [3, 4])).to_bytes()
    b = request(Command.STATFS, 1, cred=Cred(1, 2, (3, 4))).to_bytes()
    assert a == b
    a = reply(READDIR_REQ, entries=[(b"x", tuple(ATTR_FILE))]).to_bytes()
    b = reply(READDIR_REQ, entries=(DirEntry(b"x", ATTR_FILE),)).to_bytes()
    assert a == b
    a = reply(LISTXATTR_REQ, names=[b"a", bytearray(b"b")]).to_bytes()
    b = reply(LISTXATTR_REQ, names=(b"a", b"b")).to_bytes()
    assert a == b


# --- property tests ---------------------------------------------------------------

VALID_FRAMES = [m.to_bytes() for m in ALL_MESSAGES]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # noise
        return draw(st.binary(max_size=300))
    if kind == 1:  # a plausible header over an arbitrary payload
        payload = draw(st.binary(max_size=300))
        plen = draw(st.one_of(st.just(len(payload)), st.integers(0, 400)))
        header = raw_header(
            draw(st.integers(0, max(Command) + 2)),
            flags=draw(st.sampled_from([0, 1, 1, 2, 4, 5, 3, 8])),
            tag_len=draw(st.sampled_from([0, 0, 0, 0, 1])),
            status=draw(st.sampled_from([0, 0, 0, errno.EIO])),
            plen=plen,
            xid=draw(st.integers(0, U64_MAX)),
        )
        return header + payload
    # valid frames, then damaged: bytes flipped, cut, or spliced
    frames = draw(st.lists(st.sampled_from(VALID_FRAMES), min_size=1, max_size=4))
    data = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(0 if kind == 3 else 1, 4))):
        op = draw(st.integers(0, 2))
        i = draw(st.integers(0, len(data)))
        if op == 0 and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            del data[i : i + draw(st.integers(1, 8))]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=hostile_bytes(),
    max_payload=st.sampled_from([0, 16, 1024, DEFAULT_MAX_PAYLOAD]),
    chunk=st.sampled_from([1, 7, 48, 10_000]),
)
def test_property_decoder_yields_messages_or_protocol_error(
    data: bytes, max_payload: int, chunk: int
) -> None:
    dec = FrameDecoder(max_payload)
    got: list[Message] = []
    error: ProtocolError | None = None
    try:
        for i in range(0, len(data), chunk):
            for m in dec.feed(data[i : i + chunk]):
                got.append(m)
        got.extend(dec.feed(b""))  # raises an error held back behind good frames
    except ProtocolError as e:
        error = e
    # Anything other than ProtocolError propagates and fails the test.
    assert all(isinstance(m, Message) for m in got)
    reencoded = b"".join(m.to_bytes() for m in got)
    # What came out is exactly what went in: a prefix of the stream.
    assert data.startswith(reencoded)
    if error is None:
        assert len(reencoded) + dec.pending == len(data)
    elif error.skip is not None:
        cmd, xid, plen = error.skip
        assert 0 <= cmd <= 0xFFFF and 0 <= xid <= U64_MAX and 0 <= plen <= max_payload


@st.composite
def header_and_payload(draw: st.DrawFn) -> tuple[Header, bytes]:
    cmd = draw(st.sampled_from(list(Command)))
    flags = draw(
        st.sampled_from([0, int(Flag.REPLY), int(Flag.REPLY | Flag.MORE), int(Flag.NOTIFY)])
    )
    status = draw(st.sampled_from([0, 0, 0, errno.ENOENT])) if flags & Flag.REPLY else 0
    if draw(st.booleans()):
        payload = draw(st.binary(max_size=400))
    else:
        msg = sample_reply(cmd) if flags & Flag.REPLY else sample_request(cmd)
        buf = bytearray(payload_of(msg))
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, len(buf)))
            op = draw(st.integers(0, 2))
            if op == 0 and i < len(buf):
                buf[i] = draw(st.integers(0, 255))
            elif op == 1:
                del buf[i:]
            else:
                buf[i:i] = draw(st.binary(min_size=1, max_size=4))
        payload = bytes(buf)
    header = Header(cmd, flags, status, len(payload), draw(st.integers(0, U64_MAX)))
    return header, payload


@settings(max_examples=300, deadline=None)
@given(hp=header_and_payload(), as_type=st.sampled_from([bytes, bytearray, memoryview]))
def test_property_decode_payload_returns_message_or_protocol_error(
    hp: tuple[Header, bytes], as_type: Any
) -> None:
    header, payload = hp
    try:
        msg = decode_payload(header, as_type(payload))
    except ProtocolError:
        return
    assert isinstance(msg, Message)
    assert (msg.cmd, msg.xid, msg.flags, msg.status) == (
        header.cmd,
        header.xid,
        header.flags,
        header.status,
    )
    # Canonical: the decoded fields re-encode to exactly the payload.
    assert payload_of(msg) == payload


names = st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"\x01"))
u32 = st.integers(0, U32_MAX)
creds = st.builds(Cred, u32, u32, st.lists(u32, max_size=40).map(tuple))
attrs = st.builds(
    Attr,
    *(st.integers(0, U64_MAX) if w == 8 else u32 for w in (8, 4, 4, 4, 4, 8, 8, 8, 4)),
    *(st.integers(-(1 << 63), (1 << 63) - 1) for _ in range(3)),
)


@settings(max_examples=100, deadline=None)
@given(xid=st.integers(0, U64_MAX), cred=creds, path=names, new=names, flags=u32)
def test_property_rename_roundtrip(
    xid: int, cred: Cred, path: bytes, new: bytes, flags: int
) -> None:
    msg = request(Command.RENAME, xid, cred=cred, path=path, new=new, flags=flags)
    assert decode_one(msg.to_bytes()) == msg


@settings(max_examples=100, deadline=None)
@given(xid=st.integers(0, U64_MAX), cred=creds, path=names, attr=attrs)
def test_property_lookup_roundtrip(xid: int, cred: Cred, path: bytes, attr: Attr) -> None:
    req = request(Command.LOOKUP, xid, cred=cred, path=path)
    assert decode_one(req.to_bytes()) == req
    rep = reply(req, attr=attr)
    got = decode_one(rep.to_bytes())
    assert got == rep and got["attr"] == attr


@settings(max_examples=100, deadline=None)
@given(
    cred=creds,
    path=names,
    name=names,
    value=st.binary(max_size=2000),
    flags=u32,
    as_type=st.sampled_from([bytes, bytearray]),
)
def test_property_setxattr_roundtrip(
    cred: Cred, path: bytes, name: bytes, value: bytes, flags: int, as_type: Any
) -> None:
    msg = request(
        Command.SETXATTR, 1, cred=cred, path=path, name=name, value=as_type(value), flags=flags
    )
    got = decode_one(msg.to_bytes())
    assert got == msg
    assert got["value"] == value and type(got["value"]) is bytes


@settings(max_examples=50, deadline=None)
@given(
    entries=st.lists(st.builds(DirEntry, names, attrs), max_size=20).map(tuple),
    xattrs=st.lists(names, max_size=20).map(tuple),
)
def test_property_readdir_listxattr_reply_roundtrip(
    entries: tuple[DirEntry, ...], xattrs: tuple[bytes, ...]
) -> None:
    rep = reply(READDIR_REQ, more=bool(entries), entries=entries)
    assert decode_one(rep.to_bytes()) == rep
    rep = reply(LISTXATTR_REQ, names=xattrs)
    assert decode_one(rep.to_bytes()) == rep


@settings(max_examples=50, deadline=None)
@given(name=st.tuples(names, names).map(lambda ab: ab[0] + b"\0" + ab[1]))
def test_property_names_with_nul_never_encode(name: bytes) -> None:
    with pytest.raises(ProtocolError):
        request(Command.LOOKUP, 1, cred=ROOT, path=name).encode()


def test_revoke_notification_and_its_answer_round_trip() -> None:
    note = Message(Command.REVOKE, 9, int(Flag.NOTIFY), 0, 42, 4096, 0, {"keep": 2})
    (got,) = FrameDecoder().feed(note.to_bytes())
    assert (got.cmd, got.flags, got.oid, got.offset, got["keep"]) == (
        Command.REVOKE,
        2,
        42,
        4096,
        2,
    )
    answer = reply(got)
    (back,) = FrameDecoder().feed(answer.to_bytes())
    assert back.is_reply and back.xid == 9 and back.fields == {}
    resize = Message(Command.RESIZE, 10, int(Flag.NOTIFY), 0, 43, 0, 0,
                     {"attr": ATTR_FILE, "last": 256})  # fmt: skip
    (got,) = FrameDecoder().feed(resize.to_bytes())
    assert (got.oid, got["attr"], got["last"]) == (43, ATTR_FILE, 256)
    other = HEADER.pack(MAGIC, Command.LOOKUP, int(Flag.NOTIFY), 0, 0, 0, 1, 0, 0, 0)
    with pytest.raises(ProtocolError, match="notification"):  # nothing else is one
        FrameDecoder().feed(other)
