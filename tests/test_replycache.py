"""The server's memory of client sessions and their replies (``replycache.py``),
without a server: what a resent change is answered with, and the bounds."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from pohmelfs import protocol as p
from pohmelfs.protocol import Command, Message
from pohmelfs.server import replycache as rc
from pohmelfs.server.replycache import FORGOTTEN, Replay, ReplyCache, Running

CRED = p.Cred(0, 0, ())
S1, S2 = b"1" * p.SESSION_SIZE, b"2" * p.SESSION_SIZE


def unlink(xid: int) -> Message:
    return p.request(Command.UNLINK, xid, cred=CRED, path=b"f")


def opening(xid: int, flags: int) -> Message:
    return p.request(Command.OPEN, xid, cred=CRED, path=b"f", flags=flags, mode=0o644, cache=2,
                     fid=bytes(p.FID_SIZE))  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def attach(cache: ReplyCache, session: bytes = S1, key: str = "k",
           owner: object | None = None) -> tuple[rc.SessionReplies, bool]:  # fmt: skip
    return cache.attach(key, session, owner if owner is not None else object(), lambda _: None)


def test_a_resent_change_that_ran_gets_its_first_reply() -> None:
    replies, known = attach(ReplyCache())
    assert not known
    assert replies.begin(unlink(7), resent=False) is None  # runs
    first = p.reply(unlink(7), dir=p.Attr(*([0] * len(p.Attr._fields))))
    replies.answered(first)
    again = replies.begin(unlink(7), resent=True)
    assert isinstance(again, Replay) and again.reply is first
    assert replies.begin(unlink(8), resent=True) is None  # never seen: it runs


def test_only_changes_are_kept() -> None:
    replies, _ = attach(ReplyCache())
    lookup = p.request(Command.LOOKUP, 3, cred=CRED, path=b"f")
    assert replies.begin(lookup, True) is None
    replies.answered(p.reply(lookup, status=errno.ENOENT))
    assert replies.begin(lookup, True) is None and len(replies) == 0
    assert not rc.recorded(opening(4, os.O_RDWR))
    assert rc.recorded(opening(4, os.O_RDWR | os.O_CREAT)) and rc.recorded(opening(4, os.O_TRUNC))
    for cmd in (Command.LOCK, Command.CACHE, Command.READ, Command.CLOSE, Command.LEASE):
        assert cmd not in p.CHANGES


def test_a_resend_of_a_change_still_running_waits_for_it() -> None:
    replies, _ = attach(ReplyCache())
    assert replies.begin(unlink(5), False) is None
    running = replies.begin(unlink(5), True)
    assert isinstance(running, Running) and not running.done.is_set()
    threading.Timer(0.05, replies.answered, (p.reply(unlink(5), status=errno.ENOENT),)).start()
    assert running.done.wait(5)
    again = replies.begin(unlink(5), True)
    assert isinstance(again, Replay) and again.reply.status == errno.ENOENT


def test_a_change_that_never_ran_runs_when_resent() -> None:
    replies, _ = attach(ReplyCache())
    replies.begin(unlink(5), False)
    running = replies.begin(unlink(5), True)
    assert isinstance(running, Running)
    replies.dropped(5)
    assert running.done.is_set() and replies.begin(unlink(5), True) is None


def test_beyond_the_bound_the_oldest_go_and_their_resend_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(rc, "MAX_REPLIES", 3)
    replies, _ = attach(ReplyCache())
    for xid in range(1, 6):
        replies.begin(unlink(xid), False)
        replies.answered(p.reply(unlink(xid), status=errno.ENOENT))
    assert len(replies) == 3
    assert replies.begin(unlink(1), True) == FORGOTTEN  # never applied twice
    assert replies.begin(unlink(2), True) == FORGOTTEN
    assert isinstance(replies.begin(unlink(3), True), Replay)
    out = rc.forgotten_reply(unlink(2))
    assert out.status == errno.ESTALE and b"no longer knows" in bytes(out["data"])


def test_the_bytes_kept_per_session_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rc, "MAX_BYTES", 20_000)
    cache = ReplyCache()
    replies, _ = attach(cache)
    for xid in range(1, 50):
        replies.begin(unlink(xid), False)
        replies.answered(p.reply(unlink(xid), status=errno.EIO, data=b"x" * 1000))
    per = rc.ENTRY_COST + 1000
    assert replies.bytes <= 20_000 and len(replies) == 20_000 // per
    assert cache.bytes == replies.bytes == replies.counted


def test_a_session_is_known_again_under_its_key_only() -> None:
    cache = ReplyCache()
    replies, _ = attach(cache, S1, "k")
    replies.begin(unlink(1), False)
    replies.answered(p.reply(unlink(1), status=errno.ENOENT))
    other, known = attach(cache, S1, "someone else")
    assert not known and other is not replies
    assert other.begin(unlink(1), True) is None  # nothing of the first one's
    again, known = attach(cache, S1, "k")
    assert known and again is replies


def test_a_new_connection_of_a_session_ends_the_old_one() -> None:
    cache, ended = ReplyCache(), []
    first, second = object(), object()
    cache.attach("k", S1, first, ended.append)
    replies, known = cache.attach("k", S1, second, ended.append)
    assert known and ended == [first] and replies.owner is second
    cache.detach(replies, first)  # the old connection's end leaves the new one alone
    assert replies.owner is second


def test_a_session_without_a_connection_is_forgotten_after_linger() -> None:
    clock = Clock()
    cache = ReplyCache(clock)
    owner = object()
    replies, _ = attach(cache, owner=owner)
    cache.detach(replies, owner)
    clock.now = rc.LINGER - 1
    assert attach(cache)[1]  # still known
    cache.detach(replies, replies.owner)
    clock.now += rc.LINGER + 1
    assert not attach(cache)[1]


def test_sessions_are_bounded_and_those_without_a_connection_go_first(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(rc, "MAX_SESSIONS", 3)
    cache = ReplyCache()
    owners = [object() for _ in range(3)]
    sessions = [attach(cache, bytes([i]) * p.SESSION_SIZE, owner=o)[0]
                for i, o in enumerate(owners)]  # fmt: skip
    cache.detach(sessions[1], owners[1])
    attach(cache, b"n" * p.SESSION_SIZE)
    assert len(cache) == 3
    assert attach(cache, bytes([0]) * p.SESSION_SIZE, owner=owners[0])[1]  # connected: kept
    assert not attach(cache, bytes([1]) * p.SESSION_SIZE)[1]  # the one without went


def test_the_server_wide_budget_drops_sessions_without_a_connection_first(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(rc, "BUDGET", 20_000)
    cache = ReplyCache()
    idle_owner = object()
    idle, _ = attach(cache, S1, owner=idle_owner)
    for xid in range(1, 11):
        idle.begin(unlink(xid), False)
        idle.answered(p.reply(unlink(xid), status=errno.EIO, data=b"x" * 1000))
    cache.detach(idle, idle_owner)
    busy, _ = attach(cache, S2)
    for xid in range(1, 40):
        busy.begin(unlink(xid), False)
        busy.answered(p.reply(unlink(xid), status=errno.EIO, data=b"x" * 1000))
    assert cache.bytes <= 20_000
    assert not attach(cache, S1)[1]  # the one without a connection went first
    assert len(busy) > 0 and busy.bytes == cache.bytes


def test_one_keys_sessions_cannot_push_out_anothers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rc, "MAX_SESSIONS_PER_KEY", 2)
    cache = ReplyCache()
    owner = object()
    theirs, _ = attach(cache, S1, "them", owner=owner)
    cache.detach(theirs, owner)
    for i in range(5):
        attach(cache, bytes([i]) * p.SESSION_SIZE, "greedy")
    assert cache._of_key("greedy") == 2
    assert attach(cache, S1, "them")[1]  # still known


def test_a_resent_id_of_another_request_gets_no_reply_of_that_one() -> None:
    replies, _ = attach(ReplyCache())
    replies.begin(unlink(9), False)
    replies.answered(p.reply(unlink(9), status=errno.ENOENT))
    again = replies.begin(opening(9, os.O_CREAT), True)
    assert isinstance(again, Replay) and again.reply.cmd is Command.UNLINK  # (dispatch refuses)


def test_a_copy_of_a_change_is_never_run_twice_marked_resent_or_not() -> None:
    """An old connection may read a request it had buffered after the session went on
    on a new one, which ran it already."""
    replies, _ = attach(ReplyCache())
    assert replies.begin(unlink(4), False) is None
    assert isinstance(replies.begin(unlink(4), False), Running)
    replies.answered(p.reply(unlink(4), status=errno.ENOENT))
    assert isinstance(replies.begin(unlink(4), False), Replay)


def test_notifications_are_not_taken_for_answers() -> None:
    """The server's notifications have ids of its own, which may be a change's."""
    replies, _ = attach(ReplyCache())
    replies.begin(unlink(3), False)
    revoke = Message(Command.REVOKE, 3, p.FLAG_NOTIFY, 0, 7, 0, 0, {"keep": 2})
    replies.answered(revoke)
    replies.answered(p.pending(unlink(3)))
    running = replies.begin(unlink(3), True)
    assert isinstance(running, Running) and not running.done.is_set()
    replies.answered(p.reply(unlink(3), status=errno.ENOENT))
    again = replies.begin(unlink(3), True)
    assert isinstance(again, Replay) and again.reply.cmd is Command.UNLINK


def test_the_count_stays_true_when_a_session_goes_while_it_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(rc, "MAX_SESSIONS", 1)
    cache = ReplyCache()
    owner = object()
    old, _ = attach(cache, S1, owner=owner)
    cache.detach(old, owner)
    new, _ = attach(cache, S2)  # the old one is forgotten...
    old.begin(unlink(1), False)
    old.answered(p.reply(unlink(1), status=errno.EIO))  # ...and its late answer not counted
    new.begin(unlink(1), False)
    new.answered(p.reply(unlink(1), status=errno.EIO))
    assert cache.bytes == new.counted == new.bytes


def test_a_resends_own_refusal_is_not_taken_for_the_changes_answer() -> None:
    replies, _ = attach(ReplyCache())
    replies.begin(unlink(6), False)  # the first run goes on
    replies.not_kept(6)
    replies.answered(p.reply(unlink(6), status=errno.EAGAIN))  # the resend is refused
    replies.answered(p.reply(unlink(6), status=errno.ENOENT))  # the first run's answer
    again = replies.begin(unlink(6), True)
    assert isinstance(again, Replay) and again.reply.status == errno.ENOENT
