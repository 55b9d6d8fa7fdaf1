"""Cache locks: what a client may cache, granted by the server and revoked on conflict.

A client holding a shared cache lock on a byte range of a file may serve reads
from its cache; an exclusive one may also buffer writes. When another client
asks for a conflicting lock, the server sends each holder a REVOKE
notification and waits for its answer, which comes after the holder has
written back and dropped its cache. A holder that does not answer within the
lease loses the lock anyway and is *fenced*: its later writes through that
handle are refused, so nothing it sends under the lost lock is applied.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .locks import END, carve

__all__ = ["END", "EXCLUSIVE", "RELEASE", "SHARED", "CacheLocks", "Holder"]
SHARED, EXCLUSIVE, RELEASE = 0, 1, 2


@dataclass(eq=False)
class Holder:
    """One client's cache lock: ``owner`` is (session id, handle)."""

    owner: tuple[int, int]
    type: int
    start: int
    end: int
    revoking: bool = field(default=False)


# revoke(holder, keep) asks the holder's client to give up the lock (keep SHARED to
# downgrade, RELEASE to drop it) and calls done() once the client has answered.
Revoker = Callable[[Holder, int, Callable[[], None]], None]


class CacheLocks:
    def __init__(self, lease: float = 5.0) -> None:
        self.lease = lease
        self._cond = threading.Condition()
        self._held: dict[object, list[Holder]] = {}
        # Exclusive holders of directory locks anywhere (read without the lock): only
        # they may have changed names ahead of the server.
        self.exclusive_dirs = 0
        self._dir_keys: set[object] = set()  # keys of directories that have holders
        self.fenced: set[tuple[int, int]] = set()  # owners that lost a lock unasked
        # key -> sessions changing it right now without a lock (see ``changing``)
        self._busy: dict[object, collections.Counter[int]] = {}

    def _conflicts(self, key: object, owner: tuple[int, int], type_: int, start: int,
                   end: int) -> list[Holder]:  # fmt: skip
        return [
            h
            for h in self._held.get(key, ())
            if h.owner != owner and h.start < end and start < h.end
            and (h.type == EXCLUSIVE or type_ == EXCLUSIVE)
        ]  # fmt: skip

    def acquire(self, key: object, owner: tuple[int, int], type_: int, start: int, end: int,
                revoke: Revoker, directory: bool = False) -> None:  # fmt: skip
        """Grant ``owner`` a cache lock, revoking conflicting ones first (blocks).
        ``directory``: the key is a directory's (counted in ``exclusive_dirs``)."""
        keep = SHARED if type_ == SHARED else RELEASE
        with self._cond:
            if directory:
                self._dir_keys.add(key)
            self.fenced.discard(owner)
            while True:
                self._clear(key, lambda: self._conflicts(key, owner, type_, start, end), keep,
                            revoke)  # fmt: skip
                if not self._busy_elsewhere(key, owner[0]):
                    break
                self._cond.wait(0.05)
            self._put(key, Holder(owner, type_, start, end))
            self._cond.notify_all()

    def try_acquire(self, key: object, owner: tuple[int, int], type_: int, start: int,
                    end: int, directory: bool = False) -> bool:  # fmt: skip
        """Grant at once if nothing conflicts (no revocation, so it never blocks)."""
        with self._cond:
            if directory:
                self._dir_keys.add(key)
            if self._busy_elsewhere(key, owner[0]) or self._conflicts(key, owner, type_, start,
                                                                         end):  # fmt: skip
                return False
            self.fenced.discard(owner)
            self._put(key, Holder(owner, type_, start, end))
            self._cond.notify_all()
            return True

    def _elsewhere(self, key: object, session: int, write: bool, start: int,
                   end: int) -> list[Holder]:  # fmt: skip
        return [
            h
            for h in self._held.get(key, ())
            if h.owner[0] != session and h.start < end and start < h.end
            and (write or h.type == EXCLUSIVE)
        ]  # fmt: skip

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
        with self._cond:
            self._clear(key, lambda: self._elsewhere(key, session, False, start, end), SHARED,
                        revoke)  # fmt: skip

    def _busy_elsewhere(self, key: object, session: int) -> bool:
        busy = self._busy.get(key)
        return busy is not None and any(s != session for s in busy)

    def try_changing(self, keys: Sequence[object], session: int, start: int = 0,
                     end: int = END) -> bool:  # fmt: skip
        """Begin a change at once if no other session holds a lock it conflicts with
        (no revocation, so it never blocks); end it with ``changed``."""
        with self._cond:
            if self._held and any(self._elsewhere(k, session, True, start, end) for k in keys):
                return False
            for key in keys:
                self._busy.setdefault(key, collections.Counter())[session] += 1
            return True

    def changed(self, keys: Sequence[object], session: int) -> None:
        with self._cond:
            self._unbusy(keys, session)

    @contextmanager
    def changing(self, keys: Sequence[object], session: int, revoke: Revoker,
                 start: int = 0, end: int = END) -> Iterator[None]:  # fmt: skip
        """A change by a client that holds no lock for it (a plain write, or a name
        created or removed in a directory): every other session's lock on the range
        of each key is revoked first (written back and dropped), and none is
        granted again until the change is done, so no client caches what it
        replaces."""
        with self._cond:
            for key in keys:
                self._busy.setdefault(key, collections.Counter())[session] += 1
            try:
                for key in keys:
                    self._clear(key, lambda k=key: self._elsewhere(k, session, True, start, end),
                                RELEASE, revoke)  # fmt: skip
            except BaseException:
                self._unbusy(keys, session)
                raise
        try:
            yield
        finally:
            with self._cond:
                self._unbusy(keys, session)

    def _unbusy(self, keys: Sequence[object], session: int) -> None:
        for key in keys:
            busy = self._busy[key]
            busy[session] -= 1
            if busy[session] <= 0:
                del busy[session]
            if not busy:
                del self._busy[key]
        self._cond.notify_all()

    def _clear(self, key: object, conflicts_now: Callable[[], list[Holder]], keep: int,
               revoke: Revoker) -> None:  # fmt: skip
        """Revoke until ``conflicts_now()`` is empty (called and returns with the lock)."""
        while True:
            conflicts = conflicts_now()
            if not conflicts:
                return
            to_ask = [h for h in conflicts if not h.revoking]
            for h in to_ask:
                h.revoking = True
            if to_ask:
                self._cond.release()
                try:
                    for h in to_ask:
                        self._ask(key, h, keep, revoke)
                finally:
                    self._cond.acquire()
            self._cond.wait(0.05)

    def _ask(self, key: object, h: Holder, keep: int, revoke: Revoker) -> None:
        answered = threading.Event()

        def done() -> None:
            answered.set()
            with self._cond:
                self._give_up(key, h, keep)
                self._cond.notify_all()

        def expire() -> None:
            if answered.wait(self.lease):
                return
            with self._cond:  # silent past its lease: the lock goes, the holder is fenced
                if h in self._held.get(key, ()):
                    self._give_up(key, h, RELEASE)
                    self.fenced.add(h.owner)
                self._cond.notify_all()

        threading.Thread(target=expire, daemon=True, name="pohmelfs-lease").start()
        try:
            revoke(h, keep, done)
        except OSError:  # its connection is gone: so are its locks
            done()

    def _store(self, key: object, holders: list[Holder]) -> None:
        """The one place ``_held`` changes: it keeps ``exclusive_dirs`` counted."""
        if key in self._dir_keys:
            old = self._held.get(key, ())
            self.exclusive_dirs += sum(h.type == EXCLUSIVE for h in holders) - sum(
                h.type == EXCLUSIVE for h in old
            )
        if holders:
            self._held[key] = holders
        else:
            self._held.pop(key, None)
            self._dir_keys.discard(key)

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

    def drop(self, predicate: Callable[[tuple[int, int]], bool]) -> None:
        """Forget every lock whose owner matches (a closed handle or connection)."""
        with self._cond:
            for key in list(self._held):
                self._store(key, [h for h in self._held[key] if not predicate(h.owner)])
            self.fenced = {o for o in self.fenced if not predicate(o)}
            self._cond.notify_all()

    def held(self, key: object) -> list[Holder]:
        with self._cond:
            return list(self._held.get(key, ()))

    def wait_idle(self, timeout: float) -> bool:
        """For tests: wait until no revocation is in progress."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(h.revoking for hs in self._held.values() for h in hs):
                if time.monotonic() > deadline:
                    return False
                self._cond.wait(0.05)
        return True
