"""What a client tells its servers, and asks them, of the servers that missed changes
(``server/peers.py``): the servers of its set its changes do not reach (MISSING),
which servers the others mark behind (PEERS), and that a resync made one the same
again (CLEAR)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

from ..protocol import Command, Cred
from .connection import Connection, Transaction

log = logging.getLogger("pohmelfs.client")


def announce_missing(conns: Iterable[Connection], addresses: Iterable[str],
                     now: bool = False) -> None:  # fmt: skip
    """Tell each of ``conns`` that this client's changes reach none of ``addresses``
    from now on (every later request of a connection is applied after it there);
    ``now``: one may have missed a change already (it left in the middle of one)."""
    names = sorted(a.encode() for a in addresses)
    for conn in conns:

        def heard(tx: Transaction, conn: Connection = conn) -> None:
            if tx.error is not None or (tx.reply is not None and tx.reply.status):
                log.warning("server %s was not told which servers miss changes: %s",
                            conn.address, tx.error or tx.reply.status)  # type: ignore[union-attr]  # fmt: skip

        try:
            conn.start(Command.MISSING, names=names, now=int(now), callback=heard)
        except OSError as e:
            log.warning("server %s was not told which servers miss changes: %s", conn.address, e)


def marked_behind(conn: Connection) -> dict[str, int]:
    """The servers ``conn``'s server marks behind, with each mark's generation."""
    reply = conn.call(Command.PEERS)
    out = {}
    for entry in reply["behind"]:
        address, _, generation = bytes(entry).rpartition(b" ")
        if address and generation.isdigit():
            out[address.decode(errors="replace")] = int(generation)
    return out


def clear_marks(conns: dict[str, Connection], address: str, generations: dict[str, int],
                cred: Cred) -> int:  # fmt: skip
    """Take away the marks of ``address`` on each server that had one at the
    generation read before its resync: 0, or why one refused (ESTALE: it missed
    changes since; EBUSY: a client connected there still leaves it out)."""
    for member, generation in generations.items():
        conn = conns.get(member)
        if conn is None or not generation:
            continue
        try:
            conn.call(Command.CLEAR, cred=cred, names=[address.encode()], expect=generation)
        except OSError as e:
            if e.errno not in (errno.ESTALE, errno.EBUSY):
                raise
            return e.errno
    return 0
