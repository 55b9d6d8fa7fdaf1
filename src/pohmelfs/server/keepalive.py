"""Interim answers for requests that wait for other clients.

A request that must wait for another client's revocation (or the end of its
lease) is not lost or stuck: while it waits, the server sends its requester a
PENDING frame for it every ``interval`` (the keep-alive the client asked for at
HELLO), and the client's time-out starts again with each. So a client's time-out
measures the server's silence, never another client's slowness. One thread
serves every session; it never blocks on a client that does not read.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass

from ..protocol.exchange import pending_frame
from ..wire import FrameWriter, send_parts, shutdown

log = logging.getLogger("pohmelfs.server")


@dataclass(eq=False)
class _Waiting:
    writer: FrameWriter
    cmd: int
    xid: int
    interval: float
    due: float


class Keepalive:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[tuple[int, int], _Waiting] = {}  # (session id, xid) -> request
        self._thread: threading.Thread | None = None
        self._closed = False

    def waiting(self, sid: int, writer: FrameWriter, cmd: int, xid: int,
                interval: float) -> None:  # fmt: skip
        """Request ``xid`` of session ``sid`` waits from now on (until ``done``)."""
        entry = _Waiting(writer, cmd, xid, interval, time.monotonic() + interval)
        with self._cond:
            self._waiting[sid, xid] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="pohmelfs-keepalive")  # fmt: skip
                self._thread.start()
            self._cond.notify()

    def done(self, sid: int, xid: int) -> None:
        with self._cond:
            self._waiting.pop((sid, xid), None)

    def forget_session(self, sid: int) -> None:
        with self._cond:
            for key in [k for k in self._waiting if k[0] == sid]:
                del self._waiting[key]

    def close(self) -> None:
        """The server stops: the thread ends."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _loop(self) -> None:
        while not self._closed:
            with self._cond:
                now = time.monotonic()
                due = [w for w in self._waiting.values() if w.due <= now]
                for w in due:
                    w.due = now + w.interval
                nearest = min((w.due for w in self._waiting.values()), default=None)
            for w in due:
                _send_pending(w)
            with self._cond:
                if not due and not self._closed:
                    self._cond.wait(None if nearest is None else max(nearest - now, 0.001))


def _send_pending(w: _Waiting) -> None:
    """Send one PENDING frame without ever waiting for the client: if another reply
    is being sent, or the client's buffer is full, it is skipped this time. A frame
    that went only in part is finished by a thread of its own, which keeps the
    connection's send lock until then (a frame must never be cut), so this thread
    goes on with everyone else."""
    frame = pending_frame(w.cmd, w.xid)
    try:
        rest = w.writer.try_send([frame])
    except OSError as e:
        _log_send_error(e)
        return
    if isinstance(rest, memoryview):
        threading.Thread(target=_finish, args=(w, rest), daemon=True,
                         name="pohmelfs-keepalive-rest").start()  # fmt: skip


def _finish(w: _Waiting, rest: memoryview) -> None:
    """The rest of a PENDING frame (with the send lock, which it lets go): at most the
    connection's send time-out, after which a client that takes nothing is cut off."""
    try:
        send_parts(w.writer.sock, [rest])
    except OSError as e:
        _log_send_error(e)
        shutdown(w.writer.sock)
    finally:
        w.writer.lock.release()


def _log_send_error(e: OSError) -> None:
    if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
        log.debug("cannot send a keep-alive: %s", e)
