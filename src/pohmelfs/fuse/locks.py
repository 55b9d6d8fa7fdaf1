"""fcntl and flock locks through the mount, forwarded to the server's lock table.

The kernel sends GETLK/SETLK/SETLKW (with INIT's POSIX_LOCKS and FLOCK_LOCKS);
its lock owner ids become ours, so every mount shares one lock table on the
server. A process's POSIX locks on a file go when it closes any descriptor of
it (FLUSH carries the owner); flock locks when the open file goes (RELEASE).
A blocking SETLKW is answered by the client's receive thread once the server
grants it; if the waiting process is interrupted, it gets EINTR at once and a
lock granted afterwards is given back. It waits as long as the server says it is
still waiting (PENDING), however long another holder keeps the lock; a server
silent for the mount's time-out gives the process ETIMEDOUT, never a hung
process, and the connection is given up (its end takes the waiting request away
on the server; the next call goes to a new one, or to the next server).
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable

from .. import protocol as p
from ..client.calls import LockRange, lock_holder, start_lock, wait_lock
from ..client.connection import Transaction
from ..client.file import RemoteFile
from ..protocol import LockType
from . import kernel as k
from .reply import Replier, tx_errno

OFFSET_MAX = 0x7FFFFFFFFFFFFFFF  # the kernel's "to the end of the file"
UNLCK = LockType.UNLCK


def _ignore(_tx: Transaction) -> None:
    pass


class FuseLocks:
    def __init__(self, invalidate: Callable[[int], None]) -> None:
        # Called with a node id when one of its locks is granted: like NFS, a
        # lock taken means "show me the latest data", so cached pages must go.
        self.invalidate = invalidate
        self._lock = threading.Lock()
        self._posix_owners: dict[int, set[int]] = {}  # nodeid -> owners holding locks
        self._waiting: dict[int, tuple[Replier, RemoteFile, k.Request, bool]] = {}

    @staticmethod
    def _range(a: object) -> LockRange:
        """The kernel's lock arguments (an inclusive end) as the server's range."""
        start, end = a.start, a.end  # type: ignore[attr-defined]
        length = 0 if end >= OFFSET_MAX else end - start + 1
        return LockRange(start, length, a.owner, a.pid)  # type: ignore[attr-defined]

    def getlk(self, req: k.Request, f: RemoteFile, reply: Replier) -> None:
        a = req.args
        flags = p.LOCK_FLOCK if a.lk_flags & k.LK_FLOCK else 0
        held = lock_holder(f, self._range(a), a.type, flags)
        if held is None:
            reply.ok(k.pack_lk(0, 0, UNLCK, 0))
            return
        end = OFFSET_MAX if held.length == 0 else held.offset + held.length - 1
        reply.ok(k.pack_lk(held.offset, end, held.type, held.pid))

    def setlk(self, req: k.Request, f: RemoteFile, reply: Replier, wait: bool) -> None:
        a = req.args
        flock = bool(a.lk_flags & k.LK_FLOCK)
        flags = (p.LOCK_FLOCK if flock else 0) | (p.LOCK_WAIT if wait and a.type != UNLCK else 0)
        if not flock and a.type != UNLCK:
            with self._lock:
                self._posix_owners.setdefault(req.nodeid, set()).add(a.owner)
        if not flags & p.LOCK_WAIT:
            wait_lock(f, self._range(a), a.type, flags)
            if a.type != UNLCK:
                self.invalidate(req.nodeid)
            reply.ok()
            return
        with self._lock:
            self._waiting[req.unique] = (reply, f, req, False)

        def granted(tx: Transaction) -> None:
            with self._lock:
                _reply, _f, _req, interrupted = self._waiting.pop(req.unique, (reply, f, req, True))
            failed = tx.error is not None or tx.reply is None or tx.reply.status
            if interrupted:
                if not failed:  # the process gave up waiting: give the lock back
                    start_lock(f, self._range(a), UNLCK, flags & p.LOCK_FLOCK, callback=_ignore,
                               behind=True)  # fmt: skip
                return
            if failed:
                if isinstance(tx.error, TimeoutError):
                    # Silent, not even PENDING: a grant may still come, and only the
                    # connection's end takes the waiting request away on the server.
                    with contextlib.suppress(OSError):
                        f.handle()[0].lose("silent for the time-out about a blocking lock")
                reply.error(tx_errno(tx))
            else:
                self.invalidate(req.nodeid)
                reply.ok()

        try:
            start_lock(f, self._range(a), a.type, flags, callback=granted)
        except BaseException:
            with self._lock:  # never sent: nobody will answer it
                self._waiting.pop(req.unique, None)
            raise

    def interrupt(self, unique: int) -> None:
        """The kernel gave up on request ``unique`` (a signal): answer a waiting
        SETLKW with EINTR now."""
        with self._lock:
            entry = self._waiting.get(unique)
            if entry is None:
                return
            reply, f, req, _ = entry
            self._waiting[unique] = (reply, f, req, True)
        reply.error(errno.EINTR)

    def flush(self, nodeid: int, f: RemoteFile, lock_owner: int) -> None:
        """close(2) of any descriptor drops the process's POSIX locks on the file."""
        with self._lock:
            owners = self._posix_owners.get(nodeid)
            if owners is None or lock_owner not in owners:
                return
            owners.discard(lock_owner)
            if not owners:
                del self._posix_owners[nodeid]
        wait_lock(f, LockRange(0, 0, lock_owner, 0), UNLCK, 0)

    def release(self, f: RemoteFile, lock_owner: int) -> None:
        """The open file went away holding flock locks."""
        start_lock(f, LockRange(0, 0, lock_owner, 0), UNLCK, p.LOCK_FLOCK, callback=_ignore,
                   behind=True)  # fmt: skip
