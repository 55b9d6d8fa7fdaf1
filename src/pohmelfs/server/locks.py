"""Advisory locks shared by every client: POSIX record locks and flock locks.

Semantics follow Linux: a lock owner's new lock replaces (splitting or
merging) its own overlapping ranges; shared locks coexist, an exclusive one
conflicts with any other owner's lock on overlapping bytes; flock locks and
POSIX locks live in separate spaces and never conflict with each other. A
client's locks go when it unlocks, closes (the client's business) or
disconnects (:meth:`AdvisoryLocks.drop_session`).
"""

from __future__ import annotations

import collections
import errno
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol, TypeVar

from ..protocol import LockType

END = 1 << 63  # "to the end of the file, whatever it becomes"
MAX_LOCKS = 4096  # held by one session (each is scanned by every request on its file)

RDLCK, WRLCK, UNLCK = LockType  # the protocol's (not the host's fcntl values)


class _Range(Protocol):
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


R = TypeVar("R", bound=_Range)


def carve(held: Iterable[R], mine: Callable[[R], bool], start: int, end: int,
          clip: Callable[[R, int, int], R]) -> list[R]:  # fmt: skip
    """``held`` with ``[start, end)`` cut out of the ranges ``mine`` picks (the
    parts outside it stay, made by ``clip(range, start, end)``); shared by the
    advisory and the cache lock tables."""
    kept: list[R] = []
    for h in held:
        if not mine(h) or h.end <= start or end <= h.start:
            kept.append(h)
            continue
        if h.start < start:
            kept.append(clip(h, h.start, start))
        if end < h.end:
            kept.append(clip(h, end, h.end))
    return kept


class Lock(NamedTuple):
    owner: tuple[int, int]  # (session id, the client's owner id)
    type: int
    start: int
    end: int  # exclusive
    pid: int
    flock: bool


class _Waiter(NamedTuple):
    want: Lock
    granted: Callable[[OSError | None], None]


class AdvisoryLocks:
    """The lock table, and the requests waiting for a lock: a waiting request is
    an entry here, not a thread, and is granted (in the order they came, as far
    as conflicts allow) by whichever change lets it in."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._locks: dict[object, list[Lock]] = {}
        self._waiting: dict[object, list[_Waiter]] = {}
        self._held = collections.Counter[int]()  # locks held, by session

    def conflict(self, key: object, want: Lock) -> Lock | None:
        """The first lock of another owner that ``want`` would conflict with."""
        with self._cond:
            return self._conflict(key, want)

    def _conflict(self, key: object, want: Lock) -> Lock | None:
        for held in self._locks.get(key, ()):
            if _overlap(held, want):
                return held
        return None

    def set(self, key: object, want: Lock) -> None:
        """Take, change or (type UNLCK) release a lock; EAGAIN on a conflict."""
        with self._cond:
            if want.type != UNLCK and self._conflict(key, want) is not None:
                raise OSError(errno.EAGAIN, "lock held by another client")
            self._replace(key, want)
            woken = self._wake(key)
        _run(woken)

    def wait_for(self, key: object, want: Lock,
                 granted: Callable[[OSError | None], None]) -> bool:  # fmt: skip
        """Take ``want`` now (True), or else (False) wait for it: ``granted(None)``
        runs once it is taken, on the thread whose change let it in, or
        ``granted(OSError)`` if the wait ends without it (``drop_session``). It must
        not block. A new request waits behind an earlier waiting one it conflicts
        with (so readers do not starve a waiting writer), unless its owner holds a
        lock on the file already (an upgrade must not wait for whoever waits for it).
        """
        with self._cond:
            waiters = self._waiting.setdefault(key, [])
            if self._conflict(key, want) is None and not self._behind(key, want, waiters):
                self._replace(key, want)
                taken = True
            else:
                waiters.append(_Waiter(want, granted))
                taken = False
            if not waiters:
                del self._waiting[key]
        return taken

    def _behind(self, key: object, want: Lock, earlier: Iterable[_Waiter]) -> bool:
        if any(lk.owner == want.owner for lk in self._locks.get(key, ())):
            return False
        return any(_overlap(w.want, want) for w in earlier)

    def _wake(self, key: object) -> list[tuple[Callable[[OSError | None], None], OSError | None]]:
        waiters = self._waiting.get(key)
        if not waiters:
            return []
        woken: list[tuple[Callable[[OSError | None], None], OSError | None]] = []
        still: list[_Waiter] = []
        for w in waiters:
            if self._conflict(key, w.want) is None and not self._behind(key, w.want, still):
                try:
                    self._replace(key, w.want)
                except OSError as e:  # its session holds too many: the wait ends so
                    woken.append((w.granted, e))
                    continue
                woken.append((w.granted, None))
            else:
                still.append(w)
        if still:
            self._waiting[key] = still
        else:
            del self._waiting[key]
        return woken

    def _replace(self, key: object, want: Lock) -> None:
        sid = want.owner[0]
        before = sum(lk.owner[0] == sid for lk in self._locks.get(key, ()))
        kept = carve(
            self._locks.get(key, ()),
            lambda held: held.owner == want.owner and held.flock == want.flock,
            want.start,
            want.end,
            lambda held, start, end: held._replace(start=start, end=end),
        )
        if want.type != UNLCK:
            kept.append(want)
        grown = sum(lk.owner[0] == sid for lk in kept) - before
        if grown > 0 and self._held[sid] + grown > MAX_LOCKS:  # (a split, or a new range)
            raise OSError(errno.ENOLCK, f"more than {MAX_LOCKS} locks held by this connection")
        if kept:
            self._locks[key] = kept
        else:
            self._locks.pop(key, None)
        self._held[sid] += grown

    def drop_session(self, session: int) -> None:
        """A client went away: every lock it held goes with it, and its waits end."""
        ended = OSError(errno.EINTR, "lock wait cancelled: the connection ended")
        woken: list[tuple[Callable[[OSError | None], None], OSError | None]] = []
        with self._cond:
            for key in list(self._waiting):
                for w in [w for w in self._waiting[key] if w.want.owner[0] == session]:
                    self._waiting[key].remove(w)
                    woken.append((w.granted, ended))
                if not self._waiting[key]:
                    del self._waiting[key]
            self._held.pop(session, None)
            for key in list(self._locks):
                kept = [lk for lk in self._locks[key] if lk.owner[0] != session]
                if kept:
                    self._locks[key] = kept
                else:
                    del self._locks[key]
                woken += self._wake(key)
        _run(woken)

    def waiting(self, session: int) -> int:
        with self._cond:
            return sum(w.want.owner[0] == session for ws in self._waiting.values() for w in ws)

    def held(self, key: object) -> list[Lock]:
        with self._cond:
            return list(self._locks.get(key, ()))


def _run(woken: Iterable[tuple[Callable[[OSError | None], None], OSError | None]]) -> None:
    for granted, error in woken:
        granted(error)


def _overlap(a: Lock, b: Lock) -> bool:
    """Two locks of different owners that cannot both be held."""
    return (
        a.owner != b.owner
        and a.flock == b.flock
        and a.start < b.end
        and b.start < a.end
        and (a.type == WRLCK or b.type == WRLCK)
    )
