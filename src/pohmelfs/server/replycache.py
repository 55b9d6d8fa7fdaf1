"""Client sessions and their recent replies: what makes a resent change apply once.

A client session (HELLO's ``session``: random, the client's own, bound here to the
key that proved itself) outlives its connections. Its request ids are unique
across them, so when a connection is lost before a change's reply came, the
client sends the change again on the next one (``Flag.RESENT``) and the server,
if it applied it, answers as it did then instead of applying it twice: a second
exclusive create does not fail with EEXIST, a second append does not append
again, a second rename does not fail with ENOENT.

Only the replies of changes are kept (``recorded``); a read, a lookup or a
listing is simply run again, and what a connection held (handles, cache and
advisory locks) goes with it, so a request that takes one of those is run again
on the new connection too. Everything is bounded: ``MAX_REPLIES`` and
``MAX_BYTES`` per session (beyond them the oldest go, and a resend of one of
those is refused with ESTALE, never applied a second time), ``MAX_SESSIONS`` on
the server, ``MAX_SESSIONS_PER_KEY`` of one key, and ``BUDGET`` bytes across
them (the sessions without a connection go first, the oldest first), and a
session without a connection is forgotten after ``LINGER`` seconds. A session
forgotten is safe: its client is told at the next handshake (``resumed`` 0) and
then sends no change again, it reports the lost connection instead.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .. import protocol as p
from ..protocol import CHANGES, Command, Message

MAX_REPLIES = 1024  # kept per session (a client resends within seconds of a loss)
MAX_BYTES = 16 << 20  # kept per session
MAX_SESSIONS = 1024  # known to the server, with or without a connection
MAX_SESSIONS_PER_KEY = 256  # of one key (one key's clients cannot push out all others)
BUDGET = 64 << 20  # bytes of replies kept across every session
LINGER = 600.0  # seconds a session without a connection is remembered
ENTRY_COST = 1024  # bytes counted for a kept reply beyond its data (measured: ~970)

# The replies of changes are kept (``p.CHANGES``); of OPEN only when it may create or
# truncate; not of LOCK and CACHE: the locks they take go with the connection.
CREATING = os.O_CREAT | os.O_TRUNC


def recorded(m: Message) -> bool:
    """Is ``m`` a change whose reply a resend must get instead of a second run?"""
    return m.cmd in CHANGES or (m.cmd is Command.OPEN and bool(m["flags"] & CREATING))


def _cost(reply: Message) -> int:
    data = reply.fields.get("data")
    return ENTRY_COST + (len(data) if isinstance(data, bytes | bytearray | memoryview) else 0)


@dataclass(frozen=True)
class Replay:
    """A resent request this session ran before: answer with ``reply``."""

    reply: Message


@dataclass(frozen=True)
class Running:
    """A resent request still running (from the lost connection): wait for ``done``,
    then ask again."""

    done: threading.Event


FORGOTTEN = "forgotten"  # a resend of a change whose reply went (the bounds)


class SessionReplies:
    """The replies kept for one client session, and its changes still running."""

    def __init__(self, key: str, session: bytes, cache: ReplyCache) -> None:
        self.key, self.session = key, session
        self._cache = cache
        self._lock = threading.Lock()
        self._done: OrderedDict[int, tuple[Message, int]] = OrderedDict()  # xid -> (reply, cost)
        # Changes running, and what a resend of one waits on (made only for a resend).
        self._running: dict[int, threading.Event | None] = {}
        self._forgotten_upto = 0  # the highest id whose reply was let go
        self._not_kept: set[int] = set()  # the next answer with this id is not the change's
        self.bytes = 0
        self.counted = 0  # of ``bytes``, what the cache counts (under the cache's lock)
        self.owner: object | None = None  # the connection it has now (None: none)
        self.detached_at = 0.0
        self.kept = True  # still in the cache's table (its bytes count there)

    def begin(self, m: Message, resent: bool) -> Replay | Running | str | None:
        """Before ``m`` runs: None to run it (then ``answered`` or ``dropped``), or
        what to answer instead (a resend of what ran: ``Replay``, ``Running``, or
        ``FORGOTTEN``: refuse it with ESTALE)."""
        if not recorded(m):
            return None
        with self._lock:
            # An id this session used is a copy, marked RESENT or not (an old
            # connection may still read one it had buffered after a new one took over).
            done = self._done.get(m.xid)
            if done is not None:
                return Replay(done[0])
            if m.xid in self._running:
                running = self._running[m.xid]
                if running is None:
                    running = self._running[m.xid] = threading.Event()
                return Running(running)
            if resent and m.xid <= self._forgotten_upto:
                return FORGOTTEN
            self._running[m.xid] = None
        return None

    def answered(self, reply: Message) -> None:
        """The reply to a change that ``begin`` let run (others are ignored: the
        notifications the session sends have ids of the server's own)."""
        if reply.flags & (p.FLAG_MORE | p.FLAG_NOTIFY | p.FLAG_PENDING) or not reply.is_reply:
            return
        if reply.xid not in self._running and not self._not_kept:
            return  # (most replies: no lock taken; ``begin`` added it before it ran)
        cost = _cost(reply)
        with self._lock:
            if reply.xid in self._not_kept:  # a resend's own refusal, not the change's
                self._not_kept.discard(reply.xid)
                return
            if reply.xid not in self._running:
                return
            event = self._running.pop(reply.xid)
            old = self._done.pop(reply.xid, None)
            if old is not None:
                self.bytes -= old[1]
            self._done[reply.xid] = (reply, cost)
            self.bytes += cost
            grown = cost - (old[1] if old is not None else 0)
            while self._done and (len(self._done) > MAX_REPLIES or self.bytes > MAX_BYTES):
                grown -= self._forget_oldest()
        if event is not None:
            event.set()
        self._cache.grew(self, grown)

    def not_kept(self, xid: int) -> None:
        """The next answer with id ``xid`` is a resend's refusal while the change
        runs: it must not be taken for the change's answer."""
        with self._lock:
            if xid in self._running:
                self._not_kept.add(xid)

    def dropped(self, xid: int) -> None:
        """A change that ``begin`` let run was never run (its connection went first)."""
        with self._lock:
            event = self._running.pop(xid, None)
        if event is not None:  # (a resend waits: it runs the change now)
            event.set()

    def shrink(self, want: int) -> int:
        """Let the oldest replies go until ``want`` bytes are freed (or none is left);
        the bytes freed."""
        freed = 0
        with self._lock:
            while self._done and freed < want:
                freed += self._forget_oldest()
        return freed

    def _forget_oldest(self) -> int:
        xid, (_, cost) = self._done.popitem(last=False)
        self._forgotten_upto = max(self._forgotten_upto, xid)
        self.bytes -= cost
        return cost

    def __len__(self) -> int:
        return len(self._done)


class ReplyCache:
    """Every client session the server knows, by (key, session id)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[tuple[str, bytes], SessionReplies] = OrderedDict()
        self.bytes = 0

    def attach(self, key: str, session: bytes, owner: object,
               take_over: Callable[[object], None]) -> tuple[SessionReplies, bool]:  # fmt: skip
        """The session ``owner`` (a connection) belongs to, and whether the server knew
        it. A connection the session still had is ended (``take_over(old owner)``):
        the client has given it up, and one session has one connection."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            replies = self._sessions.pop((key, session), None)
            known = replies is not None
            if replies is None:
                replies = SessionReplies(key, session, self)
                while self._of_key(key) >= MAX_SESSIONS_PER_KEY and self._drop_one(False, key):
                    pass
                while len(self._sessions) >= MAX_SESSIONS and self._drop_one(detached_only=False):
                    pass
            self._sessions[(key, session)] = replies  # the most recently used last
            old, replies.owner = replies.owner, owner
        if old is not None and old is not owner:
            take_over(old)
        return replies, known

    def detach(self, replies: SessionReplies, owner: object) -> None:
        """``owner``'s connection ended (the session is kept for LINGER seconds)."""
        with self._lock:
            if replies.owner is owner:
                replies.owner = None
                replies.detached_at = self._clock()

    def grew(self, replies: SessionReplies, by: int) -> None:
        """``replies`` kept ``by`` bytes more (or less)."""
        with self._lock:
            if not replies.kept:
                return
            replies.counted += by
            self.bytes += by
            over = self.bytes - BUDGET
            while over > 0 and self._drop_one(detached_only=True):
                over = self.bytes - BUDGET
        if over > 0:
            freed = replies.shrink(over)
            with self._lock:
                if replies.kept:
                    replies.counted -= freed
                    self.bytes -= freed

    def _of_key(self, key: str) -> int:
        return sum(1 for k in self._sessions if k[0] == key)

    def _drop_one(self, detached_only: bool, key: str | None = None) -> bool:
        """Forget the least recently attached session without a connection (or, if
        ``detached_only`` is false and none is, the least recently attached one); of
        ``key`` only, if given."""
        mine = [k for k in self._sessions if key is None or k[0] == key]
        victim = next((k for k in mine if self._sessions[k].owner is None), None)
        if victim is None and not detached_only and mine:
            victim = mine[0]
        if victim is None:
            return False
        self._forget(victim)
        return True

    def _expire(self, now: float) -> None:
        gone = [k for k, r in self._sessions.items()
                if r.owner is None and now - r.detached_at > LINGER]  # fmt: skip
        for k in gone:
            self._forget(k)

    def _forget(self, k: tuple[str, bytes]) -> None:
        replies = self._sessions.pop(k)
        replies.kept = False
        self.bytes -= replies.counted

    def __len__(self) -> int:
        return len(self._sessions)


def forgotten_reply(m: Message) -> Message:
    text = ("the server no longer knows whether this resent request was applied "
            "(its reply was let go)")  # fmt: skip
    return p.reply(m, status=errno.ESTALE, data=text.encode())
