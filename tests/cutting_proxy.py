"""A TCP proxy on 127.0.0.1 that loses a connection at the worst moment: once a
given command's reply leaves the server (the change was applied, its answer never
arrives), or once its request leaves the client (never applied). The frame is
dropped and both sides of that connection are cut; later connections pass
untouched."""

from __future__ import annotations

import socket
import threading

from pohmelfs import protocol as p
from tamper_proxy import _frames, relay, shut


class CuttingProxy:
    """``cmd``: whose frame cuts; ``after_apply``: its reply (else its request);
    ``nth``: which such frame (0: the first)."""

    def __init__(self, upstream: tuple[str, int], cmd: p.Command, after_apply: bool = True,
                 nth: int = 0) -> None:  # fmt: skip
        self.upstream, self.cmd, self.after_apply, self.nth = upstream, cmd, after_apply, nth
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.connections = 0
        self._seen = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=relay, args=(self.listener, upstream, self._socks, self._pump),
                         daemon=True).start()  # fmt: skip

    def _cuts(self, frame: bytes, replies: bool) -> bool:
        if replies != self.after_apply or self.cut.is_set():
            return False
        _, cmd, flags = p.HEADER.unpack_from(frame)[:3]
        if cmd != self.cmd:
            return False
        if replies and (not flags & p.FLAG_REPLY or flags & (p.FLAG_PENDING | p.FLAG_MORE)):
            return False
        if not replies and flags & p.FLAG_REPLY:
            return False
        with self._lock:
            self._seen += 1
            if self._seen - 1 != self.nth:
                return False
            self.cut.set()
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str,
              conn_no: int) -> None:  # fmt: skip
        replies = direction == "s2c"
        self.connections = max(self.connections, conn_no + 1)
        buf = bytearray()
        try:
            while True:
                chunk = src.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
                out = []
                for frame in _frames(buf):
                    if self._cuts(frame, replies):
                        dst.sendall(b"".join(out))
                        raise ConnectionAbortedError
                    out.append(frame)
                dst.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            shut(src, dst)

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()
