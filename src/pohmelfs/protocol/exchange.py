"""The transaction rules of a connection, for both ends, without I/O (as h11 is
for HTTP): request ids, the requests in flight, streamed (MORE) and interim
(PENDING) replies, notifications and their answers.

The I/O layer reads a frame's header and asks the exchange what it is; the
answer is a small event that says what to do with the payload that follows:
decode it (``Replied``, ``Notified``, ``Request``, ``Answered``), skip it
(``StillWorking``, ``Stray``), or, for a READ's data, place ``n`` bytes where the
request's caller wants them (``DataFor``): the event names the bytes, the I/O
layer receives them straight into the caller's buffer. Nothing here is
thread-safe: the I/O layer calls an exchange under its own lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .commands import (
    FLAG_BEHIND,
    FLAG_MORE,
    FLAG_NOTIFY,
    FLAG_PENDING,
    FLAG_REPLY,
    FLAG_RESENT,
    FLAG_UNVERSIONED,
    NOTIFICATIONS,
    REQUEST_FLAGS,
    Command,
)
from .fields import ProtocolError
from .frames import HEADER, MAGIC, Header, Message, packed_payload_len

T = TypeVar("T")  # what the I/O layer keeps of a request in flight (or of a notification)


# --- frames both ends build by hand (no payload to encode) ---------------------------


def read_request(xid: int, oid: int, offset: int, length: int, flags: int = 0) -> bytes:
    """A READ request: a header alone."""
    return HEADER.pack(MAGIC, Command.READ, flags, 0, 0, 0, xid, oid, offset, length)


def data_reply_header(cmd: Command, xid: int, n: int, offset: int) -> bytes:
    """The header of a reply that carries ``n`` bytes of data (a READ's)."""
    return Header(cmd, FLAG_REPLY, 0, n, xid, 0, offset, 0).pack()


def error_frame(cmd: int, xid: int, code: int, text: str) -> list[bytes]:
    """An error reply, for a frame that could not be decoded into a request."""
    data = text.encode()
    return [HEADER.pack(MAGIC, cmd, FLAG_REPLY, 0, code, len(data), xid, 0, 0, 0), data]


def pending_frame(cmd: int, xid: int) -> bytes:
    """The interim answer to a request that waits for other clients."""
    return HEADER.pack(MAGIC, cmd, FLAG_REPLY | FLAG_PENDING, 0, 0, 0, xid, 0, 0, 0)


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notified:
    """The server speaks first (REVOKE, RESIZE): decode, hand up, answer later."""

    header: Header


@dataclass(frozen=True, slots=True)
class StillWorking(Generic[T]):
    """PENDING: the request waits on the server for other clients (skip the payload)."""

    header: Header
    pending: T | None


@dataclass(frozen=True, slots=True)
class Replied(Generic[T]):
    """A reply to decode; ``more``: one frame of a streamed reply, others follow."""

    header: Header
    pending: T
    more: bool


@dataclass(frozen=True, slots=True)
class DataFor(Generic[T]):
    """A READ's data: ``n`` bytes for this request, placed where its caller wants."""

    header: Header
    pending: T
    n: int


@dataclass(frozen=True, slots=True)
class Stray:
    """A reply nobody waits for any more (its caller gave up): skip the payload."""

    header: Header


@dataclass(frozen=True, slots=True)
class Request:
    """A client's request (``behind``: its sender does not wait for it; ``resent``:
    it may have come before, on a lost connection of the same client session)."""

    header: Header
    behind: bool
    resent: bool = False


@dataclass(frozen=True, slots=True)
class Answered(Generic[T]):
    """The client answered a notification of ours (skip the payload)."""

    header: Header
    notification: T | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame a client may not send (skip the payload; ``why`` for the log)."""

    header: Header
    why: str


class _InFlight(Generic[T]):
    __slots__ = ("cmd", "record", "places_data")

    def __init__(self, cmd: Command, record: T, places_data: bool) -> None:
        self.cmd, self.record, self.places_data = cmd, record, places_data


class ClientExchange(Generic[T]):
    """The client's end: ids for its requests, and what each frame from the server
    means. ``T``: the caller's record of a request (kept, handed back with its
    reply). ``xids``: where request ids come from; a client session's connections
    share one source, so that an id names one request of the session.
    ``unversioned``: every request carries ``Flag.UNVERSIONED`` (a resync's copy)."""

    def __init__(self, max_payload: int, xids: Iterator[int] | None = None,
                 unversioned: bool = False) -> None:  # fmt: skip
        self.max_payload = max_payload  # the server's, once the handshake told it
        self._flags = FLAG_UNVERSIONED if unversioned else 0
        self._xids = xids if xids is not None else itertools.count(1)
        self._in_flight: dict[int, _InFlight[T]] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    def next_xid(self) -> int:
        return next(self._xids)

    def encode(self, cmd: Command, xid: int, *, oid: int = 0, offset: int = 0, length: int = 0,
               behind: bool = False, resent: bool = False, **fields: Any) -> list[Any]:  # fmt: skip
        """Request ``xid``'s buffers (``resent``: see ``Flag.RESENT``). ProtocolError
        if a field is out of range; ValueError if it is larger than the server takes
        (it would drop us)."""
        flags = (FLAG_BEHIND if behind else 0) | (FLAG_RESENT if resent else 0) | self._flags
        if cmd is Command.READ:  # the hot path: a bare header, no payload to encode
            return [read_request(xid, oid, offset, length, flags)]
        msg = Message(cmd, xid, flags, 0, oid, offset, length, fields)
        parts = msg.encode()
        size = packed_payload_len(parts[0])
        if size > self.max_payload:
            raise ValueError(f"{cmd.name} of {size} bytes is more than the server takes "
                             f"({self.max_payload})")  # fmt: skip
        return parts

    def sent(self, xid: int, cmd: Command, record: T, places_data: bool = False) -> None:
        """Request ``xid`` is on its way; ``places_data``: its reply's data goes where
        the caller wants (``DataFor``), not decoded."""
        self._in_flight[xid] = _InFlight(cmd, record, places_data)

    def abandon(self, xid: int, record: T) -> bool:
        """The caller gives request ``xid`` up. False if its reply is being received
        already (the caller must wait for that to end)."""
        got = self._in_flight.get(xid)
        if got is None or got.record is not record:
            return False
        del self._in_flight[xid]
        return True

    def in_flight(self) -> list[T]:
        return [f.record for f in self._in_flight.values()]

    def take_all(self) -> list[T]:
        """Every request in flight, forgotten (the connection is gone)."""
        records = [f.record for f in self._in_flight.values()]
        self._in_flight.clear()
        return records

    def receive(
        self, header: Header
    ) -> Notified | StillWorking[T] | Replied[T] | DataFor[T] | Stray:
        """What a frame from the server is. ProtocolError for one a server may not send."""
        flags = header.flags
        if flags & FLAG_NOTIFY:
            return Notified(header)
        if not flags & FLAG_REPLY:
            raise ProtocolError(f"server sent a request ({header.cmd.name})")
        if flags & FLAG_PENDING:
            waiting = self._in_flight.get(header.xid)
            return StillWorking(header, None if waiting is None else waiting.record)
        more = bool(flags & FLAG_MORE)
        got = self._in_flight.get(header.xid) if more else self._in_flight.pop(header.xid, None)
        if got is None:
            return Stray(header)
        if got.cmd != header.cmd:
            raise ProtocolError(f"reply {header.cmd.name} to a {got.cmd.name} request")
        if got.places_data and not header.status:
            return DataFor(header, got.record, header.payload_len)
        return Replied(header, got.record, more)

    @staticmethod
    def answer(notification: Message) -> list[Any]:
        """The reply to a notification, once it is carried out."""
        return Message(notification.cmd, notification.xid, FLAG_REPLY, 0, 0, 0, 0, {}).encode()


class ServerExchange(Generic[T]):
    """The server's end: ids for its notifications, the answers it waits for, and
    what each frame from the client means. ``T``: what waits for an answer."""

    def __init__(self) -> None:
        self._xids = itertools.count(1)
        self._waiting: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def notification(self, cmd: Command, oid: int, offset: int, length: int,
                     fields: dict[str, Any], record: T) -> Message:  # fmt: skip
        """A notification to send, with an id of its own; ``record`` comes back with
        its answer (``Answered``)."""
        if cmd not in NOTIFICATIONS:
            raise ValueError(f"{cmd.name} is not a notification")
        msg = Message(cmd, next(self._xids), FLAG_NOTIFY, 0, oid, offset, length, fields)
        self._waiting[msg.xid] = record
        return msg

    def unsent(self, xid: int) -> None:
        """Notification ``xid`` could not be sent: nobody will answer it."""
        self._waiting.pop(xid, None)

    def take_all(self) -> list[T]:
        """Every notification unanswered, forgotten (the connection is gone)."""
        records = list(self._waiting.values())
        self._waiting.clear()
        return records

    def receive(self, header: Header) -> Request | Answered[T] | Ignored:
        """What a frame from the client is."""
        flags = header.flags
        if flags == FLAG_REPLY and header.cmd in NOTIFICATIONS:
            return Answered(header, self._waiting.pop(header.xid, None))
        if flags & ~REQUEST_FLAGS:
            return Ignored(header, f"ignoring {header.cmd.name} frame with flags {flags:#x}")
        return Request(header, bool(flags & FLAG_BEHIND), bool(flags & FLAG_RESENT))
