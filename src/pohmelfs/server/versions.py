"""Versions of objects: what tells a server that missed a change from one that has it.

The version of an object on a server is the sum, modulo 2**62, of one number per
change of it this server applied: the change's id (``change_id``: a hash of its
client session and request id, the same on every server of a client's set).
A create sets the new object's version to its change's id instead (its inode
may be one a removed object used before). A sum does not depend on the order of
its terms, so two servers that applied the same changes in different orders
(two clients writing different ranges at once) have the same version, and a
server that missed one has another (unless two sets of 64-bit hashes collide).
Objects pohmelfs never changed have version 0 everywhere.

A change is counted after it was applied, never before: while it runs the
object is ``busy`` (``VERSION`` says so, and ``SETVERSION`` refuses), and a
crash between the two leaves the object looking stale, never fresh.

Kept in SQLite (``versionfile.py``) outside the export, written behind: bumps
are gathered in memory and written together at most ``FLUSH_EVERY`` seconds
apart (so a change costs no write of its own). A server that stopped without
closing the file (SIGKILL, a crash) may have lost some while the data stayed,
so its next start believes none: every object then has a version no other
server has, and the next resync copies everything (see ``VersionFile``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from .peers import MarkStore, Peers
from .storage import FileKey

log = logging.getLogger("pohmelfs.server")

MASK = (1 << 62) - 1  # versions fit in SQLite's signed 64-bit integers
FLUSH_EVERY = 0.2  # seconds
FLUSH_AT = 8192  # bumps gathered: written at once
WRITTEN_KEPT = 65536  # objects whose written version stays at hand


def change_id(session: bytes, xid: int) -> int:
    """The id of request ``xid`` of client session ``session`` (never 0)."""
    h = hashlib.blake2b(session + xid.to_bytes(8, "big"), digest_size=8).digest()
    return (int.from_bytes(h, "big") & MASK) or 1


class Backing(MarkStore, Protocol):
    """Where versions outlive the server: all of them read, the changed ones written
    (and the servers marked behind: ``peers.py``)."""

    def read(self, key: FileKey) -> int: ...

    def write(self, values: dict[FileKey, int]) -> None: ...

    def close(self) -> None: ...


class Versions:
    """The versions of the objects of one export (in memory only without ``backing``)."""

    def __init__(self, backing: Backing | None = None) -> None:
        self._backing = backing
        self.peers = Peers(backing)
        self._values: dict[FileKey, int] = {}  # changed since the last write (or all)
        # Written lately, as written: the next change of a busy object (a directory
        # filling up) reads it here, not from the file (under the lock), most recent last.
        self._written: OrderedDict[FileKey, int] = OrderedDict()
        self._busy: dict[FileKey, int] = {}  # changes under way, by object
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one write to the backing at a time
        self._wake = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None
        if backing is not None:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name="pohmelfs-versions")  # fmt: skip
            self._flusher.start()

    def get(self, key: FileKey) -> tuple[int, int]:
        """The object's version and how many changes of it are under way."""
        with self._lock:
            return self._value(key), self._busy.get(key, 0)

    def begin(self, keys: Iterable[FileKey]) -> tuple[FileKey, ...]:
        """Changes of ``keys`` start: they are busy until ``end``."""
        keys = tuple(set(keys))
        with self._lock:
            for key in keys:
                self._busy[key] = self._busy.get(key, 0) + 1
        return keys

    def end(self, keys: tuple[FileKey, ...], change: int | None,
            created: FileKey | None = None) -> None:  # fmt: skip
        """The change of ``keys`` (from ``begin``) ended; ``change``: its id if it was
        applied (None: it failed, nothing is counted); ``created``: the object it made."""
        with self._lock:
            for key in keys:
                n = self._busy[key] - 1
                if n:
                    self._busy[key] = n
                else:
                    del self._busy[key]
                if change is not None:
                    self._values[key] = (self._value(key) + change) & MASK
            if change is not None and created is not None:
                self._values[created] = change
            gathered = len(self._values)
        if self._backing is not None and gathered >= FLUSH_AT:
            self._wake.set()

    def moved(self, keys: Iterable[FileKey]) -> None:
        """These objects were changed outside pohmelfs: each takes a new random
        version, which no other server's copy has (its copy may now differ)."""
        with self._lock:
            for key in keys:
                self._values[key] = secrets.randbits(62) or 1
            gathered = len(self._values)
        if self._backing is not None and gathered >= FLUSH_AT:
            self._wake.set()

    def set_if(self, key: FileKey, expect: int, version: int) -> bool:
        """SETVERSION: ``version`` if the object's is ``expect`` and nothing is under way."""
        with self._lock:
            if self._busy.get(key) or self._value(key) != expect:
                return False
            self._values[key] = version & MASK
            return True

    def _value(self, key: FileKey) -> int:
        value = self._values.get(key)
        if value is None:
            value = self._written.get(key)
        if value is None:
            value = 0 if self._backing is None else self._backing.read(key)
        return value

    def flush(self) -> None:
        """Write what changed to the backing (the latest ``WRITTEN_KEPT`` stay at hand)."""
        if self._backing is None:
            return
        with self._write_lock:
            with self._lock:
                values = dict(self._values)
            if not values:
                return
            self._backing.write(values)
            with self._lock:
                for key, value in values.items():
                    if self._values.get(key) == value:  # (not changed again meanwhile)
                        del self._values[key]
                    self._written[key] = value
                    self._written.move_to_end(key)
                while len(self._written) > WRITTEN_KEPT:
                    self._written.popitem(last=False)

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()
            try:
                self.flush()
            except sqlite3.Error as e:  # kept in memory; tried again
                log.warning("cannot write the versions file: %s", e)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(5.0)
        self.flush()
        if self._backing is not None:
            self._backing.close()
