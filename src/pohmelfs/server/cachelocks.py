"""Cache locks: what a client may cache, granted by the server and revoked on conflict.

A client holding a shared cache lock on a byte range of a file may serve reads
from its cache; an exclusive one may also buffer writes. When another client
asks for a conflicting lock, the server sends each holder a REVOKE
notification and waits for its answer, which comes after the holder has
written back and dropped its cache. A holder that does not answer within the
lease loses the lock anyway and is *fenced*: its later writes through that
handle are refused, so nothing it sends under the lost lock is applied.

Requests that must wait are served in arrival order per file (``Waiter``): a
request never overtakes an earlier one it conflicts with, so new shared grants
cannot starve a waiting writer, nor writers a waiting reader. A session that
let a lease run out is *lapsed* until it answers: later revocations of its
locks do not wait for it, so a frozen or hostile holder costs the others one
lease, once.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..protocol import CacheMode
from .locks import END, carve

log = logging.getLogger("pohmelfs.server")

__all__ = ["END", "EXCLUSIVE", "RELEASE", "SHARED", "CacheLocks", "Holder", "Revoker"]
SHARED, EXCLUSIVE, RELEASE = CacheMode
# What a waiting request wants: a lock (GRANT), other sessions' exclusive holders to
# write back before a plain read (SETTLE), every other holder gone for a change (CHANGE).
GRANT, SETTLE, CHANGE = 0, 1, 2
POLL = 1.0  # a waiter looks again this often even if nobody wakes it (a safety net)


@dataclass(eq=False)
class Holder:
    """One client's cache lock: ``owner`` is (session id, handle)."""

    owner: tuple[int, int]
    type: int
    start: int
    end: int
    revoking: bool = field(default=False)


@dataclass(eq=False)
class Waiter:
    """A request waiting for its turn on one file."""

    kind: int
    session: int
    type: int  # for GRANT: the lock wanted
    start: int
    end: int

    def writes(self) -> bool:
        return self.kind == CHANGE or (self.kind == GRANT and self.type == EXCLUSIVE)

    def blocks(self, later: Waiter) -> bool:
        """Must ``later``, queued after this one, wait for it? Only another session's
        request that conflicts: an exclusive grant with anything; a change with a
        shared grant. Plain reads and changes never hold anything, so they do not
        keep each other waiting."""
        if later.session == self.session or later.end <= self.start or self.end <= later.start:
            return False
        if (self.kind == GRANT and self.type == EXCLUSIVE) or (
            later.kind == GRANT and later.type == EXCLUSIVE
        ):
            return True
        return {self.kind, later.kind} == {GRANT, CHANGE}


@dataclass(eq=False)
class _Asked:
    """A revocation sent and not answered yet."""

    key: object
    holder: Holder
    keep: int
    deadline: float
    answered: bool = False
    expired: bool = False


# revoke(holder, keep, done) asks the holder's client to give up the lock (keep SHARED
# to downgrade, RELEASE to drop it) and calls done() once the client has answered.
Revoker = Callable[[Holder, int, Callable[[], None]], None]


