"""The change attribute of each object a client caches, as pohmelfs last left it.

A change the watcher did not see (its queue overflowed and the revocation is still
under way, a filesystem without notifications, a server that is not root, a write
through a shared mapping) still shows on the object itself: its ctime (nanoseconds)
and size move. Each time the server looks at a cached object for a client's request
(a grant, an open, a lookup, a lease, a read), it compares what it sees with what it
recorded when the object was granted or last changed through pohmelfs; a newer
stamp is a change made outside, and every holder's cache of the object is revoked
(``OutsideChanges.changed``) as for one the watcher saw.

Told apart from pohmelfs' own changes: those are recorded (``ours``) while the
object is still marked as being changed (``CacheLocks.changing``), and an object
being changed is not compared; a look taken before a change and compared after it
sees an older ctime, which is not a change. Two stamps with the same ctime and
different sizes cannot be ordered and count as a change (a revocation too many
costs a round trip; one too few, a stale cache).

The inode's generation is not part of the stamp: the key already names the inode,
and an inode number used again by a new file comes with that file's newer ctime.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ..protocol import Attr
from .cachelocks import CacheLocks
from .storage import FileKey, OpenFile, Watched

Stamp = tuple[int, int]  # (ctime in ns, size)


def stamp_of(st: os.stat_result | Attr) -> Stamp:
    if isinstance(st, Attr):
        return st.ctime_ns, st.size
    return st.st_ctime_ns, st.st_size


def newer(seen: Stamp, known: Stamp) -> bool:
    """Does ``seen`` show a change since ``known``?"""
    return seen[0] > known[0] or (seen[0] == known[0] and seen[1] != known[1])


class Stamps:
    def __init__(self, cache: CacheLocks, stale: Callable[[set[FileKey]], None]) -> None:
        self._cache = cache
        self._stale = stale
        cache.when_unheld(self.forget)
        self._known: dict[FileKey, Stamp] = {}
        self._lock = threading.Lock()
        self._watched: Watched | None = None
        self.found = 0  # changes found on use (for tests and metrics)

    def watched_by(self, watched: Watched) -> None:
        """Objects recorded are followed by ``watched`` (where the storage watches
        objects one by one), until their last holder gives them up."""
        self._watched = watched

    def seen(self, key: FileKey, st: os.stat_result | Attr,
             where: OpenFile | bytes | None = None) -> None:  # fmt: skip
        """The server looked at ``key`` for a request (``st``: what it saw; ``where``:
        the object, open or by path, for the watcher to follow), or the watcher did."""
        cache = self._cache
        if not cache.has_holders(key) or cache.changing_now(key):
            return
        stamp = stamp_of(st)
        found = False
        with self._lock:
            known = self._known.get(key)
            if known is None:
                self._record(key, stamp)
            elif newer(stamp, known):
                self._known[key] = stamp
                self.found += 1
                found = True
        if where is not None and self._watched is not None:
            self._watched.follow(key, where)
            if not cache.has_holders(key):  # given up meanwhile: forget missed it
                self._watched.unfollow(key)
        if found:
            self._stale({key})

    def ours(self, key: FileKey, st: os.stat_result | None) -> None:
        """pohmelfs itself changed ``key`` (still marked as changing); ``st``: its
        stat after, or None if not at hand (the next look records it)."""
        with self._lock:
            if st is None:
                self._known.pop(key, None)
                return
            known = self._known.get(key)
            stamp = stamp_of(st)
            if known is None or stamp[0] >= known[0]:
                self._record(key, stamp)

    def forget(self, key: object) -> None:
        """Nobody holds ``key`` any more (``CacheLocks.when_unheld``): the next
        holder's grant records it afresh."""
        with self._lock:
            self._known.pop(key, None)  # type: ignore[call-overload]
        if self._watched is not None:
            self._watched.unfollow(key)  # type: ignore[arg-type]

    def known(self, key: FileKey) -> Stamp | None:
        with self._lock:
            return self._known.get(key)

    def _record(self, key: FileKey, stamp: Stamp) -> None:
        """(With the lock.) Only while somebody holds it: a key that loses its last
        holder leaves the table (``forget``), also if that happened just before."""
        if self._cache.has_holders(key):
            self._known[key] = stamp
        else:
            self._known.pop(key, None)
