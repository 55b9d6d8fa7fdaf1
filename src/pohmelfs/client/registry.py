"""This client's open files: by handle, for the server's notices about them, and
all of them, for the renames made through this client (a file reopens by its
path after a lost connection)."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

from .. import protocol as p
from ..protocol import Attr
from .connection import Connection
from .paths import PathArg, encode_path, normal_path

log = logging.getLogger("pohmelfs.client")


class Reopenable(Protocol):
    # on_resize(attr, last byte): another client changed the file's size (RESIZE).
    on_resize: Callable[[Attr, int], None] | None

    def moved(self, src: bytes, dst: bytes, exchange: bool = False) -> None: ...

    def writable(self) -> bool: ...


class FileRegistry:
    def __init__(self) -> None:
        self._files: weakref.WeakSet[Reopenable] = weakref.WeakSet()
        self._by_handle: weakref.WeakValueDictionary[tuple[int, int], Reopenable] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()

    def opened(self, f: Reopenable, conn: Connection, oid: int) -> None:
        """``f`` is open as handle ``oid`` of ``conn`` (also after a reopen)."""
        with self._lock:
            self._files.add(f)
            self._by_handle[conn.serial, oid] = f

    def writing(self, conn: Connection) -> set[int]:
        """The handles of ``conn`` of the files open for writing."""
        with self._lock:
            return {oid for (serial, oid), f in self._by_handle.items()
                    if serial == conn.serial and f.writable()}  # fmt: skip

    def closed(self, conn: Connection, oid: int) -> None:
        with self._lock:
            self._by_handle.pop((conn.serial, oid), None)

    def renamed(self, old: PathArg, new: PathArg, exchange: bool = False) -> None:
        """``old`` is now ``new`` (``exchange``: and ``new`` is ``old``): open files at
        or below it reopen by their new path after a lost connection."""
        src, dst = normal_path(encode_path(old)), normal_path(encode_path(new))
        with self._lock:
            files = list(self._files)
        for f in files:
            f.moved(src, dst, exchange)

    def resized(self, conn: Connection, msg: p.Message) -> None:
        """The server's RESIZE (on a notification thread): the file takes the new
        size in, then the answer goes."""
        f = self._by_handle.get((conn.serial, msg.oid))
        try:
            if f is not None and f.on_resize is not None:
                f.on_resize(msg["attr"], msg["last"])
        except Exception:
            log.exception("taking in a new size failed")
        try:
            conn.answer(msg)
        except OSError:
            pass
