"""What every session of one server shares: the export and the tables that
order one client's requests against another's."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .cachelocks import CacheLocks
from .handles import OpenWriters
from .keepalive import Keepalive
from .locks import AdvisoryLocks
from .notifier import Notifiers
from .rangelock import RangeLocks
from .replycache import ReplyCache
from .sizes import SizeWatchers
from .stamps import Stamps
from .storage import Storage
from .versions import Versions


class Budget:
    """A count that may not pass ``limit`` (the requests waiting on the whole server:
    most wait on a thread of their own)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


@dataclass(frozen=True, eq=False)
class Shared:
    export: Storage
    ranges: RangeLocks  # no reader sees the middle of a write
    locks: AdvisoryLocks  # fcntl and flock locks
    cache: CacheLocks  # the clients' cached locks, and their revocation
    sizes: SizeWatchers  # RESIZE to the other clients that have a file open
    notifiers: Notifiers  # each admitted session's notifications, by session id
    stamps: Stamps  # change attributes of cached objects: changes made outside, found on use
    writers: OpenWriters  # which files are open for writing, by whom
    keepalive: Keepalive  # PENDING for requests that wait for other clients
    waiting: Budget  # requests waiting for other clients, on the whole server
    pool: ThreadPoolExecutor  # slow requests (fsync, listings, tree removal)
    replies: ReplyCache  # client sessions' recent replies, for resent changes
    versions: Versions  # of the objects changed: which server missed a change
    allow_setuid: bool
    metrics: Any = None  # ``metrics.Metrics`` when exported (serve --metrics), else None
