"""Advisory record locks asked for by path (``Client.lock``): sent on a handle of the
file kept open for them, and asked for again after a lost connection."""

from __future__ import annotations

import errno
import os
import random
import threading
from collections import OrderedDict

from .. import protocol as p
from ..protocol import Command, LockType
from .connection import Connection
from .file import RemoteFile
from .paths import PathArg, encode_path, normal_path
from .resend import resending
from .services import FileServices

LOCK_FILES = 64  # files kept open for advisory lock requests (least recently used go)


class PathLocks:
    def __init__(self, services: FileServices) -> None:
        self._services = services
        self.owner = random.getrandbits(63)  # this client's advisory locks
        self._files: OrderedDict[tuple[bytes, bool], RemoteFile] = OrderedDict()
        self._files_lock = threading.Lock()

    def _file(self, path: PathArg, writable: bool) -> RemoteFile:
        """An open handle of the file to send lock requests on: open for writing to
        take an exclusive lock (POSIX: one who may only read the file cannot hold up
        its writers). The server keeps locks by file and owner, not by handle, so
        only the LOCK_FILES used last stay open."""
        key = (normal_path(encode_path(path)), writable)
        with self._files_lock:
            f = self._files.pop(key, None)
        if f is None or f.closed:
            flags, mode = (os.O_RDWR, "r+") if writable else (os.O_RDONLY, "r")
            f = RemoteFile(self._services, os.fspath(path), flags, 0, mode)
        with self._files_lock:
            self._files[key] = f
            full = len(self._files) > LOCK_FILES
            old = self._files.popitem(last=False)[1] if full else None
        if old is not None:
            try:
                old.close()
            except OSError:
                pass
        return f

    def request(self, path: PathArg, start: int, length: int, type_: int, flags: int,
                cmd: Command = Command.LOCK) -> p.Message:  # fmt: skip
        if start < 0 or length < 0:
            raise OSError(errno.EINVAL, "negative lock range", path)
        f = self._file(path, cmd is Command.LOCK and type_ == LockType.WRLCK)
        fields = {"owner": self.owner, "type": type_, "flags": flags, "pid": os.getpid()}

        def send(conn: Connection, oid: int, _resent: bool) -> p.Message:
            tx = conn.start(cmd, oid=oid, offset=start, length=length, **fields)
            return conn.wait(tx, path)  # (as long as it likes: PENDING meanwhile)

        # A lock lost with its connection is asked for again on the next one (the
        # server let every lock of the old one go: a second run takes it once).
        return resending(f.handle, send, True)

    def close(self) -> None:
        with self._files_lock:
            files, self._files = list(self._files.values()), OrderedDict()
        for f in files:
            try:
                f.close()  # the server drops our locks with the connection anyway
            except OSError:
                pass
