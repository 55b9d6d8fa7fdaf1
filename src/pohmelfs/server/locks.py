"""Advisory locks shared by every client: POSIX record locks and flock locks.

Semantics follow Linux: a lock owner's new lock replaces (splitting or
merging) its own overlapping ranges; shared locks coexist, an exclusive one
conflicts with any other owner's lock on overlapping bytes; flock locks and
POSIX locks live in separate spaces and never conflict with each other. A
client's locks go when it unlocks, closes (the client's business) or
disconnects (:meth:`AdvisoryLocks.drop_session`).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol, TypeVar

END = 1 << 63  # "to the end of the file, whatever it becomes"

RDLCK, WRLCK, UNLCK = 0, 1, 2  # as in the protocol (not the host's fcntl values)


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


class AdvisoryLocks:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._locks: dict[object, list[Lock]] = {}

    def conflict(self, key: object, want: Lock) -> Lock | None:
        """The first lock of another owner that ``want`` would conflict with."""
        with self._cond:
            return self._conflict(key, want)

    def _conflict(self, key: object, want: Lock) -> Lock | None:
        for held in self._locks.get(key, ()):
            if (
                held.owner != want.owner
                and held.flock == want.flock
                and held.start < want.end
                and want.start < held.end
                and (held.type == WRLCK or want.type == WRLCK)
            ):
                return held
        return None

    def set(self, key: object, want: Lock, wait: bool,
            cancelled: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
        """Take, change or (type UNLCK) release a lock.

        Raises EAGAIN on a conflict unless ``wait``; a wait ends when the lock
        is granted or ``cancelled()`` turns true (then EINTR).
        """
        with self._cond:
            if want.type != UNLCK:
                while self._conflict(key, want) is not None:
                    if not wait:
                        raise OSError(errno.EAGAIN, "lock held by another client")
                    if cancelled():
                        raise OSError(errno.EINTR, "lock wait cancelled")
                    self._cond.wait(0.5)
            self._replace(key, want)
            self._cond.notify_all()

    def _replace(self, key: object, want: Lock) -> None:
        kept = carve(
            self._locks.get(key, ()),
            lambda held: held.owner == want.owner and held.flock == want.flock,
            want.start,
            want.end,
            lambda held, start, end: held._replace(start=start, end=end),
        )
        if want.type != UNLCK:
            kept.append(want)
        if kept:
            self._locks[key] = kept
        else:
            self._locks.pop(key, None)

    def drop_session(self, session: int) -> None:
        """A client went away: every lock it held goes with it."""
        with self._cond:
            for key in list(self._locks):
                kept = [lk for lk in self._locks[key] if lk.owner[0] != session]
                if kept:
                    self._locks[key] = kept
                else:
                    del self._locks[key]
            self._cond.notify_all()

    def held(self, key: object) -> list[Lock]:
        with self._cond:
            return list(self._locks.get(key, ()))
