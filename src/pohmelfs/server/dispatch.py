"""An admitted connection's frames: each read, checked, and its request run where
it belongs. Quick requests run inline, in arrival order; requests that may take
long (fsync, listing, tree removal, path creation) go to the server's shared
pool, so they do not hold up the rest of the connection; requests that must wait
for other clients go where ``waits.Waits`` says. Replies are matched to requests
by transaction id, so they may leave in any order. A change resent by its
client session after a lost connection is answered from ``replycache.py`` if it
ran before."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable

from .. import protocol as p
from ..protocol import Command, Header, Message, ProtocolError
from ..protocol.exchange import Answered, Request, error_frame
from ..security.hello import Admitted
from ..wire import FrameWriter, PeerClosed, SocketReader
from .cachepolicy import CachePolicy
from .context import Context
from .guard import RequestGuard
from .handles import HandleTable
from .metrics import MeteredWriter
from .notifier import Notifier
from .replies import reply_for
from .replycache import FORGOTTEN, Replay, Running, SessionReplies, forgotten_reply
from .requests import Requests
from .shared import Shared
from .waits import Waits

log = logging.getLogger("pohmelfs.server")

MAX_SLOW = 64  # a session's requests queued for or running in the shared pool
KEEP_RESIDENT = 1 << 20  # of a connection's write buffer, between large writes
SMALL_PAYLOAD = 256 << 10  # received into the reader's buffer; larger ones into _wbuf
SLOW_COMMANDS = frozenset({Command.FSYNC, Command.READDIR, Command.RMTREE, Command.MAKEDIRS})
RUNNING_WAIT = 600.0  # seconds a resend waits for its first run (from a lost connection)
REOPEN = ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)


class Dispatch:
    def __init__(self, sid: int, peer: str, shared: Shared, reader: SocketReader,
                 writer: FrameWriter, admitted: Admitted,
                 replies: SessionReplies) -> None:  # fmt: skip
        self.sid, self.peer = sid, peer
        self.replies = replies
        self.superseded = False  # a new connection of the client session took over
        self._shared = shared
        self.reader, self.writer = reader, writer
        self.max_payload = admitted.max_payload
        self.handles = HandleTable(sid, shared.writers)
        self.notifier = Notifier(self.send, self.handles.key_of)
        self.waits = Waits(sid, peer, shared, self.handles, writer, admitted.keepalive,
                           replies)  # fmt: skip
        self.policy = CachePolicy(sid, shared, self.handles, self.notifier, self.waits,
                                  replies.session)  # fmt: skip
        guard = RequestGuard(admitted.policy, shared.allow_setuid)
        self.guard = guard
        self.requests = Requests(Context(sid, peer, shared, self.handles, self.waits, self.policy,
                                         guard, writer, admitted.max_payload,
                                         admitted.notices))  # fmt: skip
        self._wmap: mmap.mmap | None = None  # pages are used only as data arrives
        self._wbuf: memoryview | None = None
        self._slow = 0  # requests of this session in the shared pool (MAX_SLOW)
        self._slow_lock = threading.Lock()
        shared.notifiers.add(sid, self.notifier)

    def serve_one(self) -> None:
        try:
            header = self.reader.read_header(self.max_payload)
        except ProtocolError as e:
            if e.skip is None:
                raise
            cmd, xid, plen = e.skip
            self.reader.skip(plen)
            self.reader.end_frame()
            self._send_raw_error(cmd, xid, errno.EPROTO, str(e))
            return
        if self.superseded:
            raise PeerClosed("a new connection of the session took over")
        event = self.notifier.receive(header)
        if not isinstance(event, Request):
            self.reader.skip(header.payload_len)
            self.reader.end_frame()
            if isinstance(event, Answered):  # what waited for the answer goes on
                if event.notification is not None:  # (None: an answer to none of ours)
                    event.notification()
            else:
                log.warning("%s: %s", self.peer, event.why)
            return
        payload = self._read_payload(header)
        self.reader.end_frame()  # nothing of a frame is used before its tag is checked
        try:
            msg = p.decode_payload(header, payload)
        except ProtocolError as e:
            self.send(reply_for(header, e))
            return
        if isinstance(self.writer, MeteredWriter):
            self.writer.received(msg.cmd, msg.xid, len(payload))
        try:
            self.guard.admit(msg)
        except OSError as e:
            self.send(reply_for(msg, e))
            return
        ran = self.replies.begin(msg, event.resent)
        try:
            if ran is None:
                self._run(msg, header)
            elif isinstance(ran, Running):
                self.waits.answer_later(msg, None, lambda: self._after_first_run(msg, ran))
            else:
                self.execute(msg, lambda: self._answer_again(msg, ran))
        except OSError as e:  # it could not wait (the bounds): it never ran
            if ran is None:
                self.replies.dropped(msg.xid)
            if isinstance(e, ConnectionError):
                raise
            self.send(reply_for(msg, e))

    def _answer_again(self, msg: Message, ran: Replay | str) -> Message | None:
        """The answer to a resent change that ran before: its first reply; for an open
        that created or truncated the file, that very file opened again (the handle
        went with the lost connection), without creating or truncating it again."""
        if not isinstance(ran, Replay):
            assert ran == FORGOTTEN
            return forgotten_reply(msg)
        first = ran.reply
        if first.cmd is not msg.cmd:  # an id the client used for another request
            why = f"request {msg.xid} of this session was a {first.cmd.name}"
            return reply_for(msg, OSError(errno.EINVAL, why))
        if msg.cmd is not Command.OPEN or first.status:
            return first
        fields = dict(msg.fields, flags=msg["flags"] & REOPEN, fid=first["fid"])
        again = Message(msg.cmd, msg.xid, msg.flags & ~p.FLAG_RESENT, 0, msg.oid, msg.offset,
                        msg.length, fields)  # fmt: skip
        return self.requests.handle(again)

    def _after_first_run(self, msg: Message, running: Running) -> Message | None:
        """A resent change still running from the lost connection: its answer once it
        ends (or, if it never ran, this run)."""
        deadline = time.monotonic() + RUNNING_WAIT
        while not running.done.wait(1.0):
            if self.waits.closed or time.monotonic() > deadline:
                why = "the first run of this resent request has not ended"
                self.replies.not_kept(msg.xid)  # (the first run's answer will be)
                return reply_for(msg, OSError(errno.EAGAIN, why))
        ran = self.replies.begin(msg, True)
        if ran is None:
            return self.requests.handle(msg)
        if isinstance(ran, Running):
            self.replies.not_kept(msg.xid)
            return reply_for(msg, OSError(errno.EAGAIN, "resent again while it runs"))
        return self._answer_again(msg, ran)

    def _run(self, msg: Message, header: Header) -> None:
        waits, policy, requests = self.waits, self.policy, self.requests
        if waits.queued and not policy.answering(msg):
            # A request sent behind waits for others' caches: stay behind it.
            waits.enqueue(msg, None, lambda: requests.handle(msg))
        elif key := policy.names_ahead_key(msg):
            settle = lambda: policy.settle_names(key, lambda: requests.handle(msg))  # noqa: E731
            if msg.flags & p.FLAG_BEHIND:
                waits.enqueue(msg, None, settle)
            else:
                waits.answer_later(msg, None, settle)
        elif header.cmd in SLOW_COMMANDS:
            with self._slow_lock:
                full = self._slow >= MAX_SLOW
                self._slow += not full
            if full:  # the shared pool's queue must not grow on one client's word
                why = "too many slow requests of this connection at once"
                self.send(reply_for(msg, OSError(errno.EAGAIN, why)))
                return
            # Slow, not waiting for anyone: the client hears PENDING all the same, so that
            # a long fsync or tree removal is not taken for a silent server.
            self._shared.keepalive.waiting(self.sid, self.writer, msg.cmd, msg.xid,
                                           self.waits.keepalive)  # fmt: skip
            self._shared.pool.submit(self._execute_slow, msg)
        else:
            self.execute(msg)
            if header.payload_len > KEEP_RESIDENT and self._wmap is not None:
                # Give back what a large write used (its data was applied or copied).
                self._wmap.madvise(mmap.MADV_DONTNEED, KEEP_RESIDENT,
                                   header.payload_len - KEEP_RESIDENT)  # fmt: skip

    def _read_payload(self, header: Header) -> memoryview:
        n = header.payload_len
        if n <= SMALL_PAYLOAD:
            return self.reader.read_view(n)
        if self._wbuf is None or len(self._wbuf) < n:
            self._wmap = mmap.mmap(-1, self.max_payload)
            self._wbuf = memoryview(self._wmap)
        view = self._wbuf[:n]
        self.reader.read_into(view)
        return view

    def _execute_slow(self, msg: Message) -> None:
        try:
            self.execute(msg)
        finally:
            self._shared.keepalive.done(self.sid, msg.xid)
            with self._slow_lock:
                self._slow -= 1

    def execute(self, msg: Message, work: Callable[[], Message | None] | None = None) -> None:
        """Run one request (or ``work`` for it) and send its reply; never raises for the
        request's faults."""
        try:
            if "cred" in msg.fields:
                self._shared.export.act_as(msg["cred"])
            out = self.requests.handle(msg) if work is None else work()
        except ConnectionError:
            raise  # the connection broke in the middle of a reply: end the session
        except Exception as e:  # a bug must cost one request, not the server
            out = reply_for(msg, e, self.peer)
        if out is not None:
            try:
                self.send(out)
            except OSError as e:
                log.debug("%s: cannot send reply: %s", self.peer, e)

    def send(self, msg: Message) -> None:
        self.replies.answered(msg)  # (kept before it is sent: the send may fail)
        self.writer.send(msg.encode())

    def _send_raw_error(self, cmd: int, xid: int, code: int, text: str) -> None:
        self.writer.send(error_frame(cmd, xid, code, text))

    def close_work(self) -> None:
        """The connection ends: no more work (what is queued runs, skips its work,
        and lets its handles go), no more locks. ``close_files`` after the socket."""
        self.notifier.closed = True  # nobody asks it for anything from now on
        self._wbuf = None
        if self._wmap is not None:
            try:
                self._wmap.close()  # its memory goes back now, not at some collection
            except BufferError:
                pass  # still being received into (a close from another thread)
        self.waits.close()
        self._shared.locks.drop_session(self.sid)
        self._shared.cache.drop_session(self.sid)
        self._shared.versions.peers.ended(self.sid)

    def close_files(self) -> None:
        """Whoever waits for an answer of this client goes on; its files close."""
        self._shared.notifiers.remove(self.sid)
        self.notifier.close()
        self.requests.files.close_all()
