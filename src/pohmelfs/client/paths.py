"""Paths as the protocol carries them."""

from __future__ import annotations

import errno
import os

from .. import protocol as p

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def encode_path(path: PathArg) -> bytes:
    """A path as the bytes the protocol carries; refuses what no server could accept."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    if len(raw) > p.MAX_PATH:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
    return raw


def normal_path(raw: bytes) -> bytes:
    """A path as the server resolves it (``.`` and empty components dropped, ``..``
    going up, never above the root), to compare paths that name one object."""
    parts: list[bytes] = []
    for comp in raw.split(b"/"):
        if comp == b"..":
            if parts:
                parts.pop()
        elif comp not in (b"", b"."):
            parts.append(comp)
    return b"/" + b"/".join(parts)
