"""What an open file uses of its client, handed to it at open: the connection
to send on, the tables its cache locks and handles are routed by, and the
bounds on what it may keep unsent."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import protocol as p
from ..protocol import Attr, CacheMode, Command, Cred
from .connection import Connection
from .grants import Grants
from .held import HeldFiles
from .paths import PathArg, encode_path
from .registry import FileRegistry
from .resend import Resender


class WriteBudget:
    """Bytes sent behind and not yet answered, bounded: a writer waits for answers
    before it goes past ``limit`` (one request always goes, however large)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def take(self, n: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self.used or self.used + n <= self.limit, timeout)
            self.used += n
            self.peak = max(self.peak, self.used)

    def drained(self, timeout: float) -> bool:
        """Wait until nothing written behind is unanswered; False on time-out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.used, timeout)

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class Opened(NamedTuple):
    """What an OPEN gave: the connection and handle, the file's attributes, how many
    handles of other clients have it open for writing, the cache lock granted with
    it, the directory after it (if it may have created the file) and its identity."""

    conn: Connection
    oid: int
    attr: Attr
    writers: int
    cached: int
    directory: Attr | None
    fids: dict[str, bytes]  # its identity on each server (by address)
    watchers: int  # other clients that would hear of a change of its size (mounts)


@dataclass(frozen=True, eq=False)
class FileServices:
    connection: Callable[[], Connection]  # the client's live connection (reconnects)
    cred: Cred  # the client's identity, for files opened without one of their own
    grants: Grants  # cache locks, by handle: revocations
    files: FileRegistry  # open files, by handle: RESIZE, renames
    held: HeldFiles  # writes kept back, across files
    write_budget: WriteBudget  # writes sent behind and unanswered, across files
    stat_result: Callable[[Attr], os.stat_result]
    resender: Resender  # request ids of the client session, resends after a lost connection

    def open(self, path: PathArg, flags: int, perm: int, cred: Cred,
             cache: int = CacheMode.RELEASE, fids: dict[str, bytes] | None = None,
             shown: Any = None) -> Opened:  # fmt: skip
        """Open on the server (``cache`` asks for a cache lock with it: 0 shared, 1
        exclusive; 2: none). ``fids``: on the server of each address, only the file
        of that identity will do (a reopen); another one there fails with ESTALE (a
        server not in it takes any file of the name)."""
        raw = encode_path(path)

        def send(conn: Connection, xid: int, resent: bool) -> tuple[Connection, p.Message]:
            return conn, conn.call(Command.OPEN, path if shown is None else shown, cred=cred,
                                   path=raw, flags=flags, mode=perm, cache=cache,
                                   fids=fids or {}, xid=xid, resent=resent)  # fmt: skip

        # Only an open that may create or truncate is a change (applied once: a resend
        # opens the file it made); any other is simply sent again.
        conn, reply = self.resender.call(send, not flags & (os.O_CREAT | os.O_TRUNC))
        directory = reply["dir"] if reply["dir"].ino else None
        fids = {conn.address: reply["fid"], **conn.fids(reply.oid)}
        return Opened(conn, reply.oid, reply["attr"], reply["writers"], reply["cached"],
                      directory, fids, reply["watchers"])  # fmt: skip
