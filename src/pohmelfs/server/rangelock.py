"""Byte-range locks held by the server for the length of one request.

Every READ takes a shared lock and every WRITE (and truncate, fallocate) an
exclusive one on the bytes it touches, across all connections, so no reader
ever sees the middle of another client's write request: a multi-page write is
atomic for every reader (the seed's "data consistency on the server").
A request holds one range at a time, so there is no lock ordering to get wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

END = 1 << 64  # "to the end of the file, whatever its size becomes"


class RangeLocks:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        # file key -> list of [start, end, exclusive] ranges held now
        self._held: dict[object, list[tuple[int, int, bool]]] = {}

    @contextmanager
    def hold(self, key: object, start: int, end: int, exclusive: bool) -> Iterator[None]:
        """Hold [start, end) of the file ``key``; shared ranges may overlap each other."""
        if end <= start:
            yield
            return
        entry = (start, end, exclusive)
        with self._cond:
            while self._conflicts(key, start, end, exclusive):
                self._cond.wait()
            self._held.setdefault(key, []).append(entry)
        try:
            yield
        finally:
            with self._cond:
                ranges = self._held[key]
                ranges.remove(entry)
                if not ranges:
                    del self._held[key]
                self._cond.notify_all()

    def _conflicts(self, key: object, start: int, end: int, exclusive: bool) -> bool:
        for s, e, x in self._held.get(key, ()):
            if s < end and start < e and (x or exclusive):
                return True
        return False

    def held(self, key: object) -> list[tuple[int, int, bool]]:
        """The ranges held on ``key`` now (for tests and statistics)."""
        with self._cond:
            return list(self._held.get(key, ()))
