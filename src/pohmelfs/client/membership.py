"""Servers joining a client's set while it works: one added (``Client.add_server``)
or a gone one that answers again (tried every ``retry_every`` seconds) joins the
write set as resyncing, is resynced from the lock server on a thread of its own
(``resync.py``), and becomes live once a pass found it the same as the lock
server, it missed no change since that pass began, and every file open here for
writing is open on it too (until then it stays resyncing, and passes go on).

A resyncing server is never the lock server and never read from; what it cannot
apply meanwhile (a name it does not have yet, a file opened before it joined) is
counted, and copied by the next pass.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from ..protocol import Cred
from .behind import clear_marks, marked_behind
from .connector import Connector
from .replicated import ReplicatedConnection
from .resync import Resync, Stopped
from .serverset import GONE, ServerSpec

log = logging.getLogger("pohmelfs.client")

BACKOFF_MAX = 300.0  # seconds between tries of a server that keeps failing
WAIT_FOR_FILES = 1.0  # seconds between passes while files open before it joined stay open
LEFT_OUT = 5.0  # seconds, at least, before a resync another client made useless again


class Membership:
    """``group()``: the connection in use (made if need be); ``writing(group)``: its
    handles of files open for writing; ``make(address, unversioned)``: a
    single-server client with this client's key and time-outs, for a resync."""

    def __init__(self, connector: Connector, group: Callable[[], ReplicatedConnection],
                 writing: Callable[[ReplicatedConnection], set[int]],
                 make: Callable[[str, bool], Any], retry_every: float,
                 cred: Cred) -> None:  # fmt: skip
        if retry_every < 0:
            raise ValueError("retry_every must be 0 (never) or more seconds")
        self._connector, self._group, self._writing, self._make = connector, group, writing, make
        self.retry_every = retry_every
        self._cred = cred
        self._due: dict[str, tuple[float, float]] = {}  # address -> (next try, backoff)
        self._due_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def begin(self) -> None:
        """Start trying the gone servers again (if there can be any: several)."""
        if self.retry_every and len(self._connector.servers.members()) > 1:
            self._start()

    def add(self, spec: ServerSpec, keep: bool = False) -> None:
        """``spec`` joins the set now (a writable one resynced in the background).
        ``keep``: if it cannot be reached it stays in the set as gone (tried again)."""
        try:
            self._connector.join(spec, self._group(), new=True)
        except OSError:
            if keep:
                self._connector.servers.add(spec, GONE)
                self._start()
            raise
        with self._due_lock:
            self._due.pop(spec.address, None)
        self._start()
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="pohmelfs-membership")  # fmt: skip
                self._thread.start()

    def _run(self) -> None:
        pause = self.retry_every or 3600.0  # (a server gone at connect: not at once)
        while not self._stop.is_set():
            self._wake.wait(pause)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                pause = self._round()
            except Exception:  # (it must go on: the set would never heal)
                log.exception("taking servers back failed")
                pause = self.retry_every or 5.0

    def _round(self) -> float:
        """Rejoin what answers, resync what joined; the seconds until the next round."""
        try:
            group = self._group()
        except (OSError, ValueError):
            return self.retry_every or 5.0  # (no server, or closing)
        now = time.monotonic()
        if self.retry_every:
            for m in self._connector.servers.members():
                if m.state == GONE and self._is_due(m.spec.address, now):
                    try:
                        self._connector.join(m.spec, group, new=False)
                    except (OSError, ValueError):
                        self._failed(m.spec.address, now)
        resyncing = group.resyncing
        for address in resyncing:
            if self._stop.is_set():
                break
            if self._is_due(address, time.monotonic()):
                self._resync(group, address)
        with self._due_lock:
            pending = [at for at, _ in self._due.values()]
        nearest = min(pending, default=now + (self.retry_every or 3600.0)) - time.monotonic()
        return max(0.05, min(nearest, self.retry_every or 3600.0))

    def _resync(self, group: ReplicatedConnection, address: str) -> None:
        # Read as each pass begins: what the last (clean) pass vouches for.
        skipped, since = group.skipped(address), group.open_sequence()

        def begins(_n: int) -> None:
            nonlocal skipped, since
            skipped, since = group.skipped(address), group.open_sequence()

        try:
            # The marks other servers hold of it (``behind.py``), before the resync: a
            # change another client makes without it moves them, and a pass that
            # ends clean clears only marks that did not move.
            others = {a: c for a, c in group.connections().items() if a != address}
            marks = {a: marked_behind(c).get(address, 0) for a, c in others.items()}
            with ExitStack() as stack:
                source = stack.enter_context(self._make(group.address, False))
                target = stack.enter_context(self._make(address, True))
                done = Resync(source, target, stop=self._stop.is_set, on_pass=begins).run()
            refused = clear_marks(others, address, marks, self._cred) if done.clean else 0
            cleared = done.clean and not refused
        except Stopped:
            return
        except (OSError, ValueError) as e:
            log.warning("resync of %s from %s failed: %s", address, group.address, e)
            self._failed(address, time.monotonic())
            return
        if cleared and self._connector.promote(address, group, skipped, self._writing(group),
                                               since):  # fmt: skip
            with self._due_lock:
                self._due.pop(address, None)
            return
        if refused == errno.EBUSY:  # (another client leaves it out: not soon, then)
            log.info("server %s is resynced, but another client still leaves it out", address)
            self._failed(address, time.monotonic(), floor=LEFT_OUT)
            return
        with self._due_lock:
            self._due[address] = (time.monotonic() + WAIT_FOR_FILES, 0.0)

    def _is_due(self, address: str, now: float) -> bool:
        with self._due_lock:
            at, _ = self._due.get(address, (0.0, 0.0))
        return now >= at

    def _failed(self, address: str, now: float, floor: float = 0.0) -> None:
        with self._due_lock:
            _, backoff = self._due.get(address, (0.0, 0.0))
            backoff = min(BACKOFF_MAX, max(self.retry_every or 5.0, floor, 2 * backoff))
            self._due[address] = (now + backoff, backoff)
