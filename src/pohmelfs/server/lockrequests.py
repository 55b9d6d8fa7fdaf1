"""Lock requests of a session: advisory locks (fcntl, flock) and cache locks."""

from __future__ import annotations

import errno

from .. import protocol as p
from ..protocol import Message
from . import cachelocks, locks
from .context import Context
from .handles import Handle
from .locks import UNLCK, WRLCK, Lock
from .replies import reply_for
from .storage import attr_of


class LockRequests:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sid = ctx.sid
        self.handles = ctx.handles
        self._locks = ctx.shared.locks
        self._cache = ctx.shared.cache

    def _wanted_lock(self, m: Message) -> Lock:
        if m["type"] > UNLCK or m["flags"] & ~(p.LOCK_WAIT | p.LOCK_FLOCK):
            raise OSError(errno.EINVAL, "bad lock type or flags")
        end = locks.END if m.length == 0 else m.offset + m.length
        flock = bool(m["flags"] & p.LOCK_FLOCK)
        return Lock((self.sid, m["owner"]), m["type"], m.offset, end, m["pid"], flock)

    def lock(self, m: Message) -> Message | None:
        h = self.handles.acquire(m.oid)
        try:
            want = self._wanted_lock(m)
            if want.type == WRLCK and not want.flock and not h.writable:
                # POSIX: an exclusive record lock needs a descriptor open for writing
                # (asking who holds one, GETLK, does not).
                raise OSError(errno.EBADF, "an exclusive lock needs a file open for writing")
        except OSError:
            self.handles.release(h)
            raise
        if not m["flags"] & p.LOCK_WAIT or want.type == UNLCK:
            try:
                self._locks.set(h.key, want)
            finally:
                self.handles.release(h)
            return p.reply(m)
        # A wait may last as long as the holder likes: it is an entry in the lock
        # table (no thread), bounded with the session's other waiting requests.
        waits = self.ctx.waits
        waits.park(m, h)

        def granted(error: OSError | None) -> None:
            waits.unpark(m)
            self.handles.release(h)
            if waits.closed:
                return
            # Sent by this session's own thread: the granter (another session's) must
            # not wait for a client that does not read, nor the shared pool either.
            waits.send_later(p.reply(m) if error is None else reply_for(m, error))

        try:
            taken = self._locks.wait_for(h.key, want, granted)
        except BaseException:
            waits.unpark(m)
            self.handles.release(h)
            raise
        if not taken:
            return None
        waits.unpark(m)
        self.handles.release(h)
        return p.reply(m)

    def getlk(self, m: Message) -> Message:
        with self.handles.using(m.oid) as h:
            held = self._locks.conflict(h.key, self._wanted_lock(m))
        if held is None:
            return p.reply(m, type=UNLCK, pid=0)
        length = 0 if held.end >= locks.END else held.end - held.start
        return p.reply(m, offset=held.start, length=length, type=held.type, pid=held.pid)

    def _cache_reply(self, m: Message, h: Handle) -> Message:
        """The file as it is now, and how many handles elsewhere write it."""
        writers = self.ctx.shared.writers.elsewhere(h.key, self.sid)
        watchers = self.ctx.shared.sizes.count_elsewhere(h.key, self.sid)
        st = self.ctx.shared.stamps.look(h.key, h.file.stat, h.file)
        return p.reply(m, attr=attr_of(st), writers=writers, watchers=watchers)

    def cache(self, m: Message) -> Message | None:
        if m["type"] > cachelocks.RELEASE:
            raise OSError(errno.EINVAL, "bad cache lock type")
        h = self.handles.acquire(m.oid)
        end = cachelocks.END if m.length == 0 else m.offset + m.length
        owner = (self.sid, m.oid)
        if m["type"] == cachelocks.RELEASE:
            try:
                self._cache.release(h.key, owner, m.offset, end)
                return self._cache_reply(m, h)
            finally:
                self.handles.release(h)

        if self._cache.try_acquire(h.key, owner, m["type"], m.offset, end, h.directory):
            try:  # the common case: nobody to revoke, so no thread to wait in
                return self._cache_reply(m, h)
            finally:
                self.handles.release(h)

        def grant() -> Message:  # revoking others takes their round trips
            self._cache.acquire(h.key, owner, m["type"], m.offset, end,
                               self.ctx.shared.notifiers.revoke, h.directory)  # fmt: skip
            return self._cache_reply(m, h)

        self.ctx.waits.answer_later(m, h, grant)
        return None
