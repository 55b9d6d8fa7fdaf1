"""The TCP service: accepts clients and runs their requests against an export.

One thread per connection reads frames and runs quick requests inline, in
arrival order; requests that may take long (fsync, listing, tree removal,
path creation) go to a shared worker pool so they do not hold up the rest of
the connection. Replies are matched to requests by transaction id, so they may
leave in any order. A WRITE is applied only once its whole payload has
arrived, with one ``pwrite``: a connection that dies mid-frame or a SIGTERM
never leaves half of a write request applied.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import mmap
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import protocol as p
from ..protocol import HEADER_SIZE, TAG_SIZE, Command, Header, Message, ProtocolError
from ..security.config import ServerSecurity
from ..security.policy import INSECURE
from ..security.tls import peer_name
from ..wire import FrameWriter, PeerClosed, SocketReader, shutdown
from . import admission, cachelocks, linux
from .guard import RequestGuard
from .handles import Handle, Handles
from .keepalive import Keepalive
from .lockrequests import LockRequests
from .locks import AdvisoryLocks
from .rangelock import END, RangeLocks
from .replies import reply_for
from .sizes import EMPTY, SizeWatchers
from .storage import Storage, attr_of

log = logging.getLogger("pohmelfs.server")

READ_BUFFER = 1 << 20  # a reading thread's buffer, at least
MAX_SLOW = 64  # a session's requests queued for or running in the shared pool
TRIM_EVERY = 2.0  # seconds: memory of closed connections goes back at most this often
KEEP_RESIDENT = 1 << 20  # of a connection's write buffer, between large writes
SEND_TIMEOUT = struct.pack("ll", 20, 0)  # struct timeval: 20 s
SLOW_COMMANDS = frozenset({Command.FSYNC, Command.READDIR, Command.RMTREE, Command.MAKEDIRS})
# Requests that use a name without changing its directory: a client holding the
# directory exclusively (names changed ahead, not yet sent) sends its changes first.
NAME_READERS = frozenset({
    Command.LOOKUP, Command.LEASE, Command.READDIR, Command.OPEN, Command.READLINK,
    Command.TRUNCATE, Command.LINK, Command.CHMOD, Command.CHOWN, Command.UTIMES,
    Command.GETXATTR, Command.SETXATTR, Command.LISTXATTR, Command.REMOVEXATTR,
})  # fmt: skip


def _made(m: Message, made: tuple[p.Attr, p.Attr]) -> Message:
    return p.reply(m, attr=made[0], dir=made[1])


def _renamed(m: Message, dirs: tuple[p.Attr, p.Attr]) -> Message:
    return p.reply(m, dir=dirs[0], new_dir=dirs[1])


class Session(LockRequests, Handles):
    """One client connection."""

    def __init__(self, server: Server, sock: socket.socket, peer: str) -> None:
        self.server, self.sock, self.peer = server, sock, peer
        self.sid = next(server.session_ids)  # owns this client's advisory locks
        self.closed = False
        self._notify_xids = itertools.count(1)
        self._notified: dict[int, Callable[[], None]] = {}  # xid -> run on the answer
        self._revoked_keys = collections.Counter[object]()  # see LockRequests.answering
        self._revoked_lock = threading.Lock()
        self.export = server.export
        self.reader = SocketReader(sock)
        self.writer = FrameWriter(sock)
        self.max_payload = server.max_payload
        self.keepalive = 1.0  # seconds between PENDING frames of a waiting request (HELLO)
        self.notices = 0  # the notifications it wants beyond REVOKE (HELLO)
        self.key = ""  # the name of the client's key, once admitted
        self.guard = RequestGuard(INSECURE)  # replaced by the key's, once admitted
        self.handles: dict[int, Handle] = {}
        self.handles_lock = threading.Lock()
        self.leases: dict[int, tuple[int, int]] = {}  # lease id -> the file's key
        self.next_handle = 1
        self._wmap: mmap.mmap | None = None  # pages are used only as data arrives
        self._wbuf: memoryview | None = None
        self._scratch = threading.local()
        self._queue_thread: threading.Thread | None = None
        self._lane_thread: threading.Thread | None = None
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pohmelfs-lane-{peer}",
                                        initializer=self._lane_started)  # fmt: skip
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pohmelfs-queue-{peer}",
                                         initializer=self._queue_started)  # fmt: skip
        self._replies = ThreadPoolExecutor(1, thread_name_prefix=f"pohmelfs-replies-{peer}")
        self._queue_lock = threading.Lock()
        self._queued = 0
        self._parked = self._parked_bytes = 0
        self._slow = 0  # FSYNC, READDIR... of this session in the shared pool (MAX_SLOW)
        self._parked_lock = threading.Lock()
        self._queued_keys = collections.Counter[object]()
        self.handlers: dict[Command, Callable[[Message], Message | None]] = {
            Command.PING: lambda m: p.reply(m),
            Command.STATFS: self._statfs,
            Command.LOOKUP: self._lookup,
            Command.LEASE: self._lease,
            Command.READDIR: self._readdir,
            Command.OPEN: self._open,
            Command.CLOSE: self._close,
            Command.READ: self._read,
            Command.WRITE: self._write,
            Command.FSTAT: self._fstat,
            Command.FTRUNCATE: self._ftruncate,
            Command.FSYNC: self._fsync,
            Command.FALLOCATE: self._fallocate,
            Command.LOCK: self._lock,
            Command.GETLK: self._getlk,
            Command.CACHE: self._cache,
            Command.TRUNCATE: self._truncate,
            # Names created or removed (see LockRequests._naming); the replies carry
            # the changed directories as they are after (``dir``, ``new_dir``).
            Command.MKDIR: lambda m: self._naming(
                m, (m["path"],), lambda: _made(m, self.export.mkdir(m["path"], m["mode"]))
            ),
            Command.MAKEDIRS: lambda m: self._naming(
                m,
                (m["path"],),
                lambda: p.reply(
                    m, attr=self.export.makedirs(m["path"], m["mode"], m["parent_mode"])
                ),
            ),
            Command.RMDIR: lambda m: self._naming(
                m, (m["path"],), lambda: p.reply(m, dir=self.export.rmdir(m["path"]))
            ),
            Command.RMTREE: lambda m: self._naming(
                m, (m["path"],), lambda: self._done(m, self.export.rmtree(m["path"]))
            ),
            Command.UNLINK: lambda m: self._naming(
                m, (m["path"],), lambda: p.reply(m, dir=self.export.unlink(m["path"]))
            ),
            Command.RENAME: lambda m: self._naming(
                m,
                (m["path"], m["new"]),
                lambda: _renamed(m, self.export.rename(m["path"], m["new"], m["flags"])),
            ),
            Command.LINK: lambda m: self._naming(
                m, (m["new"],), lambda: _made(m, self.export.link(m["path"], m["new"]))
            ),
            Command.SYMLINK: lambda m: self._naming(
                m, (m["path"],), lambda: _made(m, self.export.symlink(m["target"], m["path"]))
            ),
            Command.READLINK: lambda m: p.reply(m, target=self.export.readlink(m["path"])),
            Command.MKNOD: lambda m: self._naming(
                m,
                (m["path"],),
                lambda: _made(m, self.export.mknod(m["path"], m["mode"], m["rdev"])),
            ),
            # These act on the open handle ``oid`` instead of ``path`` when it is set.
            Command.CHMOD: lambda m: self._on_object(
                m,
                lambda: self.export.chmod(m["path"], m["mode"], self.guard.chmod_mode),
                lambda f: f.chmod(m["mode"], self.guard.chmod_mode),
            ),
            Command.CHOWN: lambda m: self._on_object(
                m,
                lambda: self.export.chown(m["path"], m["uid"], m["gid"]),
                lambda f: f.chown(m["uid"], m["gid"]),
            ),
            Command.UTIMES: lambda m: self._on_object(
                m,
                lambda: self.export.utimes(m["path"], m["atime_ns"], m["mtime_ns"], m["which"]),
                lambda f: f.utimes(m["atime_ns"], m["mtime_ns"], m["which"]),
            ),
            Command.GETXATTR: lambda m: self._on_object(
                m,
                lambda: self.export.getxattr(m["path"], m["name"]),
                lambda f: f.getxattr(m["name"]),
                "value",
            ),
            Command.SETXATTR: lambda m: self._on_object(
                m,
                lambda: self.export.setxattr(m["path"], m["name"], m["value"], m["flags"]),
                lambda f: f.setxattr(m["name"], m["value"], m["flags"]),
            ),
            Command.LISTXATTR: lambda m: self._on_object(
                m,
                lambda: tuple(self.export.listxattr(m["path"])),
                lambda f: tuple(f.listxattr()),
                "names",
            ),
            Command.REMOVEXATTR: lambda m: self._on_object(
                m,
                lambda: self.export.removexattr(m["path"], m["name"]),
                lambda f: f.removexattr(m["name"]),
            ),
        }

    def _queue_started(self) -> None:
        linux.private_umask_zero()
        self._queue_thread = threading.current_thread()

    def _lane_started(self) -> None:
        linux.private_umask_zero()
        self._lane_thread = threading.current_thread()

    # --- the connection loop ------------------------------------------------

    def run(self) -> None:
        try:
            linux.private_umask_zero()
            self._handshake()
            while True:
                self._serve_one()
        except PeerClosed:
            log.debug("%s: closed", self.peer)
        except ProtocolError as e:
            log.warning("%s: protocol error, dropping connection: %s", self.peer, e)
        except BlockingIOError:
            log.info("%s: silent for %.0f s, closed", self.peer, self.server.idle_timeout)
        except OSError as e:
            log.debug("%s: connection ended: %s", self.peer, e)
        finally:
            self.close()

    def _handshake(self) -> None:
        server = self.server
        caps = p.Cap.READ_ONLY if self.export.read_only else 0
        caps |= p.Cap.XATTR if self.export.xattrs else 0
        welcome = admission.Welcome(server.max_payload, int(server.idle_timeout * 1000),
                                    int(caps), server.fsid, self.export.statfs)  # fmt: skip
        linux.set_receive_timeout(self.sock, server.handshake_timeout)
        try:
            certificate = self._tls_handshake() if server.security.tls is not None else ""
            admitted = admission.admit(self.reader, self.writer, server.security, welcome,
                                       self.peer, certificate)  # fmt: skip
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            raise ProtocolError("no handshake within the time allowed") from None
        linux.set_receive_timeout(self.sock, server.idle_timeout)
        server.admitted(self)
        self.key = admitted.key
        self.guard = RequestGuard(admitted.policy, server.allow_setuid)
        self.max_payload = admitted.max_payload
        self.keepalive = admitted.keepalive
        self.notices = admitted.notices

    def _tls_handshake(self) -> str:
        """Turn the connection into TLS; the client certificate's common name. A
        client that starts with a plain pohmelfs frame is told what it lacks."""
        tls = self.server.security.tls
        assert tls is not None
        if self.sock.recv(2, socket.MSG_PEEK) == p.MAGIC.to_bytes(2, "big"):
            text = b"this server requires TLS: give the client tls_cert, tls_key and tls_ca"
            hdr = p.HEADER.pack(p.MAGIC, Command.HELLO, p.FLAG_REPLY, 0, errno.EACCES,
                                len(text), 0, 0, 0, 0)  # fmt: skip
            self.writer.send([hdr, text])
            raise admission.Refused("a plain client on a TLS server")
        # Wrapped first and shaken after, so that the handshake reaper can cut off
        # a handshake that dawdles (it shuts down ``self.sock``).
        self.sock = sock = tls.wrap_socket(self.sock, server_side=True,
                                           do_handshake_on_connect=False)  # fmt: skip
        try:
            sock.do_handshake()
        except ssl.SSLError as e:
            log.warning("%s: TLS handshake failed: %s", self.peer, e.reason or e)
            raise admission.Refused("TLS handshake failed") from None
        self.reader = SocketReader(sock)
        self.writer = FrameWriter(sock)
        return peer_name(sock)

    def _serve_one(self) -> None:
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
        if header.flags == p.FLAG_REPLY and header.cmd in p.NOTIFICATIONS:
            self.reader.skip(header.payload_len)  # a client answering our notification
            self.reader.end_frame()
            answered = self._notified.pop(header.xid, None)
            if answered is not None:
                answered()
            return
        if header.flags & ~p.FLAG_BEHIND:  # otherwise clients send only requests
            self.reader.skip(header.payload_len)
            self.reader.end_frame()
            log.warning(
                "%s: ignoring %s frame with flags %#x", self.peer, header.cmd.name, header.flags
            )
            return
        payload = self._read_payload(header)
        self.reader.end_frame()  # nothing of a frame is used before its tag is checked
        try:
            msg = p.decode_payload(header, payload)
        except ProtocolError as e:
            self.send(reply_for(header, e))
            return
        try:
            self.guard.admit(msg)
        except OSError as e:
            self.send(reply_for(msg, e))
            return
        if self._queued and not self.answering(msg):
            # A request sent behind waits for others' caches: stay behind it.
            self._enqueue(msg, None, lambda: self._handle(msg))
        elif self.server.cache.exclusive_dirs and (key := self._names_ahead_key(msg)):
            settle = lambda: self._settle_names(msg, key)  # noqa: E731
            if msg.flags & p.FLAG_BEHIND:
                self._enqueue(msg, None, settle)
            else:
                self._answer_later(msg, None, settle)
        elif header.cmd in SLOW_COMMANDS:
            with self._parked_lock:
                full = self._slow >= MAX_SLOW
                self._slow += not full
            if full:  # the shared pool's queue must not grow on one client's word
                why = "too many slow requests of this connection at once"
                self.send(reply_for(msg, OSError(errno.EAGAIN, why)))
                return
            self.server.pool.submit(self._execute_slow, msg)
        else:
            self.execute(msg)
            if header.payload_len > KEEP_RESIDENT and self._wmap is not None:
                # Give back what a large write used (its data was applied or copied).
                self._wmap.madvise(mmap.MADV_DONTNEED, KEEP_RESIDENT,
                                   header.payload_len - KEEP_RESIDENT)  # fmt: skip

    def _read_payload(self, header: Header) -> memoryview:
        n = header.payload_len
        if n <= 256 << 10:
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
            with self._parked_lock:
                self._slow -= 1

    def execute(self, msg: Message) -> None:
        """Run one request and send its reply; never raises for the request's faults."""
        try:
            if "cred" in msg.fields:
                self.export.act_as(msg["cred"])
            out = self._handle(msg)
        except ConnectionError:
            raise  # the connection broke in the middle of a reply: end the session
        except Exception as e:  # a bug must cost one request, not the server
            out = reply_for(msg, e, self.peer)
        if out is not None:
            try:
                self.send(out)
            except OSError as e:
                log.debug("%s: cannot send reply: %s", self.peer, e)

    def _handle(self, msg: Message) -> Message | None:
        handler = self.handlers.get(msg.cmd)
        if handler is None:  # HELLO after the handshake, REVOKE sent as a request
            raise OSError(errno.EPROTO, f"{msg.cmd.name} is not a request here")
        return handler(msg)

    def _names_key(self, msg: Message) -> tuple[int, int] | None:
        """The directory whose names the request reads: the listed one, or the parent."""
        if msg.cmd != Command.READDIR:
            return self.export.parent_key(msg["path"])
        try:
            st = self.export.stat(msg["path"])
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _names_ahead_key(self, msg: Message) -> tuple[int, int] | None:
        """The directory whose names the request reads, if another client holds it
        exclusively (and so may have changed names ahead of us)."""
        if msg.cmd not in NAME_READERS or not msg["path"]:
            return None
        try:
            self.export.act_as(msg["cred"])  # the path is walked with the caller's rights
        except OSError:
            return None  # the request fails the same way when it runs, with a reply
        key = self._names_key(msg)
        if key is None or not self.server.cache.conflicting(key, self.sid, 0, END):
            return None
        return key

    def _settle_names(self, msg: Message, key: tuple[int, int]) -> Message | None:
        self.server.cache.settle(key, self.sid, 0, END, self._revoke)
        return self._handle(msg)

    def send(self, msg: Message) -> None:
        self.writer.send(msg.encode())

    def _send_raw_error(self, cmd: int, xid: int, code: int, text: str) -> None:
        data = text.encode()
        hdr = p.HEADER.pack(p.MAGIC, cmd, p.FLAG_REPLY, 0, code, len(data), xid, 0, 0, 0)
        self.writer.send([hdr, data])

    def close(self) -> None:
        self.closed = True
        self._wbuf = None
        if self._wmap is not None:
            try:
                self._wmap.close()  # its memory goes back now, not at some collection
            except BufferError:
                pass  # still being received into (a close from another thread)
        self.server.keepalive.forget_session(self.sid)
        self._queue.shutdown(wait=False)  # what is queued runs, skips its work, frees handles
        self._lane.shutdown(wait=False)
        self._replies.shutdown(wait=False)
        self.server.locks.drop_session(self.sid)
        self.server.cache.drop_session(self.sid)
        try:
            self.sock.close()
        except OSError:
            pass
        # Nobody will answer what we asked of it: whoever waits for that goes on now.
        for answered in list(self._notified.values()):
            answered()
        self._notified.clear()
        with self.handles_lock:
            handles, self.handles = list(self.handles.items()), {}
        for oid, h in handles:
            self.server.sizes.closed(h.key, self.sid, oid)
            self._release(h)
        self.server.forget(self)

    # --- handles --------------------------------------------------------------

    @staticmethod
    def _done(m: Message, _result: None) -> Message:
        return p.reply(m)

    # --- request handlers -----------------------------------------------------

    def _statfs(self, m: Message) -> Message:
        return p.reply(m, statfs=self.export.statfs())

    def _readdir(self, m: Message) -> None:
        batches = self.export.readdir(m["path"], self.max_payload - 4096)
        batch = next(batches, [])
        for following in batches:
            self.send(p.reply(m, more=True, entries=tuple(batch)))
            batch = following
        self.send(p.reply(m, entries=tuple(batch)))

    def _lookup(self, m: Message, st: os.stat_result | None = None,
                **extra: Any) -> Message | None:  # fmt: skip
        """``st``: the path's, if already read; ``extra``: more reply fields (LEASE)."""
        if st is None:
            st = self.export.stat(m["path"])
        key = (st.st_dev, st.st_ino)
        if not self.server.cache.conflicting(key, self.sid, 0, END):
            return p.reply(m, attr=attr_of(st), **extra)  # the common case: no second stat
        again = lambda: p.reply(m, attr=self.export.lookup(m["path"]), **extra)  # noqa: E731
        return self._plain(m, None, key, False, 0, END, again)

    def _truncate(self, m: Message) -> Message | None:
        st = self.export.stat(m["path"])
        key = (st.st_dev, st.st_ino)

        def truncate() -> Message:
            self.export.truncate(m["path"], m.offset)
            if self.server.sizes.elsewhere(key, self.sid):
                self._resized(key, self.export.stat(m["path"]), st.st_size, 0)
            return p.reply(m)

        return self._plain(m, None, key, True, 0, END, truncate)

    def _resized(self, key: tuple[int, int], st: os.stat_result, before: int, last: int) -> None:
        """A change of this session's may have changed the file's size: other clients
        that have it open hear of it (``last``: the file's last byte, if it grew)."""
        if st.st_size != before:
            grew = st.st_size > before
            args = key, self.sid, attr_of(st), last if grew else EMPTY
            deferred = getattr(self._scratch, "told", None)
            if deferred is not None:  # the reply waits for them (LockRequests._change)
                deferred.extend(self.server.sizes.announce(*args))
            else:
                self.server.sizes.resized(*args)

    def _fstat(self, m: Message) -> Message | None:
        def fstat(h: Handle) -> Message | None:
            get = lambda: p.reply(m, attr=attr_of(h.file.stat()))  # noqa: E731
            return self._plain(m, h, h.key, False, 0, END, get)

        return self._with_handle(m, fstat)

    def _ftruncate(self, m: Message) -> Message | None:
        self._check_not_fenced(m)
        if self.export.read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        def truncate(h: Handle) -> Message:
            before = h.file.stat().st_size
            with self.server.ranges.hold(h.key, min(m.offset, before), END, True):
                self._check_not_fenced(m)
                h.file.truncate(m.offset)
            if self.server.sizes.elsewhere(h.key, self.sid):
                self._resized(h.key, h.file.stat(), before, 0)  # (new bytes are zeros)
            return p.reply(m)

        return self._with_handle(m, lambda h: self._plain(m, h, h.key, True, 0, END,
                                                          lambda: truncate(h)))  # fmt: skip

    def _fallocate(self, m: Message) -> Message | None:
        self._check_not_fenced(m)
        if self.export.read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        def allocate(h: Handle) -> Message:
            watched = self.server.sizes.elsewhere(h.key, self.sid)
            before = h.file.stat().st_size if watched else 0
            with self.server.ranges.hold(h.key, m.offset, m.offset + m.length, True):
                self._check_not_fenced(m)
                h.file.allocate(m["mode"], m.offset, m.length)
            if watched:
                self._resized(h.key, h.file.stat(), before, 0)
            return p.reply(m)

        return self._with_handle(m, lambda h: self._plain(m, h, h.key, True, 0, END,
                                                          lambda: allocate(h)))  # fmt: skip

    def _fsync(self, m: Message) -> Message | None:
        return self._with_handle(m, lambda h: self._done(m, h.file.sync(m["datasync"])))

    def _write(self, m: Message) -> Message | None:
        self._check_not_fenced(m)

        def write(h: Handle) -> Message:
            data = memoryview(m["data"])
            watched = self.server.sizes.elsewhere(h.key, self.sid)
            before = h.file.stat().st_size if watched or h.append else 0
            if h.append:  # where it lands is known only once written: lock the tail
                with self.server.ranges.hold(h.key, before, END, True):
                    self._check_not_fenced(m)
                    done, end = h.file.write(data, None)
            else:
                with self.server.ranges.hold(h.key, m.offset, m.offset + len(data), True):
                    self._check_not_fenced(m)
                    done, end = h.file.write(data, m.offset)
            if watched:
                st = h.file.stat()
                last = data[-1] if done and st.st_size == end else EMPTY
                self._resized(h.key, st, before, last)
            return p.reply(m, length=done, offset=end)

        def plain(h: Handle) -> Message | None:
            start, end = (0, END) if h.append else (m.offset, m.offset + len(m["data"]))
            return self._plain(m, h, h.key, True, start, end, lambda: write(h))

        return self._with_handle(m, plain)

    def _read(self, m: Message) -> Message | None:
        if m.length > self.max_payload:
            raise OSError(errno.EINVAL, f"read of {m.length} bytes exceeds {self.max_payload}")

        def read(h: Handle) -> Message | None:
            send = lambda: self._send_read(m, h)  # noqa: E731
            return self._plain(m, h, h.key, False, m.offset, m.offset + m.length, send)

        return self._with_handle(m, read)

    def _send_read(self, m: Message, h: Handle) -> None:
        # The data is copied under the range lock (an atomic snapshot: no write can
        # tear it) and sent with one sendmsg. sendfile would send page-cache pages
        # that a write after the lock can still change while they wait in the
        # socket queues (on loopback, until the receiver has read them), and it
        # measured no faster: the receiving client is the bottleneck.
        # The reply is laid out in one buffer, header first: see FrameWriter.send_frame.
        frame = getattr(self._scratch, "frame", None)
        if frame is None or len(frame) < HEADER_SIZE + m.length + TAG_SIZE:
            size = HEADER_SIZE + max(m.length, READ_BUFFER) + TAG_SIZE
            frame = self._scratch.frame = memoryview(bytearray(size))
        with self.server.ranges.hold(h.key, m.offset, m.offset + m.length, False):
            got = h.file.read_into(frame[HEADER_SIZE : HEADER_SIZE + m.length], m.offset)
        frame[:HEADER_SIZE] = Header(m.cmd, p.FLAG_REPLY, 0, got, m.xid, 0, m.offset, 0).pack()
        self.writer.send_frame(frame, HEADER_SIZE + got)


