"""Tier 1: the transaction rules of both ends (protocol/exchange.py), without a
socket: frames are built as bytes, their headers handed to the exchanges."""

from __future__ import annotations

import errno

import pytest

from pohmelfs import protocol as p
from pohmelfs.protocol import Command, Header, ProtocolError
from pohmelfs.protocol.exchange import (
    Answered,
    ClientExchange,
    DataFor,
    Ignored,
    Notified,
    Replied,
    Request,
    ServerExchange,
    StillWorking,
    Stray,
    data_reply_header,
    error_frame,
    pending_frame,
    read_request,
)

MAX = p.DEFAULT_MAX_PAYLOAD


def header_of(parts: list[bytes] | bytes) -> Header:
    first = parts if isinstance(parts, bytes) else bytes(parts[0])
    return Header.unpack(first, MAX)


def reply_header(cmd: Command, xid: int, *, more: bool = False) -> Header:
    """A reply's header as it comes off the wire (the exchange reads no payload)."""
    flags = p.FLAG_REPLY | (p.FLAG_MORE if more else 0)
    return header_of(Header(cmd, flags, 0, 0, xid).pack())


class Record:
    """What a client keeps of a request in flight."""


def test_ids_are_unique_and_replies_match_by_id_in_any_order() -> None:
    ex = ClientExchange[Record](MAX)
    sent = {}
    for cmd in (Command.LOOKUP, Command.STATFS, Command.READLINK):
        xid = ex.next_xid()
        rec = Record()
        ex.sent(xid, cmd, rec)
        sent[xid] = (cmd, rec)
    assert len(set(sent)) == 3 and len(ex) == 3
    for xid in reversed(list(sent)):
        cmd, rec = sent[xid]
        event = ex.receive(reply_header(cmd, xid))
        assert isinstance(event, Replied) and event.pending is rec and not event.more
    assert len(ex) == 0


def test_a_streamed_reply_keeps_its_request_until_the_last_frame() -> None:
    ex = ClientExchange[Record](MAX)
    rec = Record()
    ex.sent(7, Command.READDIR, rec)
    first = ex.receive(reply_header(Command.READDIR, 7, more=True))
    assert isinstance(first, Replied) and first.more and len(ex) == 1
    last = ex.receive(reply_header(Command.READDIR, 7))
    assert isinstance(last, Replied) and not last.more and len(ex) == 0


def test_a_reads_data_is_announced_as_n_bytes_for_its_request() -> None:
    ex = ClientExchange[Record](MAX)
    rec = Record()
    ex.sent(3, Command.READ, rec, places_data=True)
    event = ex.receive(header_of(data_reply_header(Command.READ, 3, 4096, 0)))
    assert isinstance(event, DataFor) and event.pending is rec and event.n == 4096
    # An error reply to a READ is decoded, not placed.
    ex.sent(4, Command.READ, rec, places_data=True)
    failed = ex.receive(header_of(error_frame(Command.READ, 4, errno.EIO, "disk")))
    assert isinstance(failed, Replied) and failed.header.status == errno.EIO


def test_pending_moves_no_request_and_a_late_reply_is_stray() -> None:
    ex = ClientExchange[Record](MAX)
    rec = Record()
    ex.sent(5, Command.CACHE, rec)
    waiting = ex.receive(header_of(pending_frame(Command.CACHE, 5)))
    assert isinstance(waiting, StillWorking) and waiting.pending is rec and len(ex) == 1
    assert ex.abandon(5, rec) and not ex.abandon(5, rec)
    assert isinstance(ex.receive(reply_header(Command.CACHE, 5)), Stray)
    unknown = ex.receive(header_of(pending_frame(Command.CACHE, 99)))
    assert isinstance(unknown, StillWorking) and unknown.pending is None


def test_abandon_is_refused_once_the_reply_is_being_received() -> None:
    ex = ClientExchange[Record](MAX)
    rec = Record()
    ex.sent(1, Command.READ, rec, places_data=True)
    assert isinstance(ex.receive(header_of(data_reply_header(Command.READ, 1, 10, 0))), DataFor)
    assert not ex.abandon(1, rec)  # the caller must wait for the data to land


def test_what_a_server_may_not_send() -> None:
    ex = ClientExchange[Record](MAX)
    ex.sent(2, Command.LOOKUP, Record())
    with pytest.raises(ProtocolError, match="reply STATFS to a LOOKUP"):
        ex.receive(reply_header(Command.STATFS, 2))
    with pytest.raises(ProtocolError, match="server sent a request"):
        ex.receive(header_of(Header(Command.STATFS, 0, 0, 0, 9).pack()))


def test_requests_are_encoded_within_the_servers_limit() -> None:
    ex = ClientExchange[Record](4096)
    assert ex.encode(Command.READ, 1, oid=2, offset=3, length=4) == [read_request(1, 2, 3, 4)]
    parts = ex.encode(Command.UNLINK, 2, behind=True, cred=p.Cred(0, 0, ()), path=b"/f")
    h = header_of(parts)
    assert h.xid == 2 and h.flags == p.FLAG_BEHIND
    with pytest.raises(ValueError, match="more than the server takes"):
        ex.encode(Command.UNLINK, 3, cred=p.Cred(0, 0, ()), path=b"/" + b"x" * 4096)
    with pytest.raises(ProtocolError):
        ex.encode(Command.LOOKUP, 4, cred=p.Cred(0, 0, ()), path=b"/" * (p.MAX_PATH + 1))


def test_take_all_hands_back_every_request_in_flight() -> None:
    ex = ClientExchange[Record](MAX)
    recs = [Record() for _ in range(3)]
    for xid, rec in enumerate(recs, 1):
        ex.sent(xid, Command.LOOKUP, rec)
    assert ex.take_all() == recs and len(ex) == 0


def test_the_server_matches_answers_to_its_notifications() -> None:
    ex = ServerExchange[str]()
    a = ex.notification(Command.REVOKE, 4, 0, 0, {"keep": 2}, "a")
    b = ex.notification(Command.RESIZE, 4, 0, 0, {"attr": p.Attr(*([0] * 12)), "last": 1}, "b")
    assert a.xid != b.xid and a.flags == p.FLAG_NOTIFY and len(ex) == 2
    notified = ClientExchange[Record](MAX).receive(header_of(b.encode()))
    assert isinstance(notified, Notified)
    answer = ex.receive(header_of(ClientExchange.answer(b)))
    assert isinstance(answer, Answered) and answer.notification == "b"
    again = ex.receive(header_of(ClientExchange.answer(b)))  # answered twice: nothing waits
    assert isinstance(again, Answered) and again.notification is None
    ex.unsent(a.xid)
    assert ex.take_all() == []
    with pytest.raises(ValueError):
        ex.notification(Command.LOOKUP, 0, 0, 0, {}, "c")


def test_what_the_server_takes_from_a_client() -> None:
    ex = ServerExchange[str]()
    req = ex.receive(header_of(Header(Command.STATFS, p.FLAG_BEHIND, 0, 0, 1).pack()))
    assert isinstance(req, Request) and req.behind
    odd = ex.receive(reply_header(Command.STATFS, 1))
    assert isinstance(odd, Ignored) and "flags" in odd.why
