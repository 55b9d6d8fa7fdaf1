"""What a client saw of each server: requests, answers, bytes and latency.

One ``ServerStats`` per server of the set, carried on from one connection to the
next. Requests are counted under the sending connection's lock, answers by its
receive thread; an old connection still draining and its successor may both count,
unlocked against each other: figures to read, not to balance accounts with.
"""

from __future__ import annotations

from typing import Any


class ServerStats:
    __slots__ = ("requests", "answered", "failed", "bytes_out", "bytes_in", "latency_total",
                 "latency_max", "connections")  # fmt: skip

    def __init__(self) -> None:
        self.requests = 0  # sent
        self.answered = 0  # replies received (errors included)
        self.failed = 0  # of them, errors
        self.bytes_out = 0  # payload bytes sent
        self.bytes_in = 0  # payload bytes received
        self.latency_total = 0.0  # seconds from send to reply, summed over the answered
        self.latency_max = 0.0
        self.connections = 0  # made to it

    def answer(self, nbytes: int, latency: float, failed: bool) -> None:
        self.answered += 1
        self.failed += failed
        self.bytes_in += nbytes
        self.latency_total += latency
        if latency > self.latency_max:
            self.latency_max = latency

    def snapshot(self) -> dict[str, Any]:
        answered = self.answered
        return {
            "requests": self.requests,
            "answered": answered,
            "failed": self.failed,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "latency_mean_ms": round(1000 * self.latency_total / answered, 3) if answered else 0.0,
            "latency_max_ms": round(1000 * self.latency_max, 3),
            "connections": self.connections,
        }