class Budget:
    """A count that may not pass ``limit`` (the requests waiting on the whole server:
    most wait on a thread of their own)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.used -= 1


@dataclass(frozen=True)
class Limits:
    """What one server gives its clients at most."""

    connections: int = 256
    per_peer: int = 64  # connections from one address
    handshake_timeout: float = 10.0  # from accept to the end of the handshake
    handshakes: int = 64  # connections in their handshake at once (the oldest goes)
    waiting: int = 4096  # requests waiting for other clients, on the whole server
    idle_timeout: float = 600.0  # a connection silent this long is closed


class Server:
    """Serve ``export`` on ``host:port``; ``port`` 0 picks a free port."""

    def __init__(
        self,
        export: Storage,
        host: str = "127.0.0.1",
        port: int = 0,
        max_payload: int = p.DEFAULT_MAX_PAYLOAD,
        workers: int = 16,
        lease: float = 5.0,
        *,
        security: ServerSecurity,
        limits: Limits | None = None,
        allow_setuid: bool = False,
    ) -> None:
        security.check_listen(host)
        linux.raise_descriptor_limit()
        self.export = export
        self.max_payload = max_payload
        self.security = security
        self.limits = limits = limits or Limits()
        self.handshake_timeout = limits.handshake_timeout
        self.idle_timeout = limits.idle_timeout
        self.allow_setuid = allow_setuid
        self._per_peer = collections.Counter[str]()
        self.waiting = Budget(limits.waiting)  # see LockRequests._park
        self._trimmed = 0.0  # when memory was last given back (see forget)
        self._handshaking: dict[Session, float] = {}  # not yet admitted -> deadline
        self._reaper: threading.Thread | None = None
        self.fsid = random.getrandbits(63) | 1
        self.ranges = RangeLocks()
        self.locks = AdvisoryLocks()
        self.cache = cachelocks.CacheLocks(lease)
        self.keepalive = Keepalive()
        self.sizes = SizeWatchers(lease, self.session_by_id, self.cache.lapsed, self.cache.lapse,
                                  self.cache.unlapse)  # fmt: skip
        self.session_ids = itertools.count(1)
        self.writers = collections.Counter[tuple[int, int]]()  # files open for writing
        self._session_writers = collections.Counter[tuple[tuple[int, int], int]]()
        self.pool = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="pohmelfs-worker",
            initializer=linux.private_umask_zero,
        )
        self.sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.address = self.listener.getsockname()[:2]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="pohmelfs-accept", daemon=True
        )
        self._threads: list[threading.Thread] = []

    def start(self) -> Server:
        self._accept_thread.start()
        log.info(
            "serving %s on %s:%d%s",
            self.export.root,
            *self.address,
            " (read-only)" if self.export.read_only else "",
        )
        return self

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, addr = self.listener.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A client that does not take its replies for this long is cut off
            # (a blocked send would otherwise hold a range lock indefinitely).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, SEND_TIMEOUT)
            host = addr[0]
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                full = len(self.sessions) >= self.limits.connections
                if full or self._per_peer[host] >= self.limits.per_peer:
                    sock.close()
                    log.warning("%s:%d: refused, %s", host, addr[1],
                                f"{len(self.sessions)} connections already" if full
                                else f"{self._per_peer[host]} connections from {host} "
                                "already")  # fmt: skip
                    continue
                session = Session(self, sock, "%s:%d" % addr[:2])
                self._per_peer[host] += 1
                self.sessions.add(session)
                self._handshake_started(session)
                t = threading.Thread(
                    target=session.run, name=f"pohmelfs-conn-{session.peer}", daemon=True
                )
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
                t.start()  # under the lock: stop() must never join an unstarted thread

    def _handshake_started(self, session: Session) -> None:
        """(Under ``_lock``.) The whole handshake has ``handshake_timeout``, however
        slowly its bytes come, and at most ``limits.handshakes`` run at once: the
        oldest is cut off for a new one, so connections that never prove a key cannot
        keep a client that has one out."""
        if len(self._handshaking) >= self.limits.handshakes:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            shutdown(oldest.sock)
        self._handshaking[session] = time.monotonic() + self.handshake_timeout
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap_handshakes, daemon=True,
                                            name="pohmelfs-handshakes")  # fmt: skip
            self._reaper.start()

    def admitted(self, session: Session) -> None:
        with self._lock:
            self._handshaking.pop(session, None)

    def _reap_handshakes(self) -> None:
        while not self._stopping:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                late = [s for s, deadline in self._handshaking.items() if deadline <= now]
                for s in late:
                    del self._handshaking[s]
            for s in late:
                log.info("%s: no handshake within %.0f s, closed", s.peer,
                         self.handshake_timeout)  # fmt: skip
                shutdown(s.sock)

    def session_by_id(self, sid: int) -> Session | None:
        with self._lock:
            for s in self.sessions:
                if s.sid == sid:
                    return s
        return None

    def writer_opened(self, key: tuple[int, int], sid: int) -> None:
        with self._lock:
            self.writers[key] += 1
            self._session_writers[key, sid] += 1

    def writer_closed(self, key: tuple[int, int], sid: int) -> None:
        with self._lock:
            for counter, k in ((self.writers, key), (self._session_writers, (key, sid))):
                counter[k] -= 1  # type: ignore[index]
                if counter[k] <= 0:  # type: ignore[index]
                    del counter[k]  # type: ignore[attr-defined]

    def writers_elsewhere(self, key: tuple[int, int], sid: int) -> int:
        """How many handles of other sessions have the file open for writing."""
        with self._lock:
            return self.writers[key] - self._session_writers[key, sid]

    def forget(self, session: Session) -> None:
        now = time.monotonic()
        if now - self._trimmed > TRIM_EVERY:  # at most this often: it walks the heap
            self._trimmed = now
            linux.give_back_memory()
        with self._lock:
            self._handshaking.pop(session, None)
            if session in self.sessions:
                self.sessions.discard(session)
                host = session.peer.rpartition(":")[0]
                self._per_peer[host] -= 1
                if self._per_peer[host] <= 0:
                    del self._per_peer[host]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish, then close everything."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            sessions = list(self.sessions)
            threads = list(self._threads)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in sessions:  # end each reader at its next frame boundary
            shutdown(s.sock, socket.SHUT_RD)
        for t in threads:
            t.join(timeout)
        self.pool.shutdown(wait=True)
        self.cache.close()
        self.keepalive.close()
        self._accept_thread.join(timeout)
        log.info("stopped")
