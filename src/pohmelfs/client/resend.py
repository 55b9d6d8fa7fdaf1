"""Requests sent again after a lost connection, under the id they first had.

Every request of a client session has an id of its own (``Resender.xids``, shared
by the session's connections). When the connection carrying a request is lost
before its answer came, the request goes again on the next connection with the
same id, marked RESENT: a server that applied it answers as it did then
(``server/replycache.py``), so a change is applied once. A change is sent again
only if the new connection resumed the session (the server kept its replies: it
was not restarted); a request that changes nothing is sent again in any case. At
most ``RESENDS`` times, then the call fails with ETIMEDOUT.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import Rerouted
from .connection import Connection

T = TypeVar("T")
Target = TypeVar("Target")
RESENDS = 2  # sends of one request after the first, each on a new connection


def resending(where: Callable[[], tuple[Connection, Target]],
              send: Callable[[Connection, Target, bool], T], idempotent: bool) -> T:  # fmt: skip
    """``send(conn, target, resent)`` on ``where()``'s connection (and what to send
    on there: a handle, say); after a lost connection, again on the next one (see
    the module's rules)."""
    conn, target = where()
    attempt = 0
    while True:
        try:
            return send(conn, target, attempt > 0)
        except ConnectionError as e:
            if not conn.closed and not isinstance(e, Rerouted):
                raise
            lost, lost_on = e, conn
        attempt += 1
        if attempt > RESENDS:
            why = f"{lost.strerror}; sent {attempt} times, on a new connection each time"
            raise OSError(errno.ETIMEDOUT, why, lost.filename)
        conn, target = where()
        if not idempotent and not (conn.resumed and conn.address in lost_on.members):
            # The server forgot the session, or never had the change: it may have been
            # applied, and cannot be told from one that was not.
            raise lost


class Resender:
    """The request ids of one client session, and its requests' resends."""

    def __init__(self, connection: Callable[[], Connection]) -> None:
        self._connection = connection
        self.xids: Iterator[int] = itertools.count(1)

    def next_xid(self) -> int:
        return next(self.xids)

    def call(self, send: Callable[[Connection, int, bool], T], idempotent: bool) -> T:
        """``send(conn, xid, resent)``, resent as ``resending`` says, with one id."""
        xid = next(self.xids)
        return resending(lambda: (self._connection(), xid), send, idempotent)
