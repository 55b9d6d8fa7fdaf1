"""Lock requests of a session: advisory locks and cache locks (with revocation)."""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import socket
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .. import protocol as p
from ..protocol import Command, Message
from ..wire import FrameWriter
from . import cachelocks, locks
from .locks import UNLCK, WRLCK, Lock
from .replies import reply_for
from .storage import attr_of

log = logging.getLogger("pohmelfs.server")

MAX_UNANSWERED = 4096  # notifications a session may leave unanswered at once
MAX_WAITING = 1024  # requests of a session that wait for other clients at once
MAX_WAITING_BYTES = 256 << 20  # and the data they keep

if TYPE_CHECKING:
    from .handles import Handle
    from .service import Server
    from .storage import Storage


class LockRequests:
    """Mixed into the session: needs ``server``, ``sid``, ``closed``, ``peer``,
    ``send`` and the handle methods ``_acquire``/``_release``/``_with_handle``."""

    server: Server
    export: Storage
    sid: int
    closed: bool
    peer: str
    _notify_xids: itertools.count[int]
    _notified: dict[int, Callable[[], None]]
    _revoked_keys: collections.Counter[object]  # files whose locks we asked it to give up
    _revoked_lock: threading.Lock
    handles: dict[int, Handle]
    key_of: Callable[[int], object]
    send: Callable[[Message], None]
    _acquire: Callable[[int], Handle]
    _release: Callable[[Handle], None]
    _with_handle: Callable[..., Any]
    _hold: Callable[[Handle], Handle]
    _queue: ThreadPoolExecutor  # one thread: this session's requests that had to wait
    _queue_lock: threading.Lock
    _queued: int
    _queued_keys: collections.Counter[object]  # files of the requests queued now
    _parked: int  # requests waiting for other clients (see _park)
    _parked_bytes: int
    _parked_lock: threading.Lock
    _queue_thread: threading.Thread | None
    _lane: ThreadPoolExecutor  # one thread: write-backs that had to wait (see _to_lane)
    _scratch: threading.local  # .told: RESIZE notices a reply waits for (_applied_then_told)
    _lane_thread: threading.Thread | None
    _replies: ThreadPoolExecutor  # one thread: answers to lock waits granted elsewhere
    sock: socket.socket
    writer: FrameWriter
    keepalive: float

    def _park(self, m: Message, h: Handle | None) -> None:
        """``m`` is to wait for other clients: it keeps its data (the reader's buffer
        is reused), its requester hears PENDING meanwhile, and it counts against the
        session's bounds (MAX_WAITING requests, MAX_WAITING_BYTES of data): beyond
        them it fails with EAGAIN instead, and ``h`` is let go. ``_reply_to`` ends it."""
        data = m.fields.get("data")
        size = len(data) if isinstance(data, bytes | bytearray | memoryview) else 0
        with self._parked_lock:
            mine = self._parked >= MAX_WAITING or self._parked_bytes + size > MAX_WAITING_BYTES
            if mine or not self.server.waiting.take():
                if h is not None:
                    self._release(h)
                whose = "of this connection" if mine else "on this server"
                raise OSError(errno.EAGAIN, f"too many requests {whose} wait for other "
                              "clients")  # fmt: skip
            self._parked += 1
            self._parked_bytes += size
        if isinstance(data, memoryview):
            m.fields["data"] = bytes(data)
        self.server.keepalive.waiting(self.sid, self.writer, m.cmd, m.xid, self.keepalive)

    def _unpark(self, m: Message) -> None:
        self.server.keepalive.done(self.sid, m.xid)
        data = m.fields.get("data")
        self.server.waiting.give()
        with self._parked_lock:
            self._parked -= 1
            self._parked_bytes -= len(data) if isinstance(data, bytes | bytearray) else 0

    def _wanted_lock(self, m: Message, h: Handle) -> Lock:
        if m["type"] > UNLCK or m["flags"] & ~(p.LOCK_WAIT | p.LOCK_FLOCK):
            raise OSError(errno.EINVAL, "bad lock type or flags")
        end = locks.END if m.length == 0 else m.offset + m.length
        flock = bool(m["flags"] & p.LOCK_FLOCK)
        return Lock((self.sid, m["owner"]), m["type"], m.offset, end, m["pid"], flock)

    def _lock(self, m: Message) -> Message | None:
        h = self._acquire(m.oid)
        try:
            want = self._wanted_lock(m, h)
            if want.type == WRLCK and not want.flock and not h.writable:
                # POSIX: an exclusive record lock needs a descriptor open for writing
                # (asking who holds one, GETLK, does not).
                raise OSError(errno.EBADF, "an exclusive lock needs a file open for writing")
        except OSError:
            self._release(h)
            raise
        if not m["flags"] & p.LOCK_WAIT or want.type == UNLCK:
            try:
                self.server.locks.set(h.key, want)
            finally:
                self._release(h)
            return p.reply(m)
        # A wait may last as long as the holder likes: it is an entry in the lock
        # table (no thread), bounded with the session's other waiting requests.
        self._park(m, h)

        def granted(error: OSError | None) -> None:
            self._unpark(m)
            self._release(h)
            if self.closed:
                return
            out = p.reply(m) if error is None else reply_for(m, error)
            # Sent by this session's own thread: the granter (another session's) must
            # not wait for a client that does not read, nor the shared pool either.
            self._replies.submit(self._send_quietly, out)

        try:
            taken = self.server.locks.wait_for(h.key, want, granted)
        except BaseException:
            self._unpark(m)
            self._release(h)
            raise
        if not taken:
            return None
        self._unpark(m)
        self._release(h)
        return p.reply(m)

    def _send_quietly(self, out: Message) -> None:
        try:
            self.send(out)
        except OSError as e:
            log.debug("%s: cannot send reply: %s", self.peer, e)

    def _getlk(self, m: Message) -> Message | None:
        def test(h: Handle) -> Message:
            held = self.server.locks.conflict(h.key, self._wanted_lock(m, h))
            if held is None:
                return p.reply(m, type=UNLCK, pid=0)
            length = 0 if held.end >= locks.END else held.end - held.start
            return p.reply(m, offset=held.start, length=length, type=held.type, pid=held.pid)

        return self._with_handle(m, test)

    # --- cache locks -------------------------------------------------------------

    def notify(self, msg: Message, answered: Callable[[], None], key: object = None) -> None:
        """Send a server-initiated message; ``answered`` runs when the client replies
        (or its connection ends). ``key``: a revocation of this session's lock on that
        file (see ``answering``). A client that leaves MAX_UNANSWERED unanswered gets
        no more: ENOBUFS, and whoever would have waited for it goes on."""
        if len(self._notified) >= MAX_UNANSWERED:
            raise OSError(errno.ENOBUFS, "too many notifications unanswered")
        if key is not None:
            with self._revoked_lock:
                self._revoked_keys[key] += 1

            def answered_revocation() -> None:
                with self._revoked_lock:
                    self._revoked_keys[key] -= 1
                    if self._revoked_keys[key] <= 0:
                        del self._revoked_keys[key]
                answered()

            self._notified[msg.xid] = answered_revocation
        else:
            self._notified[msg.xid] = answered
        try:
            self.send(msg)
        except OSError:
            self._notified.pop(msg.xid, None)
            raise

    def answering(self, m: Message) -> bool:
        """Is ``m`` (a READ or WRITE) on a file whose lock this session is being asked to
        give up? Then it is the write-back or a read the answer waits for: it must
        not wait behind the session's queued requests, which may themselves wait for
        another client that waits for this answer. (It overtakes only requests that
        have not been answered yet, since a client answers no write sent behind that
        could still need a revocation.)"""
        if not self._revoked_keys or m.cmd not in (Command.READ, Command.WRITE):
            return False
        h = self.handles.get(m.oid)
        # Not past a queued request on the same file: a write sent behind there is
        # older than this one, and its data must not land on top.
        return (h is not None and h.key in self._revoked_keys
                and not self._queued_keys.get(h.key))  # fmt: skip

    def _revoke(self, holder: cachelocks.Holder, keep: int, done: Callable[[], None]) -> None:
        session = self.server.session_by_id(holder.owner[0])
        if session is None or session.closed:
            raise OSError(errno.ENOTCONN, "holder gone")
        length = 0 if holder.end >= cachelocks.END else holder.end - holder.start
        msg = p.Message(Command.REVOKE, next(session._notify_xids), p.FLAG_NOTIFY, 0,
                        holder.owner[1], holder.start, length, {"keep": keep})  # fmt: skip
        session.notify(msg, done, session.key_of(holder.owner[1]))

    def _cache_reply(self, m: Message, h: Handle) -> Message:
        """The file as it is now, and how many handles elsewhere write it."""
        writers = self.server.writers_elsewhere(h.key, self.sid)
        watchers = self.server.sizes.count_elsewhere(h.key, self.sid)
        return p.reply(m, attr=attr_of(h.file.stat()), writers=writers, watchers=watchers)

    def _cache(self, m: Message) -> Message | None:
        if m["type"] > cachelocks.RELEASE:
            raise OSError(errno.EINVAL, "bad cache lock type")
        h = self._acquire(m.oid)
        end = cachelocks.END if m.length == 0 else m.offset + m.length
        owner = (self.sid, m.oid)
        if m["type"] == cachelocks.RELEASE:
            try:
                self.server.cache.release(h.key, owner, m.offset, end)
                return self._cache_reply(m, h)
            finally:
                self._release(h)

        if self.server.cache.try_acquire(h.key, owner, m["type"], m.offset, end, h.directory):
            try:  # the common case: nobody to revoke, so no thread to wait in
                return self._cache_reply(m, h)
            finally:
                self._release(h)

        def grant() -> Message:  # revoking others takes their round trips
            self.server.cache.acquire(h.key, owner, m["type"], m.offset, end, self._revoke,
                                      h.directory)  # fmt: skip
            return self._cache_reply(m, h)

        self._answer_later(m, h, grant)
        return None

    def _plain(self, m: Message, h: Handle | None, key: object, write: bool, start: int,
               end: int, run: Callable[[], Message | None]) -> Message | None:  # fmt: skip
        """Run a read or write of a range that the client may hold no cache lock on:
        other clients' cached copies go first (an exclusive holder writes back before
        a read; every holder writes back and drops its cache before a write). A
        read that has to wait for that waits on a thread of its own; a write waits
        here, because the connection's writes must be applied in order."""
        cache = self.server.cache
        if write:
            return self._change(m, h, (key,), run, start, end)
        if not cache.conflicting(key, self.sid, start, end):
            return run()

        def settled() -> Message | None:
            cache.settle(key, self.sid, start, end, self._revoke)
            return run()

        if self._in_queue():  # already behind the session's earlier requests: wait here
            return settled()
        self._answer_later(m, None if h is None else self._hold(h), settled)
        return None

    def _naming(self, m: Message, paths: tuple[bytes, ...],
                run: Callable[[], Message | None]) -> Message | None:  # fmt: skip
        """Create, remove or rename names: other clients that cache names of the
        directories changed give them up first, and take them again only after.
        A directory that moves (rename's first path) is given up by its holders
        too: they know it by its old path."""
        keys = [key for key in map(self.export.parent_key, paths) if key is not None]
        if m.cmd == Command.RENAME:
            keys.extend(self._directory_key(m["path"]))
        return self._change(m, None, keys, run)

    def _directory_key(self, path: bytes) -> list[object]:
        try:
            st = self.export.stat(path)
        except OSError:
            return []  # the rename itself will fail with the reason
        return [(st.st_dev, st.st_ino)] if stat.S_ISDIR(st.st_mode) else []

    def _change(self, m: Message, h: Handle | None, keys: Sequence[object],
                run: Callable[[], Message | None], start: int = 0,
                end: int = locks.END) -> Message | None:  # fmt: skip
        """Run a change that other sessions' cache locks must make way for. With
        nothing to revoke it runs here. Otherwise it waits on a thread of its own (the
        reader goes on taking the answers to revocations), or, if its client did not
        wait for it (BEHIND), in this session's queue, which every later request of
        the connection then joins, in order."""
        cache = self.server.cache
        # A change that other clients must hear of (RESIZE) waits for their answers:
        # never on the reader, which must go on taking them.
        told = len(keys) == 1 and self.server.sizes.elsewhere(keys[0], self.sid)
        if not told and cache.try_changing(keys, self.sid, start, end):
            try:
                return run()
            finally:
                cache.changed(keys, self.sid)
        if (
            told
            and self.answering(m)
            and not self._in_queue()
            and cache.try_changing(keys, self.sid, start, end)
        ):
            return self._applied_then_told(m, h, keys, run)

        def wait_and_run() -> Message | None:
            with cache.changing(keys, self.sid, self._revoke, start, end):
                return run()

        if self._in_queue():  # queued again, it would overtake nothing but be overtaken
            return wait_and_run()
        held = None if h is None else self._hold(h)
        if self.answering(m):  # a write-back a revocation waits for: ahead of the queue
            self._to_lane(m, held, wait_and_run)
        elif m.flags & p.FLAG_BEHIND:
            self._enqueue(m, held, wait_and_run)
        else:
            self._answer_later(m, held, wait_and_run)
        return None

    def _applied_then_told(self, m: Message, h: Handle | None, keys: Sequence[object],
                           run: Callable[[], Message | None]) -> None:  # fmt: skip
        """A write-back that others must hear the new size of: applied here, before
        the next request of the client is read (which must see it); only its reply
        waits, on the lane, for their answers (they must know the size before it
        returns), as revocations wait for it."""
        try:
            self._park(m, None)  # first: refused (EAGAIN), it must change nothing
        except BaseException:
            self.server.cache.changed(keys, self.sid)
            raise
        told: list[Any] = []
        self._scratch.told = told
        try:
            out = run()
        except OSError as e:
            out = reply_for(m, e)
        finally:
            self._scratch.told = None
            self.server.cache.changed(keys, self.sid)
        self._lane.submit(self._reply_to, m, None, lambda: self._once_told(told, out))

    def _once_told(self, told: list[Any], out: Message | None) -> Message | None:
        self.server.sizes.wait_for(told)
        return out

    def _in_queue(self) -> bool:
        """Is this the session's queue thread, or its lane for write-backs?"""
        me = threading.current_thread()
        return me is self._queue_thread or me is self._lane_thread

    def _to_lane(self, m: Message, h: Handle | None,
                 work: Callable[[], Message | None]) -> None:  # fmt: skip
        """Run a write-back that a revocation of this session's lock waits for, and
        that must wait itself (for RESIZE answers): on the session's lane, one
        thread, so write-backs stay in the order sent, past the queue (whose
        requests may wait for the very client that waits for this answer)."""
        self._park(m, h)
        self._lane.submit(self._reply_to, m, h, work)

    def _enqueue(self, m: Message, h: Handle | None,
                 work: Callable[[], Message | None]) -> None:  # fmt: skip
        """Run work after everything already queued for this session, then reply;
        while anything is queued, the reader queues every request behind it."""
        self._park(m, h)
        target = h if h is not None else self.handles.get(m.oid) if m.oid else None
        key = None if target is None else target.key
        with self._queue_lock:
            self._queued += 1
            if key is not None:
                self._queued_keys[key] += 1
        self._queue.submit(self._reply_to, m, h, work, True, key)

    def _reply_to(self, m: Message, h: Handle | None, work: Callable[[], Message | None],
                  queued: bool = False, key: object = None) -> None:  # fmt: skip
        try:
            if "cred" in m.fields:
                self.export.act_as(m["cred"])
            # A connection gone meanwhile: nobody to answer (handles still released).
            out = None if queued and self.closed else work()
        except Exception as e:  # a bug must cost one request, not the session
            out = reply_for(m, e, self.peer)
        finally:
            self._unpark(m)
            if h is not None:
                self._release(h)
            if queued:
                with self._queue_lock:
                    self._queued -= 1
                    if key is not None:
                        self._queued_keys[key] -= 1
                        if self._queued_keys[key] <= 0:
                            del self._queued_keys[key]
        try:
            if out is not None:
                self.send(out)
        except OSError:
            pass

    def _answer_later(self, m: Message, h: Handle | None,
                      work: Callable[[], Message | None]) -> None:  # fmt: skip
        """Run a request that may wait long on a thread of its own (never the
        connection's reader: the answers it waits for arrive there), then reply."""

        name = f"pohmelfs-{m.cmd.name.lower()}-{self.peer}"
        self._park(m, h)
        threading.Thread(target=self._reply_to, args=(m, h, work), name=name, daemon=True).start()

    def _check_not_fenced(self, m: Message) -> None:
        """A change through a handle whose lock was taken back unasked is refused:
        checked when it arrives, and again under its range lock just before it is
        applied (it may have waited meanwhile; a later change of another client
        that the lost lock made wait is then ordered after this one by that range
        lock, so the older data never lands on top)."""
        if (self.sid, m.oid) in self.server.cache.fenced:
            raise OSError(errno.EIO, "cache lock lost (did not answer a revoke in time)")
