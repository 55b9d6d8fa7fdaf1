"""The other servers of this server's clients' sets that missed changes applied here
(``behind``), by the address the clients name them by.

A client tells each server of its write set, with MISSING, which servers of its
set its changes do not reach now (lost, left, never reached). Each is marked
behind here by the first change of that session applied here (or at once, when
the client says one may have been missed already), and the mark is written
through (it must outlive a crash of this server: see ``versionfile.py``); every
change of that session applied here moves the mark's generation. A client
connecting reads the marks (PEERS) and takes a server marked behind for one to
resync, never to read from. CLEAR
takes a mark away once a resync made that server the same as this one, and only
if no change moved it since the resync read it and no session connected now
still leaves that server out.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

MAX_MARKS = 256  # servers marked behind, at most (a client names at most 32 at once)


class MarkStore(Protocol):
    def marks(self) -> set[bytes]: ...

    def mark(self, address: bytes, behind: bool) -> None: ...


class Peers:
    """``told``: called (outside the lock) with the servers newly marked behind, to
    tell every client connected (``service.py``)."""

    def __init__(self, store: MarkStore | None = None) -> None:
        self._store = store
        self.told: Callable[[list[bytes]], None] = lambda _: None
        self._lock = threading.Lock()
        self._generation: dict[bytes, int] = dict.fromkeys(store.marks() if store else (), 1)
        self._missing: dict[int, frozenset[bytes]] = {}  # by session: who it leaves out

    def missing(self, sid: int, addresses: Iterable[bytes], now: bool = False) -> None:
        """Session ``sid``'s changes reach none of ``addresses`` from now on (the
        ones it named before are reached again, unless named again); ``now``: mark
        them at once. OSError (ENOSPC) past ``MAX_MARKS``."""
        names = frozenset(addresses)
        with self._lock:
            new = [a for a in names if a not in self._generation]
            promised = set().union(*self._missing.values()) - self._generation.keys()
            if len(self._generation) + len(promised | set(new)) > MAX_MARKS:
                raise OSError(errno.ENOSPC, f"more than {MAX_MARKS} servers marked behind")
            marked = new if now else []
            self._mark(marked)
            for address in names:
                if address in self._generation:
                    self._generation[address] += 1
            if names:
                self._missing[sid] = names
            else:
                self._missing.pop(sid, None)
        if marked:
            self.told(marked)

    def _mark(self, addresses: Iterable[bytes]) -> None:
        for address in addresses:
            if self._store is not None:
                self._store.mark(address, True)  # (written through, under the lock)
            self._generation[address] = 1

    def applied(self, sid: int) -> None:
        """A change of session ``sid`` was applied here."""
        names = self._missing.get(sid)
        if names:
            with self._lock:
                new = [a for a in names if a not in self._generation]
                room = MAX_MARKS - len(self._generation)
                marked = new[: max(room, 0)]  # (past the bound: ``missing`` refused it)
                self._mark(marked)
                for address in names:
                    if address in self._generation:
                        self._generation[address] += 1
            if marked:
                self.told(marked)

    def ended(self, sid: int) -> None:
        with self._lock:
            self._missing.pop(sid, None)

    def behind(self) -> dict[bytes, int]:
        """Each server marked behind, with its mark's generation."""
        with self._lock:
            return dict(self._generation)

    def left_out(self, address: bytes) -> bool:
        """Does a session connected now leave ``address`` out?"""
        with self._lock:
            return any(address in names for names in self._missing.values())

    def clear(self, address: bytes, expect: int) -> bool:
        """Take the mark of ``address`` away if it is at ``expect`` (0: there is none)
        and no session leaves it out now."""
        with self._lock:
            if self._generation.get(address, 0) != expect:
                return False
            if any(address in names for names in self._missing.values()):
                return False
            if address in self._generation:
                if self._store is not None:
                    self._store.mark(address, False)
                del self._generation[address]
            return True
