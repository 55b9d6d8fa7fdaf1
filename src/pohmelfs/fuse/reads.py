"""FUSE READ: data placed for the kernel by the thread that receives it.

The reader thread only sends the request. When the server's reply arrives, the
client's receive thread takes the data off the socket (into a reusable buffer:
the one copy in Python, or with ``splice`` socket -> pipe -> /dev/fuse, none)
and writes it as the answer to the kernel request that is waiting for it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import protocol as p
from ..client.calls import start_read
from ..client.connection import Transaction
from ..client.file import RemoteFile
from ..wire import SocketReader
from . import kernel as k
from .reply import Replier, errno_of, lost_connection, tx_errno

log = logging.getLogger("pohmelfs.fuse")

SPLICE_MIN = 64 << 10  # smaller replies are cheaper to copy than to splice
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032


class DirectReads:
    def __init__(self, splice: bool, max_write: int) -> None:
        self.splice = splice
        self.max_write = max_write
        self._scratch = threading.local()  # per receive thread: buffer, pipe
        self._retry = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pohmelfs-fuse-retry")

    def close(self) -> None:
        self._retry.shutdown(wait=False)

    def start(self, f: RemoteFile, offset: int, size: int, reply: Replier,
              finished: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        """Ask the server for the data; the receive thread answers the kernel.
        ``finished`` runs once the kernel has its answer, whatever it is."""
        replied = False

        def sink(header: p.Header, reader: SocketReader) -> None:
            nonlocal replied
            n = header.payload_len
            # (A tagged or TLS frame is checked before the kernel gets any: copied.)
            fits = SPLICE_MIN <= n <= self._pipe_room()
            if self.splice and reader.raw and fits and reply.fd >= 0:
                self._splice_reply(reply, n, reader)
                replied = True
                finished()
                return
            buf = getattr(self._scratch, "buf", None)
            if buf is None or len(buf) < n:
                buf = self._scratch.buf = memoryview(bytearray(max(n, 1 << 20)))
            reader.read_into(buf[:n])
            reader.end_frame()  # raises if the data is not the server's: never handed on
            replied = True
            reply.ok(buf[:n])
            finished()

        def done(tx: Transaction) -> None:
            if replied:
                return
            if lost_connection(tx):
                self._retry.submit(self._read_again, f, offset, size, reply, finished)
                return
            reply.error(tx_errno(tx))
            finished()

        try:
            start_read(f, offset, size, sink, done)
        except BaseException:
            finished()
            raise

    def _splice_reply(self, reply: Replier, n: int, reader: SocketReader) -> None:
        """Move a READ reply's data from the socket to the kernel without copying it
        into Python: header and already-buffered bytes are written into a pipe, the
        rest is spliced from the socket, then the whole message into /dev/fuse."""
        r, w = self._scratch.pipe
        os.write(w, k.OUT_HEADER.pack(k.OUT_HEADER.size + n, 0, reply.unique))
        head = reader.take_buffered(n)
        if len(head):
            os.write(w, head)
        left = n - len(head)
        sock = reader.sock.fileno()
        try:
            while left:
                moved = os.splice(sock, w, left)
                if not moved:
                    raise ConnectionError("connection closed in the middle of a frame")
                left -= moved
        except BaseException:
            _drain(r, k.OUT_HEADER.size + n - left)  # the caller answers the kernel instead
            raise
        total = k.OUT_HEADER.size + n
        try:
            while total:
                total -= os.splice(r, reply.fd, total)
        except OSError as e:  # the request was interrupted: empty the pipe for the next one
            _drain(r, total)
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                log.warning("cannot splice a reply to the kernel: %s", e)

    def _pipe_room(self) -> int:
        """How large a reply this thread's pipe can hold (the message must fit whole)."""
        room = getattr(self._scratch, "room", None)
        if room is None:
            self._scratch.pipe = _r, w = os.pipe()
            for size in (2 * self.max_write, self.max_write):
                try:
                    fcntl.fcntl(w, F_SETPIPE_SZ, size)
                    break
                except OSError:
                    continue
            room = self._scratch.room = fcntl.fcntl(w, F_GETPIPE_SZ) - k.OUT_HEADER.size
        return int(room)

    def _read_again(self, f: RemoteFile, offset: int, size: int, reply: Replier,
                    finished: Callable[[], None]) -> None:  # fmt: skip
        try:
            buf = bytearray(size)
            n = f.preadinto(buf, offset)
            reply.ok(memoryview(buf)[:n])
        except Exception as e:
            reply.error(errno_of(e))
        finally:
            finished()


def _drain(fd: int, n: int) -> None:
    while n > 0:
        n -= len(os.read(fd, n))
