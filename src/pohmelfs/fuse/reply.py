"""Answering the kernel: one place maps failures to errnos, one object replies."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from ..client.connection import Transaction
from . import kernel as k


def errno_of(exc: BaseException) -> int:
    """The errno an application sees for a failure."""
    if isinstance(exc, OSError) and exc.errno:
        if exc.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE):
            return errno.EIO  # the server is gone: an I/O error, as on a local disk failure
        return exc.errno
    return errno.EIO


class Replier:
    """Answers one request on the descriptor it came from."""

    __slots__ = ("unique", "write", "fd")

    def __init__(self, unique: int, write: Callable[[list[Any]], None], fd: int = -1) -> None:
        self.unique = unique
        self.write = write
        self.fd = fd  # the /dev/fuse descriptor, for splicing a reply into it

    def ok(self, *payload: Any) -> None:
        self.write(k.reply_parts(self.unique, 0, *payload))

    def error(self, code: int) -> None:
        self.write(k.reply_parts(self.unique, code))


def lost_connection(tx: Transaction) -> bool:
    return isinstance(tx.error, ConnectionError)


def tx_errno(tx: Transaction) -> int:
    if tx.error is not None:
        return errno_of(tx.error)
    if tx.reply is not None and tx.reply.status:
        return tx.reply.status
    return errno.EIO
