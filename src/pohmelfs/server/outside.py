"""Changes made to the export outside pohmelfs, treated as a change by another
client: every cache lock, lease and directory lock on the objects changed is
revoked (the holders drop what they cached and ask again), as a plain write or
a create of a client revokes them (``CacheLocks.changing``).

The storage says what changed (``Storage.watch``: for the local directory,
``localwatch.py``, after the fact, within about ``localwatch.BATCH``); this
revokes on a few threads of its own, one revocation per object at a time, so a
holder slow to answer delays only the others of its object. What the storage
could not see (a lost event) revokes everything held, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .cachelocks import CacheLocks, Revoker
from .storage import FileKey

log = logging.getLogger("pohmelfs.server")

OUTSIDE = 0  # the "session" of changes made outside (real sessions count from 1)
REVOKERS = 4  # threads revoking at once


class OutsideChanges:
    def __init__(self, cache: CacheLocks, revoke: Revoker,
                 moved: Callable[[set[FileKey]], None] = lambda _: None) -> None:  # fmt: skip
        """``moved``: told of every object changed outside (its version moves)."""
        self._moved = moved
        self._cache = cache
        self._revoke = revoke
        self._lock = threading.Lock()
        self._pending: set[FileKey] = set()  # queued or being revoked
        self._again: set[FileKey] = set()  # changed again while being revoked
        self._pool = ThreadPoolExecutor(max_workers=REVOKERS,
                                        thread_name_prefix="pohmelfs-outside")  # fmt: skip
        self.seen = 0  # objects changed outside that somebody held (for tests, metrics)

    def changed(self, keys: set[FileKey]) -> None:
        """Other processes changed these objects."""
        self._moved(keys)
        for key in keys:
            if not self._cache.held(key):
                continue  # nobody caches it: nothing to tell
            with self._lock:
                if key in self._pending:
                    self._again.add(key)
                    continue
                self._pending.add(key)
                self.seen += 1
            try:
                self._pool.submit(self._revoke_all_of, key)
            except RuntimeError:  # the server stops: every lock goes with it
                return

    def lost(self) -> None:
        """Changes went unseen: whatever anybody caches may be stale."""
        self.changed(set(self._cache.held_keys()))

    def _revoke_all_of(self, key: FileKey) -> None:
        try:
            while True:
                with self._cache.changing([key], OUTSIDE, self._revoke):
                    pass
                with self._lock:
                    if key not in self._again:
                        self._pending.discard(key)
                        return
                    self._again.discard(key)  # granted again before the latest change
        except Exception:
            with self._lock:
                self._pending.discard(key)
                self._again.discard(key)
            log.exception("revoking the caches of %s after a change outside failed", key)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
