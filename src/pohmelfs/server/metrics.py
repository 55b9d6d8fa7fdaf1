"""Prometheus metrics of a server (``serve --metrics HOST:PORT``, prometheus-client):
requests by command, errors by errno, payload bytes each way, request latency by
command, sessions, cache locks held, revocations and how long they waited.

Kept off the hot path when off (``Shared.metrics`` is None); when on, a request costs
a dictionary look-up and two counter increments on receipt, and a histogram
observation on its last reply (``Dispatch``). Each server has a registry of its own,
so several in one process do not mix.
"""

from __future__ import annotations

import errno as errno_names
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import protocol as p
from ..protocol import Command
from ..wire import Buffer, FrameWriter

_LAST = p.FLAG_MORE | p.FLAG_PENDING | p.FLAG_NOTIFY  # a frame that is not a last reply

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_TIMED = 4096  # requests of a session timed at once


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self._requests = Counter("pohmelfs_requests", "Requests received, by command",
                                 ["command"], registry=r)  # fmt: skip
        self._errors = Counter("pohmelfs_errors", "Requests answered with an error, by errno",
                               ["errno"], registry=r)  # fmt: skip
        self._bytes_in = Counter("pohmelfs_received_bytes", "Request payload bytes received",
                                 registry=r)  # fmt: skip
        self._bytes_out = Counter("pohmelfs_sent_bytes", "Reply payload bytes sent",
                                  registry=r)  # fmt: skip
        self._latency = Histogram("pohmelfs_request_seconds",
                                  "From a request's receipt to its (last) reply, by command",
                                  ["command"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.sessions = Gauge("pohmelfs_sessions", "Client connections being served",
                              registry=r)  # fmt: skip
        self._revocations = Counter("pohmelfs_revocations", "Cache locks revoked", registry=r)
        self._revocation_wait = Histogram("pohmelfs_revocation_wait_seconds",
                                          "From a revocation's sending to its end (answered, "
                                          "or the lease run out)", buckets=WAIT_BUCKETS,
                                          registry=r)  # fmt: skip
        self._held = Gauge("pohmelfs_cache_locks_held", "Cache locks (and leases) held by "
                           "clients", registry=r)  # fmt: skip
        self._by_command: dict[Command, tuple[Any, Any]] = {}
        self._by_errno: dict[int, Any] = {}
        self._http: Any = None

    def holders(self, count: Callable[[], float]) -> None:
        """How many cache locks are held, asked at each scrape."""
        self._held.set_function(count)

    def received(self, cmd: Command, payload: int) -> float:
        """A request arrived: its start, for ``answered``."""
        children = self._by_command.get(cmd)
        if children is None:
            children = self._by_command[cmd] = (self._requests.labels(cmd.name),
                                                self._latency.labels(cmd.name))  # fmt: skip
        children[0].inc()
        if payload:
            self._bytes_in.inc(payload)
        return time.monotonic()

    def answered(self, cmd: Command, status: int, payload: int, started: float) -> None:
        children = self._by_command.get(cmd)
        if children is not None:
            children[1].observe(time.monotonic() - started)
        if payload:
            self._bytes_out.inc(payload)
        if status:
            child = self._by_errno.get(status)
            if child is None:
                child = self._by_errno[status] = self._errors.labels(
                    errno_names.errorcode.get(status, str(status)))  # fmt: skip
            child.inc()

    def revoked(self, waited: float) -> None:
        self._revocations.inc()
        self._revocation_wait.observe(waited)

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve /metrics over HTTP on ``host:port`` (0: any free port); its address."""
        from prometheus_client import start_http_server

        self._http, _ = start_http_server(port, host, registry=self.registry)
        address = self._http.server_address
        return str(address[0]), int(address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class MeteredWriter(FrameWriter):
    """A session's writer that times each request from its receipt (``received``,
    told by ``Dispatch``) to its last reply, whichever path sends it (a READ's own
    frame, a reply sent from a waiting thread, a listing's stream)."""

    def __init__(self, sock: socket.socket, metrics: Metrics) -> None:
        super().__init__(sock)
        self.metrics = metrics
        self._started: dict[int, tuple[Command, float]] = {}  # xid -> request, receipt

    def received(self, cmd: Command, xid: int, payload: int) -> None:
        started = self._started
        started[xid] = (cmd, self.metrics.received(cmd, payload))
        if len(started) > MAX_TIMED:  # (requests never answered: the oldest go)
            try:
                started.pop(next(iter(started)), None)
            except (RuntimeError, StopIteration):  # (a reply took one meanwhile)
                pass

    def _sent(self, header: Buffer) -> None:
        _, _, flags, _, status, plen, xid, *_ = p.HEADER.unpack_from(header)
        if flags & p.FLAG_REPLY and not flags & _LAST:
            started = self._started.pop(xid, None)
            if started is not None:
                self.metrics.answered(started[0], status, plen, started[1])

    def send_locked(self, parts: Sequence[Buffer]) -> None:
        super().send_locked(parts)
        self._sent(parts[0])

    def send_frame(self, frame: memoryview, length: int) -> None:
        super().send_frame(frame, length)
        self._sent(frame)

    def try_send(self, parts: Sequence[Buffer]) -> memoryview | bool:
        sent = super().try_send(parts)
        if sent is not False:
            self._sent(parts[0])
        return sent
