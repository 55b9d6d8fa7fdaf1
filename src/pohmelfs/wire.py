"""Moving frames over a blocking socket, shared by the server and the client.

The reader keeps one bounded receive buffer so that small frames cost one
``recv`` for many; a large payload whose destination is known (a caller's
read buffer on the client, a write buffer on the server) is received
straight into that memory with ``recv_into``: at most the few bytes that were
already buffered are copied.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from .protocol import HEADER_SIZE, Header

Buffer = bytes | bytearray | memoryview


class PeerClosed(ConnectionError):
    """The peer closed the connection at a frame boundary."""


class SocketReader:
    def __init__(self, sock: socket.socket, bufsize: int = 256 << 10) -> None:
        self.sock = sock
        self._buf = bytearray(bufsize)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def _fill(self, need: int) -> None:
        """Make at least ``need`` (<= buffer size) bytes available."""
        if self._end - self._start >= need:
            return
        if self._start + need > len(self._buf):
            n = self._end - self._start
            self._buf[:n] = self._view[self._start : self._end]
            self._start, self._end = 0, n
        while self._end - self._start < need:
            got = self.sock.recv_into(self._view[self._end :])
            if not got:
                if self._end == self._start:
                    raise PeerClosed("connection closed by peer")
                raise ConnectionError("connection closed in the middle of a frame")
            self._end += got

    def read_header(self, max_payload: int) -> Header:
        self._fill(HEADER_SIZE)
        start = self._start
        self._start += HEADER_SIZE
        return Header.unpack(self._view[start : start + HEADER_SIZE], max_payload)

    def read_into(self, dest: memoryview) -> None:
        """Fill all of ``dest`` from the stream."""
        n = len(dest)
        have = min(n, self._end - self._start)
        if have:
            dest[:have] = self._view[self._start : self._start + have]
            self._start += have
        pos = have
        while pos < n:
            got = self.sock.recv_into(dest[pos:])
            if not got:
                raise ConnectionError("connection closed in the middle of a frame")
            pos += got

    def take_buffered(self, n: int) -> memoryview:
        """Up to ``n`` bytes already received (valid until the next read)."""
        have = min(n, self._end - self._start)
        start = self._start
        self._start += have
        return self._view[start : start + have]

    def read_view(self, n: int) -> memoryview:
        """The next ``n`` bytes: a view of the internal buffer when they fit
        (valid until the next read), otherwise a fresh buffer."""
        if n <= len(self._buf):
            self._fill(n)
            start = self._start
            self._start += n
            return self._view[start : start + n]
        out = memoryview(bytearray(n))
        self.read_into(out)
        return out

    def skip(self, n: int) -> None:
        while n:
            step = min(n, len(self._buf))
            self.read_view(step)
            n -= step


def send_parts(sock: socket.socket, parts: Sequence[Buffer]) -> None:
    """Send every buffer in order with gathered writes; handles partial sends."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            first = views[0]
            if sent >= len(first):
                sent -= len(first)
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0
