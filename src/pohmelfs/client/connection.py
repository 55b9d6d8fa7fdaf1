"""One client connection to one server: transactions in flight, matched by id.

Any number of threads send requests on one socket (pipelined). A dedicated
receive thread reads every reply; for a read it receives the data straight
into the memory the caller passed, while the caller sleeps on its
transaction, with no intermediate copy (the seed's "copy from another thread
into the sleeping caller's buffer").
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import errors
from .. import protocol as p
from ..protocol import Command, Message, ProtocolError
from ..protocol.exchange import ClientExchange, DataFor, Notified, Replied, StillWorking
from ..protocol.frames import packed_payload_len
from ..security.config import ClientSecurity
from ..security.hello import AuthFailed, ClientHandshake, Declined
from ..security.tags import Sealer, TagError, Verifier
from ..wire import FrameWriter, PeerClosed, SocketReader, send_parts, shutdown
from .stats import ServerStats

log = logging.getLogger("pohmelfs.client")


_SERIALS = itertools.count(1)

# The reply recorded for a READ whose data went straight into the caller's buffer.
_READ_DONE = p.reply(p.request(Command.READ, 0), data=b"")


Sink = Callable[[p.Header, SocketReader], None]


class Transaction:
    """A request in flight.

    A caller either sleeps on it (``wait``) or gives a ``callback`` that the
    receive thread runs on completion, success or failure. Read data goes
    straight into ``into`` (a caller's buffer), or is handed with the socket
    to ``sink``, which must consume exactly the payload (the FUSE adapter
    forwards it to the kernel from there).
    """

    __slots__ = ("xid", "cmd", "done", "into", "sink", "callback", "deadline", "nbytes",
                 "reply", "frames", "error", "check", "sent_at", "via")  # fmt: skip

    def __init__(self, xid: int, cmd: Command, into: memoryview | None, sink: Sink | None,
                 callback: Callable[[Transaction], None] | None) -> None:  # fmt: skip
        self.xid = xid
        self.cmd = cmd
        self.done = threading.Lock()
        self.done.acquire()
        self.into = into
        self.sink = sink
        self.callback = callback
        self.deadline = 0.0
        self.nbytes = 0
        self.reply: Message | None = None
        self.frames: list[Message] = []
        self.error: BaseException | None = None
        self.check: Callable[[], None] | None = None  # of the tag of what ``into`` got
        self.sent_at = 0.0
        self.via: Any = None  # a group's: the connection it went on, if not the lock server's

    def complete(self) -> None:
        if self.callback is None:
            self.done.release()
            return
        try:
            self.callback(self)
        except Exception:
            log.exception("transaction callback failed")


class Connection:
    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_payload: int = p.DEFAULT_MAX_PAYLOAD,
        name: bytes = b"pohmelfs-client",
        notices: int = 0,
        on_notify: Callable[[Connection, Message], None] | None = None,
        on_close: Callable[[Connection], None] | None = None,
        before_request: Callable[[], None] | None = None,
        security: ClientSecurity | None = None,
        session: bytes | None = None,
        xids: Iterator[int] | None = None,
        stats: ServerStats | None = None,
        unversioned: bool = False,
    ) -> None:
        """``session``: the client session this connection carries on (its own if
        None); ``xids``: the session's request ids, shared by its connections;
        ``unversioned``: its changes leave versions alone (``Flag.UNVERSIONED``)."""
        self.address = address
        self.timeout = timeout
        self.stats = stats if stats is not None else ServerStats()
        self.serial = next(_SERIALS)  # unlike id(), never reused by a later connection
        host, _, port = address.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=connect_timeout)
        except (OSError, ValueError) as e:
            raise errors.unreachable_error(address, str(e)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        security = security or ClientSecurity()
        if security.tls is not None:
            try:
                sock = security.tls.wrap_socket(sock, server_hostname=security.server_name
                                                or host.strip("[]"))  # fmt: skip
            except ssl.SSLCertVerificationError as e:
                sock.close()
                raise errors.auth_error(address, f"TLS: {e.verify_message}") from None
            except (OSError, ssl.SSLError) as e:
                sock.close()
                why = f"TLS handshake failed: {getattr(e, 'reason', None) or e}"
                hint = " (is the server serving TLS, with a certificate of the same CA?)"
                raise errors.auth_error(address, why + hint) from None
        self.sock = sock
        self.reader = SocketReader(sock)
        self.writer = FrameWriter(sock)
        self._last_send = time.monotonic()
        self._lock = threading.Lock()  # around the exchange
        self._exchange = ClientExchange[Transaction](max_payload, xids, unversioned)
        self.session = session if session is not None else os.urandom(p.SESSION_SIZE)
        self.resumed = False  # the server knew the session (and kept its replies)
        self._on_notify = on_notify
        self._on_close = on_close
        # Run before sending any request but a WRITE (the client's held writes).
        self._before_request = before_request
        self._sweeper: threading.Thread | None = None
        self._closing = threading.Event()
        self.closed = False
        self.close_reason = ""
        self.idle = 0.0  # the server closes a connection silent this long (0: never)
        try:
            self._handshake(max_payload, name, notices, connect_timeout, security)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self.stats.connections += 1  # (made: connected, and the handshake done)
        self._receiver = threading.Thread(
            target=self._receive_loop, daemon=True, name=f"pohmelfs-recv-{address}"
        )
        self._receiver.start()
        if self.idle:
            self._start_sweeper()

    def _handshake(self, max_payload: int, name: bytes, notices: int, timeout: float,
                   security: ClientSecurity) -> None:  # fmt: skip
        """The handshake (``security/hello.py``) on the socket, before anything else."""
        # While a request waits for other clients, the server says so this often (PENDING),
        # well within our time-out: a time-out then means the server is silent.
        keepalive = int(min(max(self.timeout / 4, 0.05), 2.0) * 1000)
        try:
            shake = ClientHandshake(security, max_payload, keepalive, notices, name,
                                    self.session)  # fmt: skip
            send_parts(self.sock, shake.hello())
            send_parts(self.sock, shake.challenged(*self._handshake_frame()))
            if shake.receive_keys is not None:
                self.reader.verifier = Verifier(shake.receive_keys)
            welcome = shake.welcomed(*self._handshake_frame())
            if shake.send_keys is not None:
                self.writer.sealer = Sealer(shake.send_keys)
        except TimeoutError:
            raise errors.timeout_error(self.address, timeout) from None
        except AuthFailed as e:
            raise errors.auth_error(self.address, str(e)) from None
        except TagError:
            raise errors.auth_error(self.address, "the server did not prove the key") from None
        except Declined as e:
            # (Untagged, before the server proved anything: only the two refusals a
            # server makes are believed as such.)
            if e.status == errno.EACCES:
                raise errors.auth_error(self.address, e.text) from None
            if e.status == errno.EPROTONOSUPPORT:
                raise errors.remote_error(e.status, self.address, e.text) from None
            raise errors.unreachable_error(self.address, f"handshake failed: {e.text}") from None
        except ssl.SSLError as e:  # TLS 1.3: a refused certificate shows at the first read
            raise errors.auth_error(self.address, "authentication failed: the server "
                                    f"refused this certificate ({e.reason})") from None  # fmt: skip
        except (OSError, ProtocolError) as e:
            raise errors.unreachable_error(self.address, f"handshake failed: {e}") from None
        self._exchange.max_payload = welcome.max_payload
        self.idle = welcome.idle
        self.caps = welcome.caps
        self.fsid: int = welcome.fsid
        self.statfs: p.StatFs = welcome.statfs
        self.resumed = welcome.resumed

    def _handshake_frame(self) -> tuple[p.Header, bytes]:
        header = self.reader.read_header(8 << 10, untagged_ok=True)
        payload = bytes(self.reader.read_view(header.payload_len))
        self.reader.end_frame()
        return header, payload

    # --- sending and waiting -----------------------------------------------

    def start(
        self,
        cmd: Command,
        *,
        into: memoryview | None = None,
        sink: Sink | None = None,
        callback: Callable[[Transaction], None] | None = None,
        forever: bool = False,
        behind: bool = False,
        oid: int = 0,
        offset: int = 0,
        length: int = 0,
        xid: int | None = None,
        resent: bool = False,
        fids: dict[str, bytes] | None = None,
        **fields: Any,
    ) -> Transaction:
        """Send a request and return its transaction without waiting. ``behind``: our
        caller will not wait for it (a write sent behind, a close): the server applies
        every later request of this connection after it. ``xid``: the request's id
        if it has one already, ``resent``: it was sent before on a lost connection
        of this session (``resend.py``). ``fids``: for an OPEN, the file's identity on
        each server (a reopen): only this server's will do (none: any file)."""
        if fids is not None:
            fields["fid"] = fids.get(self.address, p.ANY_FILE)
        if cmd is not Command.WRITE:
            self.before_request()
        if xid is None:
            xid = self._exchange.next_xid()
        try:
            parts = self._exchange.encode(cmd, xid, oid=oid, offset=offset, length=length,
                                          behind=behind, resent=resent, **fields)  # fmt: skip
        except ProtocolError as e:
            raise OSError(errno.EINVAL, f"cannot encode {cmd.name}: {e}") from None
        except ValueError as e:  # the server would have to drop the connection
            raise OSError(errno.ENAMETOOLONG if "path" in fields else errno.E2BIG, str(e)) from None
        tx = Transaction(xid, cmd, into, sink, callback)
        # ``forever``: a request that may rightly wait (a blocking lock); it still fails
        # if the connection dies. Otherwise each PENDING for it moves the deadline.
        tx.deadline = float("inf") if forever else time.monotonic() + self.timeout
        with self._lock:
            if self.closed:
                raise errors.connection_error(self.address, self.close_reason)
            self._exchange.sent(xid, cmd, tx, into is not None or sink is not None)
            if callback is not None and self._sweeper is None:
                self._start_sweeper()
            self.stats.requests += 1
            self.stats.bytes_out += packed_payload_len(parts[0])
            tx.sent_at = self._last_send = time.monotonic()
        try:
            self.writer.send(parts)
        except OSError as e:
            self._fail(f"send failed: {e}")
        return tx

    def before_request(self) -> None:
        """What must go before any request but a WRITE (this client's held writes), if
        any: run here unless on the receive thread (it must not wait)."""
        if self._before_request is not None and threading.current_thread() is not self._receiver:
            self._before_request()

    def fids(self, oid: int) -> dict[str, bytes]:
        """The identities on other servers of the file open as ``oid``: none (one server)."""
        return {}

    def next_xid(self) -> int:
        """An id for a request of this connection's session."""
        return self._exchange.next_xid()

    @property
    def members(self) -> frozenset[str]:
        """The servers a request sent here went to (this one)."""
        return frozenset((self.address,))

    @property
    def max_payload(self) -> int:
        """The largest payload the server takes (its HELLO answer said)."""
        return self._exchange.max_payload

    def in_flight(self) -> int:
        """How many requests await their replies."""
        return len(self._exchange)

    def wait(self, tx: Transaction, path: Any = None, path2: Any = None,
             forever: bool = False) -> Message:  # fmt: skip
        """Wait for a transaction; raise its error as an OSError naming ``path``.

        ``forever`` waits without the timeout (blocking locks), until the reply
        comes or the connection dies."""
        if forever:
            tx.done.acquire()
        elif not self._wait_deadline(tx):
            with self._lock:
                mine = self._exchange.abandon(tx.xid, tx)
            if mine:
                raise errors.timeout_error(self.address, self.timeout, path)
            # The receive thread is writing into the caller's buffer: it must
            # finish (or the connection must die) before the buffer is returned.
            if not tx.done.acquire(timeout=self.timeout):
                self._fail("timed out in the middle of a reply")
                tx.done.acquire()
        return self.result(tx, path, path2)

    def result(self, tx: Transaction, path: Any = None, path2: Any = None) -> Message:
        """The reply of a completed transaction; its error as an OSError naming ``path``."""
        check, tx.check = tx.check, None
        if check is not None and tx.error is None:
            try:
                check()
            except TagError as e:
                error = self._tag_failed(e)
                self._fail(f"{e}: closed")
                raise OSError(error.errno, error.strerror, path) from None
        if tx.error is not None:
            err = tx.error
            if isinstance(err, OSError) and path is not None and err.filename is None:
                err = OSError(err.errno, err.strerror, path)
            raise err
        reply = tx.reply
        assert reply is not None
        if reply.status:
            detail = bytes(reply["data"]).decode(errors="replace")
            raise errors.remote_error(reply.status, self.address, detail, path, path2)
        return reply

    @staticmethod
    def _wait_deadline(tx: Transaction) -> bool:
        """Wait for ``tx`` until its deadline, which PENDING frames may move; False
        once the server has been silent about it for the whole time-out."""
        while True:
            left = tx.deadline - time.monotonic()
            if left <= 0:
                return tx.done.acquire(blocking=False)
            if tx.done.acquire(timeout=left):
                return True

    def answer(self, notification: Message) -> None:
        """Reply to a server-initiated message (e.g. once a REVOKE has been carried out)."""
        self._last_send = time.monotonic()
        self.writer.send(self._exchange.answer(notification))

    def cancel(self, tx: Transaction) -> None:
        """Give up on a transaction; returns once its buffer is no longer written to."""
        with self._lock:
            if self._exchange.abandon(tx.xid, tx):
                return
        try:
            self.wait(tx)
        except OSError:
            pass

    def call(
        self, cmd: Command, shown: Any = None, shown2: Any = None, /, **kwargs: Any
    ) -> Message:
        """Send a request and wait for its reply; errors name ``shown``/``shown2``."""
        return self.wait(self.start(cmd, **kwargs), shown, shown2)

    def stream(self, tx: Transaction, path: Any = None) -> list[Message]:
        """Wait for a streamed (MORE) reply; returns every frame, last one included."""
        last = self.wait(tx, path)
        return [*tx.frames, last]

    # --- receiving ---------------------------------------------------------------

    def _receive_loop(self) -> None:
        reader, exchange, lock, stats = self.reader, self._exchange, self._lock, self.stats
        current: Transaction | None = None  # being received when an error strikes
        try:
            while True:
                header = reader.read_header(self.max_payload)
                with lock:
                    event = exchange.receive(header)
                if isinstance(event, DataFor):
                    current = tx = event.pending
                    if tx.sink is not None:
                        tx.sink(header, reader)  # (it checks the tag before it hands data on)
                    else:
                        assert tx.into is not None
                        if event.n > len(tx.into):
                            raise ProtocolError("read reply longer than requested")
                        # Checked by the caller (``result``) while this thread
                        # receives the next reply.
                        placed = tx.into[: event.n]
                        reader.read_into(placed, check=False)
                        tx.check = reader.end_frame_later(placed)
                        del placed  # hold no view of the caller's buffer
                    reader.end_frame()
                    tx.nbytes = event.n
                    tx.reply = _READ_DONE
                    tx.into = None  # hold no reference to the caller's buffer
                elif isinstance(event, Replied):
                    current = tx = event.pending
                    payload = bytes(reader.read_view(header.payload_len))
                    reader.end_frame()
                    msg = p.decode_payload(header, payload)
                    if event.more:  # a frame of a streamed answer: the server is at it
                        tx.frames.append(msg)
                        stats.bytes_in += header.payload_len
                        if tx.deadline != float("inf"):
                            tx.deadline = time.monotonic() + self.timeout
                        current = None
                        continue
                    tx.reply = msg
                elif isinstance(event, Notified):
                    payload = bytes(reader.read_view(header.payload_len))
                    reader.end_frame()
                    msg = p.decode_payload(header, payload)
                    if self._on_notify is not None:
                        self._on_notify(self, msg)  # must not block: we are the reader
                    continue
                else:  # PENDING (still at work on it: wait on), or nobody waits any more
                    reader.skip(header.payload_len)
                    reader.end_frame()
                    if isinstance(event, StillWorking):
                        waiting = event.pending
                        if waiting is not None and waiting.deadline != float("inf"):
                            waiting.deadline = time.monotonic() + self.timeout
                    continue
                current = None
                stats.answer(header.payload_len, time.monotonic() - tx.sent_at,
                             bool(header.status))  # fmt: skip
                tx.complete()
                del tx
        except PeerClosed:
            why = "server closed the connection"
        except TagError as e:
            why = f"{e}: closed"
            if current is not None and current.reply is None:
                current.error = self._tag_failed(e)
        except (OSError, ProtocolError) as e:
            why = str(e)
        except BaseException as e:  # never leave callers waiting
            log.exception("receive thread failed")
            why = f"receive thread failed: {e}"
        self._fail(why)
        if current is not None and current.reply is None:
            if current.error is None:
                current.error = errors.connection_error(self.address, why)
            current.complete()

    def _tag_failed(self, e: TagError) -> OSError:
        """Logged; the error of the call whose reply failed its tag."""
        log.error("connection to %s: %s: closed", self.address, e)
        return OSError(errno.EIO, f"{self.address}: reply {e}: closed")

    def lose(self, why: str) -> None:
        """Give the connection up as lost (``why``): what is in flight fails, and
        the loss is told as if the server had closed it."""
        self._fail(why)

    def _fail(self, why: str) -> None:
        """Mark the connection dead and fail every transaction in flight."""
        with self._lock:
            first = not self.closed
            if first:
                self.closed = True
                self.close_reason = why
                log.info("connection to %s lost: %s", self.address, why)
            pending = self._exchange.take_all()
        self._closing.set()
        shutdown(self.sock)
        for tx in pending:
            tx.error = errors.connection_error(self.address, why)
            tx.complete()
        if first and self._on_close is not None:
            # The server dropped our cache locks with the connection. Told on a thread
            # of its own: dropping cached pages may wait for a READ this thread
            # (the receiver, or a sender whose send failed) has yet to finish.
            threading.Thread(target=self._on_close, args=(self,), daemon=True,
                             name=f"pohmelfs-lost-{self.address}").start()  # fmt: skip

    def _start_sweeper(self) -> None:
        self._sweeper = threading.Thread(
            target=self._sweep_loop, daemon=True, name=f"pohmelfs-sweep-{self.address}"
        )
        self._sweeper.start()

    def _sweep_loop(self) -> None:
        """Fail callback transactions that outlive the timeout (nobody waits on them),
        and PING a connection that has sent nothing for a third of the server's idle
        time, so that the server keeps it."""
        period = min(max(self.timeout / 4, 0.05), 1.0)
        while not self._closing.wait(period):
            now = time.monotonic()
            if self.idle and now - self._last_send > self.idle / 3:
                try:
                    self.start(Command.PING, callback=lambda tx: None)
                except OSError:
                    pass
            with self._lock:
                expired = [
                    tx
                    for tx in self._exchange.in_flight()
                    if tx.callback is not None
                    and tx.deadline < now
                    and self._exchange.abandon(tx.xid, tx)
                ]
            for tx in expired:
                tx.error = errors.timeout_error(self.address, self.timeout)
                tx.complete()

    def close(self) -> None:
        self._fail("closed by client")
        if threading.current_thread() is not self._receiver:
            self._receiver.join(5)
        self.sock.close()
