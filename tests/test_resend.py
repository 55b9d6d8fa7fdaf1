"""When the client sends a request again (``client/resend.py``), without a server."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from pohmelfs.client import resend
from pohmelfs.client.resend import Resender, resending


class FakeConnection:
    def __init__(self, resumed: bool = True, address: str = "s1") -> None:
        self.closed = False
        self.resumed = resumed
        self.address = address
        self.members = frozenset({address})


class Lost:
    """Connections that are lost under the first ``losses`` sends."""

    def __init__(self, losses: int, resumed: bool = True) -> None:
        self.losses, self.resumed = losses, resumed
        self.made: list[FakeConnection] = []
        self.sent: list[tuple[FakeConnection, Any, bool]] = []

    def where(self) -> tuple[FakeConnection, str]:
        self.made.append(FakeConnection(self.resumed if self.made else True))
        return self.made[-1], f"handle {len(self.made)}"

    def send(self, conn: Any, target: Any, resent: bool) -> str:
        self.sent.append((conn, target, resent))
        if len(self.sent) <= self.losses:
            conn.closed = True
            raise ConnectionResetError(errno.ECONNRESET, "connection lost", "f")
        return "answer"


def test_a_request_whose_connection_is_lost_goes_again_marked_resent() -> None:
    lost = Lost(1)
    assert resending(lost.where, lost.send, idempotent=False) == "answer"
    assert [(t, r) for _, t, r in lost.sent] == [("handle 1", False), ("handle 2", True)]


def test_a_change_is_not_sent_again_to_a_server_that_forgot_the_session() -> None:
    lost = Lost(1, resumed=False)
    with pytest.raises(ConnectionResetError):
        resending(lost.where, lost.send, idempotent=False)
    assert len(lost.sent) == 1
    lost = Lost(1, resumed=False)  # what changes nothing goes again all the same
    assert resending(lost.where, lost.send, idempotent=True) == "answer"


def test_after_the_resends_the_call_times_out() -> None:
    lost = Lost(100)
    with pytest.raises(TimeoutError) as e:
        resending(lost.where, lost.send, idempotent=False)
    assert len(lost.sent) == resend.RESENDS + 1 and e.value.filename == "f"
    assert "sent 3 times" in str(e.value)
    assert len(lost.made) == resend.RESENDS + 1  # no connection made for nothing


def test_a_change_goes_again_only_to_a_server_it_went_to() -> None:
    """A server that knows the session but never had the change (another of the set)
    would apply it as new: the loss is reported instead."""
    first = FakeConnection(address="a")
    made = iter([first, FakeConnection(address="b")])

    def where() -> tuple[FakeConnection, None]:
        return next(made), None

    def send(conn: Any, target: Any, resent: bool) -> str:
        if conn is first:
            conn.closed = True
            raise ConnectionResetError(errno.ECONNRESET, "lost")
        return "answer"

    with pytest.raises(ConnectionResetError):
        resending(where, send, idempotent=False)
    first.closed = False
    first.members = frozenset({"a", "b"})  # a group whose replica b had it
    made = iter([first, FakeConnection(address="b")])
    assert resending(where, send, idempotent=False) == "answer"


def test_an_error_on_a_connection_still_up_is_not_a_loss() -> None:
    def send(conn: Any, target: Any, resent: bool) -> str:
        raise ConnectionResetError(errno.ECONNRESET, "reset by the peer's application")

    with pytest.raises(ConnectionResetError):
        resending(lambda: (FakeConnection(), None), send, idempotent=True)


def test_one_request_keeps_its_id_across_resends() -> None:
    conns = iter([FakeConnection(), FakeConnection()])
    resender = Resender(lambda: next(conns))  # type: ignore[arg-type,return-value]
    seen: list[tuple[int, bool]] = []

    def send(conn: Any, xid: int, resent: bool) -> int:
        seen.append((xid, resent))
        if not resent:
            conn.closed = True
            raise ConnectionResetError(errno.ECONNRESET, "lost")
        return xid

    first = resender.call(send, idempotent=False)
    assert seen == [(first, False), (first, True)]
    assert resender.next_xid() == first + 1  # the next request has an id of its own