class CacheLocks:
    def __init__(self, lease: float = 5.0) -> None:
        self.lease = lease
        self._mutex = threading.RLock()  # guards everything here
        self._cond = threading.Condition(self._mutex)  # the lease thread waits on it
        # key -> the condition its waiting requests sleep on (same lock): a change of
        # one file wakes only the requests waiting for that file.
        self._wakers: dict[object, threading.Condition] = {}
        self._closed = False
        self._held: dict[object, list[Holder]] = {}
        self._queues: dict[object, list[Waiter]] = {}  # key -> waiting requests, oldest first
        # Exclusive holders of directory locks anywhere (read without the lock): only
        # they may have changed names ahead of the server.
        self.exclusive_dirs = 0
        self._dir_keys: set[object] = set()  # keys of directories that have holders
        self.fenced: set[tuple[int, int]] = set()  # owners that lost a lock unasked
        # key -> sessions changing it right now (see ``changing``)
        self._busy: dict[object, collections.Counter[int]] = {}
        # session -> revocations it let run out and has not answered since
        self._lapsed: collections.Counter[int] = collections.Counter()
        self._leases: list[tuple[float, int, _Asked]] = []  # a heap of unanswered revocations
        self._lease_seq = itertools.count()
        self._lease_thread: threading.Thread | None = None
        self._unheld: Callable[[object], None] = lambda key: None
        # Told how long each revocation took (answered or run out): metrics.
        self.on_revoked: Callable[[float], None] | None = None

    def when_unheld(self, forget: Callable[[object], None]) -> None:
        """Call ``forget(key)`` (with the table's lock) when a key loses its last
        holder."""
        self._unheld = forget

    # --- who conflicts ---------------------------------------------------------

    def _conflicts(self, key: object, owner: tuple[int, int], type_: int, start: int,
                   end: int) -> list[Holder]:  # fmt: skip
        return [
            h
            for h in self._held.get(key, ())
            if h.owner != owner and h.start < end and start < h.end
            and (h.type == EXCLUSIVE or type_ == EXCLUSIVE)
        ]  # fmt: skip

    def _elsewhere(self, key: object, session: int, write: bool, start: int,
                   end: int) -> list[Holder]:  # fmt: skip
        return [
            h
            for h in self._held.get(key, ())
            if h.owner[0] != session and h.start < end and start < h.end
            and (write or h.type == EXCLUSIVE)
        ]  # fmt: skip

    def _holds(self, key: object, session: int, start: int, end: int) -> bool:
        return any(
            h.owner[0] == session and h.start < end and start < h.end
            for h in self._held.get(key, ())
        )

    def _blocked(self, key: object, w: Waiter) -> bool:
        """Is an earlier waiter ahead of ``w``'s turn? A plain read or change by a
        session holding a lock on the range is never kept waiting by the queue: it
        may be the write-back that the requests ahead of it wait for. (A grant is:
        taken by a holder being revoked, it would renew the lock being waited for.)"""
        queue = self._queues.get(key)
        if not queue or (w.kind != GRANT and self._holds(key, w.session, w.start, w.end)):
            return False
        for earlier in queue:
            if earlier is w:
                return False
            if earlier.blocks(w):
                return True
        return False

    def _busy_elsewhere(self, key: object, session: int) -> bool:
        busy = self._busy.get(key)
        return busy is not None and any(s != session for s in busy)

    @contextmanager
    def _queued(self, keys: Sequence[object], w: Waiter) -> Iterator[None]:
        """``w`` waits in the queue of each key (with the lock held)."""
        for key in keys:
            self._queues.setdefault(key, []).append(w)
            if key not in self._wakers:
                self._wakers[key] = threading.Condition(self._mutex)
        try:
            yield
        finally:
            for key in keys:
                queue = self._queues[key]
                queue.remove(w)
                self._wake(key)
                if not queue:
                    del self._queues[key]
                    del self._wakers[key]
            self._cond.notify_all()

    def _wake(self, key: object) -> None:
        """(With the lock.) Something changed for ``key``: its waiters look again."""
        waker = self._wakers.get(key)
        if waker is not None:
            waker.notify_all()

    def _take_turn(self, key: object, w: Waiter, conflicts_now: Callable[[], list[Holder]],
                   keep: int, revoke: Revoker,
                   ready: Callable[[], bool] = lambda: True) -> None:  # fmt: skip
        """(With the lock.) Wait until no earlier request is ahead of ``w``, then revoke
        until ``conflicts_now()`` is empty and ``ready()``; returns with the lock."""
        while True:
            if not self._blocked(key, w):
                conflicts = conflicts_now()
                if not conflicts and ready():
                    return
                to_ask = [h for h in conflicts if not h.revoking]
                if to_ask:
                    for h in to_ask:
                        h.revoking = True
                    self._cond.release()
                    try:
                        for h in to_ask:
                            self._ask(key, h, keep, revoke)
                    finally:
                        self._cond.acquire()
                    continue
            self._wakers[key].wait(POLL)

    # --- grants ----------------------------------------------------------------

    def acquire(self, key: object, owner: tuple[int, int], type_: int, start: int, end: int,
                revoke: Revoker, directory: bool = False) -> None:  # fmt: skip
        """Grant ``owner`` a cache lock once the conflicting requests before it are
        served, revoking conflicting holders first (blocks).
        ``directory``: the key is a directory's (counted in ``exclusive_dirs``)."""
        keep = SHARED if type_ == SHARED else RELEASE
        w = Waiter(GRANT, owner[0], type_, start, end)
        with self._cond:
            if directory:
                self._dir_keys.add(key)
            self.fenced.discard(owner)
            with self._queued((key,), w):
                conflicts = lambda: self._conflicts(key, owner, type_, start, end)  # noqa: E731
                free = lambda: not self._busy_elsewhere(key, owner[0])  # noqa: E731
                self._take_turn(key, w, conflicts, keep, revoke, free)
                self._put(key, Holder(owner, type_, start, end))

    def try_acquire(self, key: object, owner: tuple[int, int], type_: int, start: int,
                    end: int, directory: bool = False) -> bool:  # fmt: skip
        """Grant at once if nothing conflicts and nobody waits for a conflicting
        lock (no revocation, so it never blocks)."""
        w = Waiter(GRANT, owner[0], type_, start, end)
        with self._cond:
            if directory:
                self._dir_keys.add(key)
            if (self._busy_elsewhere(key, owner[0]) or self._blocked(key, w)
                    or self._conflicts(key, owner, type_, start, end)):  # fmt: skip
                return False
            self.fenced.discard(owner)
            self._put(key, Holder(owner, type_, start, end))
            self._cond.notify_all()
            return True

    # --- plain reads and changes by clients that hold no lock for them -------------

    def conflicting(self, key: object, session: int, start: int, end: int) -> bool:
        """Would a plain read of the range by ``session`` conflict with another
        session's exclusive lock (a writer that may keep data back)?"""
        if not self._held:  # no cache locks anywhere: the common case, without the lock
            return False
        with self._cond:
            return bool(self._elsewhere(key, session, False, start, end))

    def settle(self, key: object, session: int, start: int, end: int,
               revoke: Revoker) -> None:  # fmt: skip
        """Make a plain read of ``session`` safe against other sessions' caches:
        exclusive holders write back and keep a shared lock (blocks). Writes go
        through ``changing`` instead."""
        w = Waiter(SETTLE, session, SHARED, start, end)
        with self._cond, self._queued((key,), w):
            self._take_turn(key, w, lambda: self._elsewhere(key, session, False, start, end),
                            SHARED, revoke)  # fmt: skip

    def try_changing(self, keys: Sequence[object], session: int, start: int = 0,
                     end: int = END) -> bool:  # fmt: skip
        """Begin a change at once if no other session holds a lock it conflicts with
        and none waits for one (no revocation, so it never blocks); end it with
        ``changed``."""
        w = Waiter(CHANGE, session, EXCLUSIVE, start, end)
        with self._cond:
            if (self._held or self._queues) and any(
                self._elsewhere(k, session, True, start, end) or self._blocked(k, w) for k in keys
            ):
                return False
            self._busy_begin(keys, session)
            return True

    def changed(self, keys: Sequence[object], session: int) -> None:
        with self._cond:
            self._unbusy(keys, session)

    @contextmanager
    def changing(self, keys: Sequence[object], session: int, revoke: Revoker,
                 start: int = 0, end: int = END) -> Iterator[None]:  # fmt: skip
        """A change by a client that holds no lock for it (a plain write, or a name
        created or removed in a directory): once the conflicting requests before it
        are served, every other session's lock on the range of each key is revoked
        (written back and dropped), and none is granted again until the change is
        done, so no client caches what it replaces."""
        w = Waiter(CHANGE, session, EXCLUSIVE, start, end)
        with self._cond, self._queued(keys, w):
            while True:
                for key in keys:
                    self._take_turn(key, w,
                                    lambda k=key: self._elsewhere(k, session, True, start, end),
                                    RELEASE, revoke)  # fmt: skip
                # Revoking one key released the lock: the others may have holders again.
                if not any(self._elsewhere(k, session, True, start, end) for k in keys):
                    break
            self._busy_begin(keys, session)
        try:
            yield
        finally:
            with self._cond:
                self._unbusy(keys, session)

    def _busy_begin(self, keys: Sequence[object], session: int) -> None:
        for key in keys:
            self._busy.setdefault(key, collections.Counter())[session] += 1

    def _unbusy(self, keys: Sequence[object], session: int) -> None:
        for key in keys:
            busy = self._busy[key]
            busy[session] -= 1
            if busy[session] <= 0:
                del busy[session]
            if not busy:
                del self._busy[key]
            self._wake(key)
        self._cond.notify_all()

    # --- revocation and leases --------------------------------------------------

    def _ask(self, key: object, h: Holder, keep: int, revoke: Revoker) -> None:
        """Send one revocation (without the lock). It is over when the client answers,
        when its connection is gone, or when the lease runs out; a lapsed session's
        is over at once (it is still sent, for when the client wakes up)."""
        asked = _Asked(key, h, keep, time.monotonic() + self.lease)
        sent, told = time.monotonic(), self.on_revoked

        def done() -> None:
            nonlocal told
            if told is not None:  # (once: a late answer comes after the lease ran out)
                tell, told = told, None
                tell(time.monotonic() - sent)
            with self._cond:
                if asked.expired:  # a late answer: the session is responsive again
                    self._lapsed[h.owner[0]] -= 1
                    if self._lapsed[h.owner[0]] <= 0:
                        del self._lapsed[h.owner[0]]
                elif not asked.answered:
                    asked.answered = True
                    self._give_up(key, h, keep)
                self._cond.notify_all()

        try:
            revoke(h, keep, done)
        except OSError:  # its connection is gone: so are its locks
            done()
            return
        with self._cond:
            if asked.answered:
                return
            if self._lapsed.get(h.owner[0]):
                self._expire(asked)
                return
            heapq.heappush(self._leases, (asked.deadline, next(self._lease_seq), asked))
            if self._lease_thread is None:
                self._lease_thread = threading.Thread(target=self._lease_loop, daemon=True,
                                                      name="pohmelfs-leases")  # fmt: skip
                self._lease_thread.start()
            self._cond.notify_all()

    def _expire(self, asked: _Asked) -> None:
        """(With the lock.) Silent past its lease: the lock goes, the holder is fenced,
        and its session is lapsed until it answers."""
        asked.expired = True
        h = asked.holder
        if h in self._held.get(asked.key, ()):
            self._give_up(asked.key, h, RELEASE)
            self.fenced.add(h.owner)
        if not self._lapsed[h.owner[0]]:
            log.warning("session %d did not answer a revocation within its lease (%.1f s): "
                        "its lock is taken back and it is not waited for until it answers",
                        h.owner[0], self.lease)  # fmt: skip
        self._lapsed[h.owner[0]] += 1
        self._cond.notify_all()

    def close(self) -> None:
        """The server stops: the lease thread ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _lease_loop(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._leases and (self._leases[0][2].answered or self._leases[0][0] <= now):
                    _, _, asked = heapq.heappop(self._leases)
                    if not asked.answered and not asked.expired:
                        self._expire(asked)
                # (Woken by every change of the table, and at the next deadline.)
                self._cond.wait(max(self._leases[0][0] - now, 0.001) if self._leases else None)

    def lapsed(self, session: int) -> bool:
        """Has ``session`` let a revocation run out and not answered it since?"""
        return bool(self._lapsed.get(session))

    def lapse(self, session: int) -> None:
        """``session`` let another notification run out (RESIZE): nobody waits for it
        until it answers (``unlapse``)."""
        with self._cond:
            self._lapsed[session] += 1

    def unlapse(self, session: int) -> None:
        with self._cond:
            if self._lapsed.get(session, 0) > 1:
                self._lapsed[session] -= 1
            else:
                self._lapsed.pop(session, None)

    # --- the table --------------------------------------------------------------

    def _store(self, key: object, holders: list[Holder]) -> None:
        """The one place ``_held`` changes: it keeps ``exclusive_dirs`` counted."""
        if key in self._dir_keys:
            old = self._held.get(key, ())
            self.exclusive_dirs += sum(h.type == EXCLUSIVE for h in holders) - sum(
                h.type == EXCLUSIVE for h in old
            )
        if holders:
            self._held[key] = holders
        elif self._held.pop(key, None) is not None:
            self._dir_keys.discard(key)
            self._unheld(key)
        else:
            self._dir_keys.discard(key)
        self._wake(key)

    def _give_up(self, key: object, h: Holder, keep: int) -> None:
        ranges = list(self._held.get(key, ()))
        if h in ranges:
            ranges.remove(h)
            if keep == SHARED and h.type == EXCLUSIVE:
                ranges.append(Holder(h.owner, SHARED, h.start, h.end))
        self._store(key, ranges)

    def _put(self, key: object, new: Holder) -> None:
        """Record ``new``, replacing the owner's own overlapping ranges."""
        kept = carve(
            self._held.get(key, ()),
            lambda h: h.owner == new.owner,
            new.start,
            new.end,
            lambda h, start, end: Holder(h.owner, h.type, start, end),
        )
        if new.type != RELEASE:
            kept.append(new)
        self._store(key, kept)

    def release(self, key: object, owner: tuple[int, int], start: int, end: int) -> None:
        with self._cond:
            self._put(key, Holder(owner, RELEASE, start, end))
            self._cond.notify_all()

    def forget(self, key: object, owner: tuple[int, int]) -> None:
        """Forget ``owner``'s locks on ``key`` (a closed handle, a lease given back)."""
        with self._cond:
            self._store(key, [h for h in self._held.get(key, ()) if h.owner != owner])
            self.fenced.discard(owner)
            self._cond.notify_all()

    def drop_session(self, session: int) -> None:
        """Forget everything of a session whose connection ended."""
        with self._cond:
            for key in list(self._held):
                self._store(key, [h for h in self._held[key] if h.owner[0] != session])
            self.fenced = {o for o in self.fenced if o[0] != session}
            self._lapsed.pop(session, None)
            for _, _, asked in self._leases:  # its revocations are over (nobody to fence)
                if asked.holder.owner[0] == session:
                    asked.answered = True
            self._cond.notify_all()

    def holder_count(self) -> int:
        """How many locks are held, on all objects."""
        with self._mutex:
            return sum(len(holders) for holders in self._held.values())

    def held(self, key: object) -> list[Holder]:
        with self._cond:
            return list(self._held.get(key, ()))

    def has_holders(self, key: object) -> bool:
        """Does anybody hold a lock on ``key``? (Without the lock: a glance.)"""
        return key in self._held

    def anything_held(self) -> bool:
        return bool(self._held)

    def held_keys(self) -> list[object]:
        """Every key somebody holds a lock on."""
        with self._cond:
            return [key for key, holders in self._held.items() if holders]

    def waiting(self, key: object) -> list[Waiter]:
        """The requests waiting for their turn on ``key``, oldest first."""
        with self._cond:
            return list(self._queues.get(key, ()))

    def wait_idle(self, timeout: float) -> bool:
        """For tests: wait until no revocation is in progress."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(h.revoking for hs in self._held.values() for h in hs):
                if time.monotonic() > deadline:
                    return False
                self._cond.wait(0.05)
        return True
