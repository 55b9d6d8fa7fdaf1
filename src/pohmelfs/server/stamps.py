"""The change attribute of each object a client caches, as pohmelfs last left it.

A change the watcher did not see (its queue overflowed and the revocation is still
under way, a filesystem without notifications, a write through a shared mapping)
still shows on the object itself: its ctime (nanoseconds) and size move. Each time
the server looks at a cached object for a client's request (a grant, an open, a
lookup, a lease, a read), and before each change it makes to one, it compares what
it sees with what it recorded when the object was granted or last changed through
pohmelfs; a newer stamp is a change made outside, and every holder's cache of the
object is revoked (``OutsideChanges.changed``) as for one the watcher saw. Where
the storage watches held objects one by one (inotify, which names no process),
its events are looks too.

Told apart from pohmelfs' own changes as a seqlock would: a change of pohmelfs'
own (``changing``) marks the objects it touches until it has recorded their
stamps after it, and then moves their generation on; a look that finds an object
marked, or whose generation moved since it read its attributes, compares nothing
(it may have seen the middle of the change, or the state before it). A look that
cannot say when it read the attributes (no generation) still ignores an older
ctime; only a generation-checked one counts the same ctime with another size as a
change (a kernel with coarse timestamps gives two changes within a tick one ctime).

The inode's generation is not part of the stamp: the key already names the inode,
and an inode number used again by a new file comes with that file's newer ctime.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..protocol import Attr
from .cachelocks import CacheLocks
from .storage import FileKey, OpenFile, Storage, Watched

log = logging.getLogger("pohmelfs.server")

Stamp = tuple[int, int]  # (ctime in ns, size)
StatOf = Callable[[], "os.stat_result | None"]  # None: gone, or not at hand


def stamp_of(st: os.stat_result | Attr) -> Stamp:
    if isinstance(st, Attr):
        return st.ctime_ns, st.size
    return st.st_ctime_ns, st.st_size


def newer(seen: Stamp, known: Stamp, exact: bool = True) -> bool:
    """Does ``seen`` show a change since ``known``? (``exact``: no change of pohmelfs'
    own can have come between the two.)"""
    return seen[0] > known[0] or (exact and seen[0] == known[0] and seen[1] != known[1])


def not_at_hand() -> None:
    return None


@dataclass(frozen=True)
class Touch:
    """An object a change of pohmelfs' own touches, and how to read its attributes
    just before the change and just after it."""

    key: FileKey
    before: StatOf
    after: StatOf


def of_file(key: FileKey, file: OpenFile) -> Touch:
    return Touch(key, file.stat, file.stat)


def stat_at(storage: Storage, key: FileKey, path: bytes | None) -> StatOf:
    """How to read object ``key``'s attributes at ``path`` (as the caller): None if
    another object is there, none is, or there is no path."""
    if path is None:
        return not_at_hand

    def stat() -> os.stat_result | None:
        st = storage.stat(path)
        return st if (st.st_dev, st.st_ino) == key else None

    return stat


def at_path(storage: Storage, key: FileKey, path: bytes) -> Touch:
    found = stat_at(storage, key, path)
    return Touch(key, found, found)


class Stamps:
    def __init__(self, cache: CacheLocks, stale: Callable[[set[FileKey]], None]) -> None:
        self._cache = cache
        self._stale = stale
        cache.when_unheld(self.forget)
        self._lock = threading.Lock()
        self._known: dict[FileKey, Stamp] = {}
        self._changing = collections.Counter[FileKey]()  # own changes under way
        self._generation: dict[FileKey, int] = {}  # the last own change ended, while held
        self._generations = itertools.count(1)
        self._forgotten = 0  # generations dropped (so that none is seen twice)
        self._everything = 0  # changes of ours that may touch anything (a tree removed)
        self._overlapped: set[FileKey] = set()  # changed by two of ours at once, lately
        self._trees = threading.local()  # .removed: what this thread's tree removal took
        self._watched: Watched | None = None
        self.found = 0  # changes found on use (for tests and metrics)

    def watched_by(self, watched: Watched) -> None:
        """Objects looked at are followed by ``watched`` (where the storage watches
        objects one by one), until their last holder gives them up."""
        self._watched = watched

    # --- looks ---------------------------------------------------------------------

    def _version(self, key: FileKey) -> tuple[int, int]:
        """What moves when a change of ours to ``key`` ends: its generation (from
        one counter: never the same twice) and the count of generations forgotten."""
        return self._generation.get(key, 0), self._forgotten

    def look(self, key: FileKey, stat: Callable[[], os.stat_result],
             where: OpenFile | bytes | None = None) -> os.stat_result:  # fmt: skip
        """Read the object's attributes (``stat``) and compare them; returns them."""
        version = self._version(key)
        st = stat()
        if (st.st_dev, st.st_ino) == key:  # (a path may name another object by now)
            self.seen(key, st, where, version)
        return st

    def seen(self, key: FileKey, st: os.stat_result | Attr, where: OpenFile | bytes | None = None,
             version: tuple[int, int] | None = None) -> None:  # fmt: skip
        """The server saw ``key`` as ``st`` for a request (``where``: the object, open
        or by path, for the watcher to follow; ``version``: the key's, read before
        ``st`` was: see ``look``; without it, an older look may compare, and starts
        no record)."""
        cache = self._cache
        if not cache.has_holders(key):
            return
        watched = self._watched
        if where is not None and watched is not None:
            watched.follow(key, where)  # (also in the middle of a change: no compare needed)
            if not cache.has_holders(key):  # given up meanwhile: forget missed it
                watched.unfollow(key)
        if key in self._changing or self._everything:
            return
        stamp = stamp_of(st)
        found = False
        with self._lock:
            exact = version is not None
            moved = exact and self._version(key) != version
            if key in self._changing or self._everything or moved:
                return  # in the middle of a change of ours, or st may be from before one
            known = self._known.get(key)
            if known is None:
                if exact:
                    self._record(key, stamp)
            elif newer(stamp, known, exact):
                self._known[key] = stamp
                self.found += 1
                found = True
        if found:
            log.debug("%s changed outside pohmelfs (found when looked at): %s -> %s", key,
                      known, stamp)  # fmt: skip
            self._stale({key})

    # --- pohmelfs' own changes ---------------------------------------------------------

    def changing(self, touches: Sequence[Touch]) -> Callable[[], None]:
        """A change of pohmelfs' own begins (its requests' revocations done): each
        object held has its attributes just before it compared first (a change made
        outside before it is found, not taken for ours), and no look compares any
        until the change is done; returns what records them after it (call it once)."""
        touches = list({t.key: t for t in reversed(touches)}.values())  # (each key once)
        held = [t for t in touches if self._cache.has_holders(t.key)]
        versions = [self._version(t.key) for t in held]
        befores = [_stat_or_none(t.before) for t in held]
        found: set[FileKey] = set()
        with self._lock:
            for t, version, st in zip(held, versions, befores, strict=True):
                known = self._known.get(t.key)
                if (st is not None and known is not None and not self._changing[t.key]
                        and not self._everything and self._version(t.key) == version
                        and newer(stamp_of(st), known)):  # fmt: skip
                    self._known[t.key] = stamp_of(st)
                    self.found += 1
                    found.add(t.key)
            for t in touches:
                if self._changing[t.key]:
                    self._overlapped.add(t.key)
                self._changing[t.key] += 1
        if found:
            log.debug("%s changed outside pohmelfs (found before a change)", found)
            self._stale(found)
        return lambda: self._changed(touches)

    def _changed(self, touches: Sequence[Touch]) -> None:
        held = [t for t in touches if self._cache.has_holders(t.key)]  # (granted meanwhile too)
        afters = [_stat_or_none(t.after) for t in held]
        with self._lock:
            ended = []
            for t in touches:
                self._changing[t.key] -= 1
                if self._changing[t.key] <= 0:
                    del self._changing[t.key]
                    ended.append(t.key)
            for t, st in zip(held, afters, strict=True):
                key = t.key
                if not self._cache.has_holders(key):
                    continue
                self._generation[key] = next(self._generations)
                known = self._known.get(key)
                if st is None or self._changing[key] or key in self._overlapped:
                    # Not at hand, or another change of ours overlapped this one (one
                    # stamp after may be older than the other, on a coarse clock):
                    # the next look's is recorded.
                    self._known.pop(key, None)
                elif known is None or stamp_of(st)[0] >= known[0]:
                    self._known[key] = stamp_of(st)
            for key in ended:
                self._overlapped.discard(key)
                if not self._cache.has_holders(key):
                    self._known.pop(key, None)

    def changing_everything(self) -> Callable[[], None]:
        """A change of pohmelfs' own whose objects cannot all be named before it (a
        tree removed): no look compares anything until it is done, and every stamp
        is recorded afresh after it; returns what ends it."""
        with self._lock:
            self._everything += 1
        self._trees.removed = None

        def done() -> None:
            removed, self._trees.removed = self._trees.removed, None
            with self._lock:
                self._everything -= 1
                self._forgotten += 1  # (a look that read before it compares nothing)
                if removed is None:  # (it failed before saying what went)
                    self._known.clear()
                    self._generation.clear()
                    return
                for key in removed:
                    self._known.pop(key, None)
                    self._generation.pop(key, None)

        return done

    def tree_removed(self, keys: set[FileKey]) -> None:
        """What the tree removal under way on this thread (``changing_everything``)
        unlinked or removed: only their stamps are recorded afresh after it."""
        self._trees.removed = keys

    # --- the table ---------------------------------------------------------------------

    def forget(self, key: object) -> None:
        """Nobody holds ``key`` any more (``CacheLocks.when_unheld``, with its lock):
        the next holder's grant records it afresh."""
        with self._lock:
            self._known.pop(key, None)  # type: ignore[call-overload]
            if self._generation.pop(key, None) is not None:  # type: ignore[call-overload]
                self._forgotten += 1
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


def _stat_or_none(stat: StatOf) -> os.stat_result | None:
    try:
        return stat()
    except OSError:
        return None
