"""Writes kept back in the client (writeback) while it holds an exclusive cache lock.

A mount's small writes to a file it holds exclusively are not sent one by one:
they are copied into the file's :class:`HeldWrites` and answered, and sent later
as few large WRITE requests (write-behind) when

- the file has ``PUSH_BYTES`` held, or ``MAX_EXTENTS`` separate ranges;
- the client has ``limit`` bytes held in all (bounded dirty memory);
- they have been held ``timeout`` seconds (the dirty time-out);
- the client sends any other request, or a write it does not hold (so every
  request the server answers after it, on this client's one connection, sees them:
  reads, stats, truncates, writes through other handles, cache locks and lock
  releases);
- the file is flushed, fsynced or closed, or its lock is revoked.

Held writes were made under a lock: if the connection is lost they are dropped
and the loss is reported by the file's next flush, fsync or close, never sent
later without the lock. Lock order: a file's ``_held_lock``, then the registry's.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from typing import Any, Protocol


class Pushable(Protocol):
    def push(self) -> None:
        """Send the file's held writes."""


PUSH_BYTES = 1 << 20  # a file's held bytes sent as soon as they reach this
MAX_EXTENTS = 64  # separate ranges held per file before they are sent
HOLD_BELOW = 128 << 10  # larger writes are sent at once (a copy would cost more)


class HeldWrites:
    """One file's held data: non-overlapping extents, merged when they touch; a later
    write wins where it overlaps an earlier one. Not thread-safe (the file locks)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._data: list[bytearray] = []
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, offset: int, data: Any) -> int:
        """Hold a write; returns how many held bytes it added (0 if all overwrote)."""
        mv = memoryview(data).cast("B")
        end = offset + len(mv)
        starts, chunks = self._starts, self._data
        first = bisect_right(starts, offset) - 1
        if first < 0 or starts[first] + len(chunks[first]) < offset:
            first += 1  # the extent before ends short of this write
        last = first
        while last < len(starts) and starts[last] <= end:
            last += 1  # extents first..last-1 overlap or touch [offset, end)
        before = self.bytes
        if first == last:
            starts.insert(first, offset)
            chunks.insert(first, bytearray(mv))
            self.bytes += len(mv)
            return len(mv)
        start = min(starts[first], offset)
        stop = max(starts[last - 1] + len(chunks[last - 1]), end)
        if last - first == 1 and start == starts[first]:
            buf = chunks[first]  # grows in place: the sequential case
            self.bytes -= len(buf)
        else:
            buf = bytearray(stop - start)
            for s, chunk in zip(starts[first:last], chunks[first:last], strict=True):
                buf[s - start : s - start + len(chunk)] = chunk
                self.bytes -= len(chunk)
            del starts[first + 1 : last], chunks[first + 1 : last]
            starts[first], chunks[first] = start, buf
        buf[offset - start : end - start] = mv
        self.bytes += len(buf)
        return self.bytes - before

    def take(self) -> list[tuple[int, bytearray]]:
        """Every held extent, in file order; nothing is held afterwards."""
        out = list(zip(self._starts, self._data, strict=True))
        self._starts, self._data, self.bytes = [], [], 0
        return out


class HeldFiles:
    """A client's files with held writes: the bound on their bytes, the time-out,
    and pushing them all before any other request."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.bytes = 0
        self._lock = threading.Lock()
        self._since: dict[Pushable, float] = {}  # file -> when it began holding
        self._pushing = threading.local()
        self._closed = threading.Event()
        self._timer: threading.Thread | None = None

    def __bool__(self) -> bool:
        return bool(self._since)

    def added(self, f: Pushable, n: int) -> None:
        """``f`` holds ``n`` bytes more."""
        with self._lock:
            self._since.setdefault(f, time.monotonic())
            self.bytes += n
            if self._timer is None and not self._closed.is_set():
                self._timer = threading.Thread(target=self._time_out, daemon=True,
                                               name="pohmelfs-held")  # fmt: skip
                self._timer.start()

    def taken(self, f: Pushable, n: int, more: bool) -> None:
        """``f`` sent (or dropped) ``n`` held bytes; ``more``: it held others since."""
        with self._lock:
            if more:
                self._since[f] = time.monotonic()
            else:
                self._since.pop(f, None)
            self.bytes -= n

    def files(self) -> list[Pushable]:
        with self._lock:
            return list(self._since)

    def push_all(self) -> None:
        """Send every file's held writes (before another request goes out)."""
        if not self._since or getattr(self._pushing, "on", False):
            return
        self._pushing.on = True
        try:
            with self._lock:
                files = sorted(self._since, key=self._since.__getitem__)
            for f in files:
                f.push()
        finally:
            self._pushing.on = False

    def close(self) -> None:
        self._closed.set()

    def _time_out(self) -> None:
        period = max(self.timeout / 4, 0.05)
        while not self._closed.wait(period):
            now = time.monotonic()
            with self._lock:
                old = [f for f, since in self._since.items() if now - since >= self.timeout]
            for f in old:
                f.push()
