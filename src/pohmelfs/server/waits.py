"""Where a session's requests wait for other clients, and the bounds on them.

A request that must wait (for a revocation, a lock, RESIZE answers) never waits
on the connection's reader, which must go on taking the answers it waits for. It
runs on a thread of its own, or, if its client did not wait for it (BEHIND), in
the session's queue (one thread, in order, which every later request of the
connection then joins), or, if it is a write-back that a revocation waits for,
on the session's lane (one thread, past the queue). Every waiting request keeps
its data, counts against the session's and the server's bounds, and its
requester hears PENDING meanwhile.
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..protocol import Message
from ..wire import FrameWriter
from . import linux
from .handles import FileKey, Handle, HandleTable
from .replies import reply_for
from .replycache import SessionReplies
from .shared import Shared

log = logging.getLogger("pohmelfs.server")

MAX_WAITING = 1024  # requests of a session that wait for other clients at once
MAX_WAITING_BYTES = 256 << 20  # and the data they keep

Work = Callable[[], Message | None]


class Waits:
    def __init__(self, sid: int, peer: str, shared: Shared, handles: HandleTable,
                 writer: FrameWriter, keepalive: float,
                 replies: SessionReplies) -> None:  # fmt: skip
        self.sid, self.peer = sid, peer
        self._session_replies = replies  # every reply sent from here is shown to it first
        self._shared = shared
        self._handles = handles
        self._writer = writer
        self.keepalive = keepalive  # seconds between PENDING frames (asked at HELLO)
        self._lock = threading.Lock()
        self._parked = self._parked_bytes = 0
        self._queued = 0
        self._queued_keys = collections.Counter[FileKey]()  # files of the requests queued
        self._queue_thread: threading.Thread | None = None
        self._lane_thread: threading.Thread | None = None
        self._queue = ThreadPoolExecutor(1, f"pohmelfs-queue-{peer}", self._queue_started)
        self._lane = ThreadPoolExecutor(1, f"pohmelfs-lane-{peer}", self._lane_started)
        self._replies = ThreadPoolExecutor(1, thread_name_prefix=f"pohmelfs-replies-{peer}")
        self.closed = False

    def _queue_started(self) -> None:
        linux.private_umask_zero()
        self._queue_thread = threading.current_thread()

    def _lane_started(self) -> None:
        linux.private_umask_zero()
        self._lane_thread = threading.current_thread()

    @property
    def queued(self) -> bool:
        """Is anything in the queue (so that a new request must join it)?"""
        return bool(self._queued)

    def queued_on(self, key: FileKey) -> bool:
        return bool(self._queued_keys.get(key))

    def in_queue(self) -> bool:
        """Is this the session's queue thread, or its lane for write-backs?"""
        me = threading.current_thread()
        return me is self._queue_thread or me is self._lane_thread

    def park(self, m: Message, h: Handle | None) -> None:
        """``m`` is to wait for other clients: it keeps its data (the reader's buffer
        is reused), its requester hears PENDING meanwhile, and it counts against the
        session's bounds (MAX_WAITING requests, MAX_WAITING_BYTES of data): beyond
        them it fails with EAGAIN instead, and ``h`` is let go. ``unpark`` ends it."""
        data = m.fields.get("data")
        size = len(data) if isinstance(data, bytes | bytearray | memoryview) else 0
        with self._lock:
            mine = self._parked >= MAX_WAITING or self._parked_bytes + size > MAX_WAITING_BYTES
            if mine or not self._shared.waiting.take():
                if h is not None:
                    self._handles.release(h)
                whose = "of this connection" if mine else "on this server"
                raise OSError(errno.EAGAIN, f"too many requests {whose} wait for other "
                              "clients")  # fmt: skip
            self._parked += 1
            self._parked_bytes += size
        if isinstance(data, memoryview):
            m.fields["data"] = bytes(data)
        self._shared.keepalive.waiting(self.sid, self._writer, m.cmd, m.xid, self.keepalive)

    def unpark(self, m: Message) -> None:
        self._shared.keepalive.done(self.sid, m.xid)
        data = m.fields.get("data")
        self._shared.waiting.give()
        with self._lock:
            self._parked -= 1
            self._parked_bytes -= len(data) if isinstance(data, bytes | bytearray) else 0

    def answer_later(self, m: Message, h: Handle | None, work: Work) -> None:
        """Run a request that may wait long on a thread of its own, then reply."""
        name = f"pohmelfs-{m.cmd.name.lower()}-{self.peer}"
        self.park(m, h)
        threading.Thread(target=self._reply_to, args=(m, h, work), name=name, daemon=True).start()

    def enqueue(self, m: Message, h: Handle | None, work: Work) -> None:
        """Run work after everything already queued for this session, then reply;
        while anything is queued, the reader queues every request behind it."""
        self.park(m, h)
        target = h if h is not None else self._handles.get(m.oid) if m.oid else None
        key = None if target is None else target.key
        with self._lock:
            self._queued += 1
            if key is not None:
                self._queued_keys[key] += 1
        self._queue.submit(self._reply_to, m, h, work, True, key)

    def to_lane(self, m: Message, h: Handle | None, work: Work, parked: bool = False) -> None:
        """Run a write-back that a revocation of this session's lock waits for, and
        that must wait itself (for RESIZE answers): on the session's lane, one
        thread, so write-backs stay in the order sent, past the queue (whose
        requests may wait for the very client that waits for this answer).
        ``parked``: ``m`` was parked already."""
        if not parked:
            self.park(m, h)
        self._lane.submit(self._reply_to, m, h, work)

    def send_later(self, out: Message) -> None:
        """Send a reply from the session's own thread (for a lock granted by
        another session, which must not wait for a client that does not read)."""
        self._replies.submit(self._send_quietly, out)

    def _send_quietly(self, out: Message) -> None:
        try:
            self._writer.send(out.encode())
        except OSError as e:
            log.debug("%s: cannot send reply: %s", self.peer, e)

    def _reply_to(self, m: Message, h: Handle | None, work: Work, queued: bool = False,
                  key: FileKey | None = None) -> None:  # fmt: skip
        try:
            if "cred" in m.fields:
                self._shared.export.act_as(m["cred"])
            # A connection gone meanwhile: nobody to answer (handles still released).
            skipped = queued and self.closed
            if skipped:
                self._session_replies.dropped(m.xid)  # never run: a resend runs it
            out = None if skipped else work()
        except Exception as e:  # a bug must cost one request, not the session
            out = reply_for(m, e, self.peer)
        finally:
            self.unpark(m)
            if h is not None:
                self._handles.release(h)
            if queued:
                with self._lock:
                    self._queued -= 1
                    if key is not None:
                        self._queued_keys[key] -= 1
                        if self._queued_keys[key] <= 0:
                            del self._queued_keys[key]
        try:
            if out is not None:
                self._session_replies.answered(out)
                self._writer.send(out.encode())
        except OSError:
            pass

    def close(self) -> None:
        """What is queued runs, skips its work, and lets its handles go."""
        self.closed = True
        self._shared.keepalive.forget_session(self.sid)
        self._queue.shutdown(wait=False)
        self._lane.shutdown(wait=False)
        self._replies.shutdown(wait=False)
