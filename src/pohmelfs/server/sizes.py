"""New sizes told to other clients that have the file open (RESIZE notifications).

A kernel that maps a file checks a page fault against the size it last knew,
without asking anyone: when another client grows the file, a fault between the
old and the new end would get SIGBUS. So when a change of a file's size is
applied, every other session that asked for it at HELLO (mounts do) and has the
file open hears the new attributes and the file's last byte, and the change is
answered only once they have taken it in (or a lease has passed: a slow client
costs the writer at most that, and one that let a lease run out is not waited
for at all).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .. import protocol as p
from ..protocol import Command
from .notifier import Notifier

EMPTY = 256  # RESIZE's ``last`` for an empty file


class SizeWatchers:
    """``lapsed``, ``lapse``, ``unlapse``: the sessions nobody waits for (CacheLocks),
    which a session that lets a RESIZE run out joins until it answers."""

    def __init__(self, lease: float, notifier_of: Callable[[int], Notifier | None],
                 lapsed: Callable[[int], bool], lapse: Callable[[int], None],
                 unlapse: Callable[[int], None]) -> None:  # fmt: skip
        self.lease = lease
        self._notifier_of = notifier_of
        self._lapsed = lapsed
        self._lapse = lapse
        self._unlapse = unlapse
        self._lock = threading.Lock()
        self._open: dict[object, dict[int, set[int]]] = {}  # key -> session -> its handles

    def opened(self, key: object, sid: int, oid: int) -> None:
        with self._lock:
            self._open.setdefault(key, {}).setdefault(sid, set()).add(oid)

    def closed(self, key: object, sid: int, oid: int) -> None:
        with self._lock:
            sessions = self._open.get(key)
            if sessions is None or sid not in sessions:
                return
            sessions[sid].discard(oid)
            if not sessions[sid]:
                del sessions[sid]
            if not sessions:
                del self._open[key]

    def count_elsewhere(self, key: object, sid: int) -> int:
        """How many other watching sessions have the file open."""
        if key not in self._open:  # the common case, without the lock
            return 0
        with self._lock:
            return sum(s != sid for s in self._open.get(key, ()))

    def elsewhere(self, key: object, sid: int) -> bool:
        """Does another watching session have the file open?"""
        return self.count_elsewhere(key, sid) > 0

    def resized(self, key: object, sid: int, attr: p.Attr, last: int) -> None:
        """The file's size changed (to ``attr.size``; ``last``: its last byte, EMPTY if
        unknown): tell the other sessions that have it open, and wait for them."""
        self.wait_for(self.announce(key, sid, attr, last))

    def announce(self, key: object, sid: int, attr: p.Attr, last: int) -> list[_Told]:
        """``resized`` without the wait: what to wait for (``wait_for``)."""
        with self._lock:
            targets = [(s, next(iter(oids))) for s, oids in self._open.get(key, {}).items()
                       if s != sid and oids]  # fmt: skip
        told = []
        for other, oid in targets:
            notifier = self._notifier_of(other)
            if notifier is None or notifier.closed or self._lapsed(other):
                continue
            notice = _Told(other, self._unlapse)
            try:
                notifier.notify(Command.RESIZE, oid, 0, 0, {"attr": attr, "last": last},
                                notice.answered)  # fmt: skip
            except OSError:
                continue  # its connection is gone (or has too much unanswered)
            told.append(notice)
        return told

    def wait_for(self, told: list[_Told]) -> None:
        """Until every session told has answered, or a lease has run out."""
        deadline = time.monotonic() + self.lease
        for notice in told:
            if not notice.done.wait(max(0.0, deadline - time.monotonic())):
                notice.ran_out(self._lapse)


class _Told:
    """One RESIZE sent: answered in time, or run out (its session is then lapsed
    until the late answer comes)."""

    def __init__(self, session: int, unlapse: Callable[[int], None]) -> None:
        self.session = session
        self.done = threading.Event()
        self._unlapse = unlapse
        self._lock = threading.Lock()
        self._late = False

    def answered(self) -> None:
        with self._lock:
            self.done.set()
            late, self._late = self._late, False
        if late:
            self._unlapse(self.session)

    def ran_out(self, lapse: Callable[[int], None]) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self._late = True
        lapse(self.session)
