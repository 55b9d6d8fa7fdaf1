"""The cache locks this client holds, by connection and handle: where the
server's revocations go.

One table for every kind of holder (an open file's lock, a mount's lease on a
file's attributes, a name lock on a directory): a REVOKE names a handle of one
connection, and whoever registered that handle writes back and gives way before
the answer goes. A revocation may come before its holder is registered (a lock
granted with an OPEN whose reply is still on its way): it is remembered, and the
registration then learns the lock is not its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from .. import protocol as p
from .connection import Connection

log = logging.getLogger("pohmelfs.client")

MAX_EARLY = 4096  # revocations remembered for holders not registered yet


class Revocable(Protocol):
    def revoked(self, keep: int, start: int, length: int) -> None:
        """Give (part of) the lock back: write back and drop what it covered."""


class Grants:
    def __init__(self) -> None:
        self._holders: dict[tuple[int, int], Revocable] = {}
        self._early: dict[tuple[int, int], None] = {}  # oldest first, bounded
        self._lock = threading.Lock()

    def register(self, conn: Connection, oid: int, holder: Revocable) -> bool:
        """Route the server's revocations of handle ``oid`` to ``holder``. False if one
        came already (for a lock granted with the open): that lock is not ours."""
        key = (conn.serial, oid)
        with self._lock:
            self._holders[key] = holder
            return self._early.pop(key, 0) is not None

    def unregister(self, conn: Connection, oid: int) -> None:
        with self._lock:
            self._holders.pop((conn.serial, oid), None)

    def revoke(self, conn: Connection, msg: p.Message) -> None:
        """The server's REVOKE (on a revocation thread, never the receive thread):
        the holder gives way, then the answer goes."""
        key = (conn.serial, msg.oid)
        with self._lock:  # against a holder registering
            holder = self._holders.get(key)
            if holder is None:  # granted with an open not registered yet (or closed)
                self._early[key] = None
                if len(self._early) > MAX_EARLY:
                    del self._early[next(iter(self._early))]
        try:
            if holder is not None:
                holder.revoked(msg["keep"], msg.offset, msg.length)
        except Exception:
            log.exception("revoking a cache lock failed")
        try:
            conn.answer(msg)
        except OSError:
            pass  # the connection is gone, and the server dropped our locks with it

    def connection_lost(self, conn: Connection) -> None:
        """Its handles, and their locks, are gone."""
        with self._lock:
            for key in [k for k in self._holders if k[0] == conn.serial]:
                del self._holders[key]
