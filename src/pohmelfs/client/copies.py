"""A file copied on the server (``Client.copy_file``): the data never crosses the
network. The source is opened and held by a shared cache lock first, so other
clients' writes kept back of it reach the server before the copy reads it (COPY
refuses a source another client may keep data of back); the target is checked
not to be the same file (it would be truncated before it is read); then COPY
requests of at most ``PIECE`` bytes."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from typing import Any

from .paths import PathArg

PIECE = 16 << 20  # bytes a COPY asks for (the server's most)
RETRIES = 10  # times a piece is asked for again when another writer took the source


def copy_file(open_file: Callable[..., Any], stat: Callable[[PathArg], os.stat_result],
              src: PathArg, dst: PathArg) -> int:  # fmt: skip
    """Copy ``src`` to ``dst`` with ``open_file`` and ``stat`` (a client's); the bytes
    copied."""
    with open_file(src, "rb", buffering=0) as f:
        st = f.stat()
        with contextlib.suppress(FileNotFoundError):
            there = stat(dst)
            if (there.st_ino, there.st_dev) == (st.st_ino, st.st_dev):
                raise OSError(errno.EINVAL, "source and target are the same file", dst)
        with open_file(dst, "wb", buffering=0) as g:
            f.cache_lock()  # (other writers write back first, and wait for us)
            done, size, retries = 0, f.stat().st_size, 0
            while done < size:
                try:
                    got = g.copy_from(f, done, done, min(PIECE, size - done))
                except BlockingIOError:  # (another writer took the source meanwhile)
                    retries += 1
                    if retries > RETRIES:
                        raise
                    f.cache_lock()
                    size = f.stat().st_size
                    continue
                if not got:
                    break
                done += got
            return done
