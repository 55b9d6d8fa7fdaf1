"""Moving frames over a blocking socket, shared by the server and the client.

The reader keeps one bounded receive buffer so that small frames cost one
``recv`` for many; a large payload whose destination is known (a caller's
read buffer on the client, a write buffer on the server) is received
straight into that memory with ``recv_into``: at most the few bytes that were
already buffered are copied.

On a connection authenticated by a secret every frame ends in a tag: the
reader feeds each piece of a frame to its ``verifier`` as it consumes it and
checks the tag at ``end_frame``; the writer seals each frame under its lock,
so frames are tagged in the order they go out.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .protocol import HEADER_SIZE, TAG_SIZE, Header, ProtocolError, packed_payload_len

STREAM_FROM = 1 << 20  # a tagged frame this large goes out in pieces
STREAM_PIECE = 256 << 10

if TYPE_CHECKING:
    from .security.tags import Sealer, Verifier

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
        self.verifier: Verifier | None = None  # set once the handshake made keys
        self._open = False  # a frame's tag is still to be read

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

    def read_header(self, max_payload: int, untagged_ok: bool = False) -> Header:
        """The next frame's header. With a verifier, the frame must be tagged
        (``untagged_ok``: or not, for the handshake's refusal, sent without keys),
        and ``end_frame`` must follow the payload (also after a ProtocolError that
        allows skipping the frame)."""
        self._fill(HEADER_SIZE)
        start = self._start
        self._start += HEADER_SIZE
        raw = self._view[start : start + HEADER_SIZE]
        if self.verifier is None:
            header = Header.unpack(raw, max_payload)
            if header.tag_len:
                raise ProtocolError("a tagged frame on a connection without keys")
            return header
        try:
            header = Header.unpack(raw, max_payload)
        except ProtocolError as e:
            if e.skip is None:
                raise
            self.verifier.begin(raw, e.skip[2])
            self._open = True
            raise
        if header.tag_len != TAG_SIZE:
            if untagged_ok and not header.tag_len:
                return header
            raise ProtocolError("an untagged frame on an authenticated connection")
        self.verifier.begin(raw, header.payload_len)
        self._open = True
        return header

    def end_frame(self) -> None:
        """Check the tag of the frame whose payload was just consumed (raises
        TagError); nothing without a verifier, or if it was checked already."""
        if not self._open:
            return
        assert self.verifier is not None
        self.verifier.finish(self._take_tag())

    def _take_tag(self) -> memoryview:
        """The tag that ends the open frame (valid until the next read)."""
        self._open = False
        self._fill(TAG_SIZE)
        start = self._start
        self._start += TAG_SIZE
        return self._view[start : start + TAG_SIZE]

    def end_frame_later(self, payload: memoryview) -> Callable[[], None] | None:
        """``end_frame`` for a payload read with ``check=False``: takes the tag in and
        returns the check of ``payload`` against it (raises TagError), to be run on
        the thread that will use the data, while this one reads on; None without a
        verifier."""
        if not self._open:
            return None
        assert self.verifier is not None
        tag = bytes(self._take_tag())
        frame = self.verifier.detach()

        def check() -> None:
            frame.update(payload)
            frame.check(tag)

        return check

    def read_into(self, dest: memoryview, check: bool = True) -> None:
        """Fill all of ``dest`` from the stream (``check=False``: not fed to the
        verifier; ``end_frame_later`` must follow)."""
        n = len(dest)
        have = min(n, self._end - self._start)
        if have:
            dest[:have] = self._view[self._start : self._start + have]
            self._start += have
        pos = have
        verifier = self.verifier if self._open and check else None
        if verifier is not None and have:
            verifier.update(dest[:have])
        while pos < n:
            got = self.sock.recv_into(dest[pos:])
            if not got:
                raise ConnectionError("connection closed in the middle of a frame")
            if verifier is not None:  # as it arrives: while the sender tags the rest
                verifier.update(dest[pos : pos + got])
            pos += got

    @property
    def raw(self) -> bool:
        """The payload bytes on the socket are the frame's as sent (no tags, no TLS):
        they may be spliced past Python."""
        return self.verifier is None and not isinstance(self.sock, ssl.SSLSocket)

    def take_buffered(self, n: int) -> memoryview:
        """Up to ``n`` bytes already received (valid until the next read). Not on a
        verified connection: the rest of the payload would bypass the verifier."""
        assert self.raw
        have = min(n, self._end - self._start)
        start = self._start
        self._start += have
        return self._view[start : start + have]

    def read_view(self, n: int) -> memoryview:
        """The next ``n`` bytes: a view of the internal buffer when they fit
        (valid until the next read, ``end_frame`` included), otherwise a fresh
        buffer."""
        # The tag is taken in with the payload, so that ``end_frame`` never moves
        # the buffer under the view it returns.
        tail = TAG_SIZE if self._open else 0
        if n + tail <= len(self._buf):
            self._fill(n + tail)
            start = self._start
            self._start += n
            view = self._view[start : start + n]
            if self._open:
                self.verifier.update(view)  # type: ignore[union-attr]
            return view
        out = memoryview(bytearray(n))
        self.read_into(out)
        return out

    def skip(self, n: int) -> None:
        while n:
            step = min(n, len(self._buf) - TAG_SIZE)
            self.read_view(step)
            n -= step


def shutdown(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    """Shut a connection down, never raising. On a TLS socket the plain socket's
    method is called: ``SSLSocket.shutdown`` drops the TLS layer, after which another
    thread's send would go out unencrypted."""
    try:
        socket.socket.shutdown(sock, how)
    except OSError:
        pass


def send_parts(sock: socket.socket, parts: Sequence[Buffer]) -> None:
    """Send every buffer in order with gathered writes; handles partial sends."""
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg: small parts go as one record
        small = [bytes(p) for p in parts if len(p) < 64 << 10]
        if len(small) == len(parts):
            sock.sendall(b"".join(small))
        else:
            for part in parts:
                sock.sendall(part)
        return
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


class FrameWriter:
    """Sends whole frames on a socket shared by several threads, sealing each with
    the connection's tag once it has one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.sealer: Sealer | None = None

    def send(self, parts: Sequence[Buffer]) -> None:
        with self.lock:
            self.send_locked(parts)

    def send_locked(self, parts: Sequence[Buffer]) -> None:
        """``send`` for a caller that holds ``lock``. A send that fails (a send
        time-out included) may have sent part of the frame: nothing may follow it,
        so the connection is shut down."""
        try:
            if self.sealer is None:
                send_parts(self.sock, parts)
            elif packed_payload_len(parts[0]) < STREAM_FROM:
                send_parts(self.sock, self.sealer.seal(parts))
            else:
                self._send_streamed(parts)
        except OSError:
            shutdown(self.sock)
            raise

    def send_frame(self, frame: memoryview, length: int) -> None:
        """Send a frame laid out in one buffer: header then payload, ``length`` bytes
        in all, with TAG_SIZE bytes to spare after them (for the tag). The kernel
        copies one buffer into the socket about twice as fast as a header and a
        payload apart (``docs/benchmarks.md``)."""
        with self.lock:
            try:
                if self.sealer is not None:
                    frame[length : length + TAG_SIZE] = self.sealer.seal_frame(frame[:length])
                    length += TAG_SIZE
                send_parts(self.sock, [frame[:length]])
            except OSError:
                shutdown(self.sock)
                raise

    def _send_streamed(self, parts: Sequence[Buffer]) -> None:
        """A large frame, tagged piece by piece as it goes out: the receiver checks
        one piece while this side tags the next (not all of it, then all of it)."""
        assert self.sealer is not None
        body = [memoryview(x).cast("B") for x in parts[1:]]
        first = [self.sealer.begin(parts[0])]
        for part in body:
            for off in range(0, len(part), STREAM_PIECE):
                piece = part[off : off + STREAM_PIECE]
                self.sealer.update(piece)
                send_parts(self.sock, [*first, piece])
                first = []
        send_parts(self.sock, [*first, self.sealer.finish()])

    def try_send(self, parts: Sequence[Buffer]) -> memoryview | bool:
        """Send a small frame without ever waiting: False if another frame is being
        sent or the socket takes nothing now; True once it is sent whole; otherwise
        the rest that is still to be sent, with ``lock`` kept for the caller, who
        must send the rest (``send_parts``) and then release it."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.sealer is not None:
                parts = self.sealer.seal(parts)
            frame = b"".join(parts)
            try:
                if isinstance(self.sock, ssl.SSLSocket):
                    # No MSG_DONTWAIT through TLS: send only if the socket has room
                    # now (POLLOUT: a third of its buffer free), whole, else not at all.
                    poller = select.poll()
                    poller.register(self.sock.fileno(), select.POLLOUT)
                    sent = self.sock.send(frame) if poller.poll(0) else 0
                else:
                    sent = self.sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if not sent and self.sealer is not None:
                self.sealer.unseal()
            if sent in (0, len(frame)):
                self.lock.release()
                return sent == len(frame)
            return memoryview(frame)[sent:]
        except BaseException:
            self.lock.release()
            raise
