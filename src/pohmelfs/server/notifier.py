"""Notifications a session sends its client, and the answers it waits for.

The server speaks first only with notifications (REVOKE, RESIZE): each gets an id
of the session's own, and whoever waits for its answer is called back when the
client replies to that id, or when the connection ends (nobody will answer then).
``Notifiers`` finds a session's notifier by session id, for the revocations and
size notices that one client's request makes the server send to another.
"""

from __future__ import annotations

import collections
import errno
import threading
from collections.abc import Callable
from typing import Any

from ..protocol import Command, Header, Message
from ..protocol.exchange import Answered, Ignored, Request, ServerExchange
from .cachelocks import END, Holder

MAX_UNANSWERED = 4096  # notifications a session may leave unanswered at once


class Notifier:
    """One session's notifications, by the connection's exchange (ids, and what
    runs on each answer). ``send`` puts a frame on the connection; ``key_of``
    names the file of one of its handles or leases (None once gone)."""

    def __init__(self, send: Callable[[Message], None], key_of: Callable[[int], object]) -> None:
        self._exchange = ServerExchange[Callable[[], None]]()
        self._send = send
        self._key_of = key_of
        self._revoked = collections.Counter[object]()  # files whose locks it is asked back
        self._lock = threading.Lock()
        self.closed = False

    def notify(self, cmd: Command, oid: int, offset: int, length: int, fields: dict[str, Any],
               answered: Callable[[], None], key: object = None) -> None:  # fmt: skip
        """Send a notification; ``answered`` runs when the client replies (or its
        connection ends). ``key``: a revocation of this session's lock on that
        file (see ``revoking``). A client that leaves MAX_UNANSWERED unanswered
        gets no more: ENOBUFS, and whoever would have waited for it goes on."""
        if len(self._exchange) >= MAX_UNANSWERED:
            raise OSError(errno.ENOBUFS, "too many notifications unanswered")
        if key is not None:
            with self._lock:
                self._revoked[key] += 1

            def answered_revocation() -> None:
                with self._lock:
                    self._revoked[key] -= 1
                    if self._revoked[key] <= 0:
                        del self._revoked[key]
                answered()

            then = answered_revocation
        else:
            then = answered
        with self._lock:
            msg = self._exchange.notification(cmd, oid, offset, length, fields, then)
        try:
            self._send(msg)
        except OSError:
            with self._lock:
                self._exchange.unsent(msg.xid)
            raise

    def revoke(self, holder: Holder, keep: int, done: Callable[[], None]) -> None:
        """Ask the client to give up ``holder``'s cache lock (keeping ``keep``)."""
        oid = holder.owner[1]
        length = 0 if holder.end >= END else holder.end - holder.start
        self.notify(Command.REVOKE, oid, holder.start, length, {"keep": keep}, done,
                    self._key_of(oid))  # fmt: skip

    def receive(self, header: Header) -> Request | Answered[Callable[[], None]] | Ignored:
        """What a frame from the client is (``exchange.ServerExchange.receive``)."""
        with self._lock:
            return self._exchange.receive(header)

    def revoking(self, key: object) -> bool:
        """Is the client being asked to give up a lock on file ``key``?"""
        return bool(self._revoked) and key in self._revoked

    def close(self) -> None:
        """Nobody will answer what we asked: whoever waits for that goes on now."""
        self.closed = True
        with self._lock:
            waiting = self._exchange.take_all()
        for then in waiting:
            then()


class Notifiers:
    """The notifiers of a server's admitted sessions, by session id."""

    def __init__(self) -> None:
        self._by_session: dict[int, Notifier] = {}
        self._lock = threading.Lock()

    def add(self, sid: int, notifier: Notifier) -> None:
        with self._lock:
            self._by_session[sid] = notifier

    def remove(self, sid: int) -> None:
        with self._lock:
            self._by_session.pop(sid, None)

    def get(self, sid: int) -> Notifier | None:
        with self._lock:
            return self._by_session.get(sid)

    def tell_all(self, cmd: Command, fields: dict[str, Any]) -> None:
        """A notification that needs no more than its answer, to every session."""
        with self._lock:
            notifiers = list(self._by_session.values())
        for notifier in notifiers:
            if notifier.closed:
                continue
            try:
                notifier.notify(cmd, 0, 0, 0, fields, lambda: None)
            except OSError:
                pass  # (gone, or too far behind in answering: it learns at its next connect)

    def revoke(self, holder: Holder, keep: int, done: Callable[[], None]) -> None:
        """A ``cachelocks.Revoker``: the holder's session is asked to give it up."""
        notifier = self.get(holder.owner[0])
        if notifier is None or notifier.closed:
            raise OSError(errno.ENOTCONN, "holder gone")
        notifier.revoke(holder, keep, done)
