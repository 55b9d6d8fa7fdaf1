"""The kernel's end of the mount, as the filesystem layer sees it: what INIT
agreed, and the notifications it may send (dropping cached attributes, pages,
names). The session fills it in at INIT; before that, notifications go nowhere
(nothing is cached in a kernel that has not started)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from . import kernel as k

log = logging.getLogger("pohmelfs.fuse")


def writer(fd: int) -> Callable[[list[Any]], None]:
    """Write one reply or notification to ``fd`` with one ``writev``."""

    def write(parts: list[Any]) -> None:
        try:
            os.writev(fd, parts)
        except OSError as e:
            # ENOENT: the request was interrupted and is gone; ENODEV: unmounted.
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("cannot reply to the kernel: %s", e)

    return write


class KernelChannel:
    def __init__(self) -> None:
        self.flags = 0  # what INIT negotiated (k.* capability bits)
        self.epochs = False  # the kernel takes INC_EPOCH (names may be cached)
        self._write: Callable[[list[Any]], None] | None = None

    def started(self, write: Callable[[list[Any]], None], flags: int, epochs: bool) -> None:
        """INIT is answered: notifications may go from now on, through ``write`` (to
        /dev/fuse: ``writer(fd)``; a recorder in tests)."""
        self.flags, self.epochs = flags, epochs
        self._write = write

    def notify(self, parts: list[Any]) -> None:
        if self._write is not None:
            self._write(parts)

    def invalidate(self, nodeid: int, pages: bool = True, offset: int = 0,
                   length: int = -1) -> None:  # fmt: skip
        """Drop the kernel's cached attributes of a node, and its data (of the range;
        length -1: to the end) unless told not to."""
        if not pages:
            offset, length = -1, 0
        self.notify(k.notify_inval_inode(nodeid, offset, length))

    def new_epoch(self) -> None:
        """Every name the kernel caches must be looked up again."""
        self.notify(k.notify_inc_epoch())
