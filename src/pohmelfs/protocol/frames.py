"""Frames: the 48-byte header, messages, and the incremental decoder."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .commands import (
    FLAG_BEHIND,
    FLAG_MORE,
    FLAG_PENDING,
    FLAG_REPLY,
    Command,
    Schema,
    _flag_problem,
    _names,
    schema_for,
)
from .fields import DEFAULT_MAX_PAYLOAD, FIELD_TYPES, U32_MAX, U64_MAX, ProtocolError

MAGIC = 0x504F  # "PO"
VERSION = 10  # 2: OPEN grants a cache lock inline; 3: replies carry the changed directory;
# 4: LEASE; 5: PENDING, paths longer than 4,096 bytes, file ids in OPEN; 6: AUTH, tags;
# 7: client sessions (HELLO's session, the welcome's resumed, RESENT);
# 8: versions of objects (VERSION, SETVERSION, UNVERSIONED), servers behind (PEERS,
# MISSING, CLEAR); 9: OPEN's reply carries the file's version (read-only servers);
# 10: COPY (server-side copies)
TAG_SIZE = 16  # the trailer of every frame of a connection authenticated by a secret
HEADER = struct.Struct("!HHHHIIQQQQ")
HEADER_SIZE = HEADER.size  # 48


def packed_payload_len(header: bytes | bytearray | memoryview) -> int:
    """The payload length a packed header announces (offset 12, u32)."""
    return int.from_bytes(bytes(header[12:16]), "big")


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
    tag_len: int = 0

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, max_payload: int) -> Header:
        if len(buf) < HEADER_SIZE:
            raise ProtocolError("header truncated")
        magic, cmd, flags, tag_len, status, plen, xid, oid, off, length = HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic {magic:#06x}")
        if plen > max_payload:
            raise ProtocolError(f"payload of {plen} bytes exceeds limit {max_payload}")
        if tag_len not in (0, TAG_SIZE):  # the frame's end is unknown: cannot resync
            raise ProtocolError(f"tag of {tag_len} bytes (a tag is {TAG_SIZE} or absent)")
        skip = (cmd, xid, plen)
        problem = _flag_problem(flags, status)
        if problem:
            raise ProtocolError(problem, skip)
        try:
            command = Command(cmd)
        except ValueError:
            raise ProtocolError(f"unknown command {cmd}", skip) from None
        return cls(command, flags, status, plen, xid, oid, off, length, tag_len)

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            self.cmd,
            self.flags,
            self.tag_len,
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
        if not isinstance(self.flags, int) or not isinstance(self.fields, dict):
            raise ProtocolError("flags must be an int and fields a dict")
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
    cmd: Command,
    xid: int,
    *,
    oid: int = 0,
    offset: int = 0,
    length: int = 0,
    behind: bool = False,
    **fields: Any,
) -> Message:
    """``behind``: the sender will not wait for it (see ``Flag.BEHIND``)."""
    return Message(cmd, xid, FLAG_BEHIND if behind else 0, 0, oid, offset, length, fields)


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


def pending(req: Header | Message) -> Message:
    """The interim answer to a request that waits for other clients."""
    return Message(req.cmd, req.xid, FLAG_REPLY | FLAG_PENDING, 0, 0, 0, 0, {})


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
        self._error: ProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Buffer ``data`` and return every message it completes (possibly none).

        If the data holds good frames and then a bad one, the good ones are
        returned and the ProtocolError is raised by the next call.
        """
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[Message] = []
        try:
            self._decode_into(out)
        except ProtocolError as e:
            if not out:
                raise
            self._error = e
        return out

    def _decode_into(self, out: list[Message]) -> None:
        while True:
            if self._header is None:
                if len(self._buf) < HEADER_SIZE:
                    return
                header = Header.unpack(self._buf, self.max_payload)
                if header.tag_len:  # checking tags needs the session's keys: a reader's job
                    raise ProtocolError("a tagged frame (this decoder takes untagged ones)")
                self._header = header
                del self._buf[:HEADER_SIZE]
            need = self._header.payload_len
            if len(self._buf) < need:
                return
            payload = bytes(self._buf[:need])
            del self._buf[:need]
            header, self._header = self._header, None
            out.append(decode_payload(header, payload))

    @property
    def pending(self) -> int:
        """Bytes buffered towards the next frame."""
        return len(self._buf) + (HEADER_SIZE if self._header else 0)
