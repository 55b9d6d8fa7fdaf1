"""One client connection: its handshake (TLS first if the server has it), then
its requests (``dispatch.Dispatch``) until it ends, then everything it held."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .. import protocol as p
from ..protocol import Command, ProtocolError
from ..protocol.exchange import error_frame
from ..security.config import ServerSecurity
from ..security.hello import Refused, Welcome
from ..security.tls import peer_name
from ..wire import FrameWriter, PeerClosed, SocketReader
from . import admission, linux
from .dispatch import Dispatch
from .metrics import MeteredWriter
from .replycache import SessionReplies
from .shared import Shared

log = logging.getLogger("pohmelfs.server")
TAKE_OVER_WAIT = 5.0  # seconds a new connection of a session waits for the old one to end


@dataclass(frozen=True)
class Terms:
    """What a server offers each connection."""

    security: ServerSecurity
    max_payload: int
    fsid: int  # this server's, for clients to tell servers apart
    handshake_timeout: float
    idle_timeout: float


class Session:
    """``admitted`` and ``ended`` tell the server (by this session) when the
    handshake is over and when the connection is."""

    def __init__(self, sid: int, sock: socket.socket, peer: str, shared: Shared, terms: Terms,
                 admitted: Callable[[Session], None],
                 ended: Callable[[Session], None]) -> None:  # fmt: skip
        self.sid, self.sock, self.peer = sid, sock, peer
        self._shared, self._terms = shared, terms
        self._admitted, self._ended = admitted, ended
        self.reader = SocketReader(sock)
        self.writer = self._writer(sock)
        self.dispatch: Dispatch | None = None
        self.replies: SessionReplies | None = None  # the client session's, once admitted
        self.finished = threading.Event()  # closed, and everything it held let go

    def run(self) -> None:
        try:
            linux.private_umask_zero()
            dispatch = self.dispatch = self._handshake()
            while True:
                dispatch.serve_one()
        except PeerClosed:
            log.debug("%s: closed", self.peer)
        except ProtocolError as e:
            log.warning("%s: protocol error, dropping connection: %s", self.peer, e)
        except BlockingIOError:
            log.info("%s: silent for %.0f s, closed", self.peer, self._terms.idle_timeout)
        except OSError as e:
            log.debug("%s: connection ended: %s", self.peer, e)
        finally:
            self.close()

    def _handshake(self) -> Dispatch:
        terms, export = self._terms, self._shared.export
        caps = p.Cap.READ_ONLY if export.read_only else 0
        caps |= p.Cap.XATTR if export.xattrs else 0
        welcome = Welcome(terms.max_payload, int(terms.idle_timeout * 1000), int(caps),
                          terms.fsid, export.statfs, self._resume)  # fmt: skip
        linux.set_receive_timeout(self.sock, terms.handshake_timeout)
        try:
            certificate = self._tls_handshake() if terms.security.tls is not None else ""
            admitted = admission.admit(self.reader, self.writer, terms.security, welcome,
                                       self.peer, certificate)  # fmt: skip
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            raise ProtocolError("no handshake within the time allowed") from None
        linux.set_receive_timeout(self.sock, terms.idle_timeout)
        self._admitted(self)
        assert self.replies is not None
        return Dispatch(self.sid, self.peer, self._shared, self.reader, self.writer, admitted,
                        self.replies)  # fmt: skip

    def _resume(self, key: str, session: bytes) -> bool:
        self.replies, known = self._shared.replies.attach(key, session, self, _take_over)
        return known

    def _tls_handshake(self) -> str:
        """Turn the connection into TLS; the client certificate's common name. A
        client that starts with a plain pohmelfs frame is told what it lacks."""
        tls = self._terms.security.tls
        assert tls is not None
        if self.sock.recv(2, socket.MSG_PEEK) == p.MAGIC.to_bytes(2, "big"):
            text = "this server requires TLS: give the client tls_cert, tls_key and tls_ca"
            self.writer.send(error_frame(Command.HELLO, 0, errno.EACCES, text))
            raise Refused("a plain client on a TLS server")
        # Wrapped first and shaken after, so that the handshake reaper can cut off
        # a handshake that dawdles (it shuts down ``self.sock``).
        self.sock = sock = tls.wrap_socket(self.sock, server_side=True,
                                           do_handshake_on_connect=False)  # fmt: skip
        try:
            sock.do_handshake()
        except ssl.SSLError as e:
            log.warning("%s: TLS handshake failed: %s", self.peer, e.reason or e)
            raise Refused("TLS handshake failed") from None
        self.reader = SocketReader(sock)
        self.writer = self._writer(sock)
        return peer_name(sock)

    def _writer(self, sock: socket.socket) -> FrameWriter:
        metrics = self._shared.metrics
        return FrameWriter(sock) if metrics is None else MeteredWriter(sock, metrics)

    def close(self) -> None:
        dispatch = self.dispatch
        if dispatch is not None:
            dispatch.close_work()
        try:
            self.sock.close()
        except OSError:
            pass
        if dispatch is not None:
            dispatch.close_files()
        if self.replies is not None:
            self._shared.replies.detach(self.replies, self)
        self.finished.set()
        self._ended(self)

    def take_over(self) -> None:
        """A new connection of the same client session came: this one ends (its
        running requests still finish, and their replies are kept for the new one)."""
        log.info("%s: the client session continues on a new connection: closed", self.peer)
        if self.dispatch is not None:
            self.dispatch.superseded = True  # what it still had buffered is not run
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _take_over(old: object) -> None:
    """End the connection the session had, and wait (a while) until it let go of its
    locks: what the new one asks for again must not find them still held."""
    assert isinstance(old, Session)
    old.take_over()
    old.finished.wait(TAKE_OVER_WAIT)
