"""A TCP proxy on 127.0.0.1 that cuts the stream into frames and, once, does to one
frame what an attacker on the path would: change a byte, send it twice, swap it
with the next, or drop it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from pohmelfs import protocol as p


def _frames(buf: bytearray) -> list[bytes]:
    out = []
    while len(buf) >= p.HEADER_SIZE:
        fields = p.HEADER.unpack_from(buf)
        size = p.HEADER_SIZE + fields[5] + fields[3]
        if len(buf) < size:
            break
        out.append(bytes(buf[:size]))
        del buf[:size]
    return out


def shut(*socks: socket.socket) -> None:
    """Both directions of each socket, ended (the other side sees the end)."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def relay(
    listener: socket.socket,
    upstream: tuple[str, int],
    socks: list[socket.socket],
    pump: Callable[[socket.socket, socket.socket, str, int], None],
) -> None:
    """Accept up to 50 connections, each relayed to ``upstream`` by two threads:
    ``pump(src, dst, direction, n)`` for "c2s" and "s2c" (``n``: the connection's
    number, 0 for the first). Every socket goes into ``socks``."""
    for n in range(50):
        try:
            client, _ = listener.accept()
        except OSError:
            return
        server = socket.create_connection(upstream)
        socks += [client, server]
        for src, dst, name in ((client, server, "c2s"), (server, client, "s2c")):
            threading.Thread(target=pump, args=(src, dst, name, n), daemon=True).start()


class TamperProxy:
    """``direction``: "c2s" or "s2c"; ``index``: which frame of that direction (0 is
    the first); ``how``: "alter", "replay", "reorder" or "drop". Only the first
    connection is tampered with; later ones pass untouched."""

    def __init__(self, upstream: tuple[str, int], direction: str, index: int,
                 how: str, raw: bool = False) -> None:  # fmt: skip
        """``raw``: count what each recv returns instead of frames (TLS records)."""
        self.upstream, self.direction, self.index, self.how = upstream, direction, index, how
        self.raw = raw
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.done = threading.Event()  # the tampering happened
        self._socks: list[socket.socket] = []
        threading.Thread(target=relay, args=(self.listener, upstream, self._socks, self._pump),
                         daemon=True).start()  # fmt: skip

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str,
              conn_no: int) -> None:  # fmt: skip
        tamper = conn_no == 0 and direction == self.direction
        buf = bytearray()
        n = 0
        held: bytes | None = None
        try:
            while True:
                chunk = src.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
                out = []
                pieces = [bytes(buf)] if self.raw else _frames(buf)
                if self.raw:
                    buf.clear()
                for frame in pieces:
                    if not tamper or (n != self.index and held is None):
                        out.append(frame)
                    elif held is not None:  # reorder: the next one first
                        out += [frame, held]
                        held = None
                        self.done.set()
                    elif self.how == "alter":
                        bad = bytearray(frame)
                        bad[len(bad) // 2] ^= 0x01
                        out.append(bytes(bad))
                        self.done.set()
                    elif self.how == "replay":
                        out += [frame, frame]
                        self.done.set()
                    elif self.how == "reorder":
                        held = frame
                    elif self.how == "drop":
                        self.done.set()
                    n += 1
                dst.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            shut(src, dst)

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()
