"""The mount's cache state (fuse/coherent.py) alone, with stand-in files."""

from __future__ import annotations

import errno
import time
from typing import Any

from pohmelfs.client.file import CacheGrant
from pohmelfs.fuse.coherent import LOCKED, UNCOVERED, CacheState
from pohmelfs.fuse.nodes import Node
from pohmelfs.protocol import Attr

ATTR = Attr(7, 0o100644, 1, 0, 0, 0, 10, 8, 4096, 0, 1, 2)


class StandIn:
    """What CacheState asks of a RemoteFile: a lock taken through it, or its
    server handle already closed (its CLOSE went before the CACHE: EBADF)."""

    def __init__(self, closed_on_server: bool = False) -> None:
        self.closed = False
        self.closed_on_server = closed_on_server
        self.on_revoke: Any = None
        self.asked = 0

    def granted_at_open(self, exclusive: bool) -> CacheGrant | None:
        return None

    def cache_lock(self, exclusive: bool = False, abandon: Any = None) -> CacheGrant:
        self.asked += 1
        if self.closed_on_server:
            raise OSError(errno.EBADF, "unknown file handle")
        return CacheGrant(ATTR, 0, 0)

    def writable(self) -> bool:
        return False


def test_a_lock_is_taken_through_this_open_when_the_last_ones_handle_went() -> None:
    """Two opens of a node; the lock went through the first, which its process
    closed while the second was reading: the second's read takes the lock through
    its own handle instead of failing with EBADF (seen at the end of a run with two
    readers on one mount)."""
    state = CacheState(lambda nodeid, pages: None, lambda nodeid: [])
    node = Node(2, None, b"f", 7)
    first, second = StandIn(), StandIn()
    state.ensure(node, first, exclusive=False)  # the lock goes through the first
    state._state.clear()  # (revoked since: it must be taken again)
    first.closed_on_server = True  # its RELEASE and CLOSE went meanwhile
    assert state.read_started(node, second) == LOCKED
    assert (first.asked, second.asked) == (2, 1)
    assert state._via[2] is second


def test_a_read_that_never_got_a_lock_has_its_pages_dropped_after() -> None:
    """A page-cache READ whose lock was taken back each time it was granted, with no
    revocation under way to drop what it fills, is read without one: its pages are
    dropped once the kernel has them (no lock would ever make them go)."""
    dropped: list[tuple[Any, ...]] = []
    state = CacheState(lambda *args: dropped.append(args), lambda nodeid: [])
    node = Node(2, None, b"f", 7)
    revoked = StandIn()
    revoked.cache_lock = lambda exclusive=False, abandon=None: (  # type: ignore[method-assign]
        state._revokes.__setitem__(2, state._revokes.get(2, 0) + 1) or CacheGrant(ATTR, 0, 0)
    )
    assert state.read_started(node, revoked) == UNCOVERED
    state.read_done(2, UNCOVERED, 5000, 3000)
    deadline = time.monotonic() + 5
    while not dropped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dropped == [(2, True, 4096, 3904)]
