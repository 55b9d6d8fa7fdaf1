"""Majority mode (``Client(majority=True)``, ``-o majority``): a change is sent only
while more than half of the set's writable servers are current, and one that ends
applied by no majority has an outcome not known (``replicated.py`` counts)."""

from __future__ import annotations

import errno
import os
from typing import Any

from .. import protocol as p
from ..protocol import Command


def changes(cmd: Command, fields: dict[str, Any]) -> bool:
    """Does this request change the export (what majority mode refuses without one)?"""
    if cmd is Command.OPEN:
        return bool(fields["flags"] & (os.O_CREAT | os.O_TRUNC))
    return cmd in p.CHANGES and cmd is not Command.SETVERSION


def need_majority(cmd: Command, current: int, total: int) -> None:
    """EROFS unless ``current`` servers are more than half of the ``total``."""
    if 2 * current <= total:
        raise OSError(errno.EROFS, f"{cmd.name} refused: {current} of the {total} "
                      "servers reachable, no majority (majority mode)")  # fmt: skip


def minority_error(cmd: Command, applied: int, total: int) -> OSError | None:
    """The error a change applied by ``applied`` of ``total`` servers ends with."""
    if 2 * applied > total:
        return None
    return OSError(errno.EIO, f"{cmd.name} was applied by only {applied} of the {total} "
                   "servers, no majority: its outcome is not known (majority mode)")  # fmt: skip
