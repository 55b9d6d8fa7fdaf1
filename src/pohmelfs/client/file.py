"""An open remote file as an ``io.RawIOBase``.

Large reads and writes are split into chunks that are all in flight at once
on the connection; each read chunk's reply lands directly in its slice of the
caller's buffer. Positional ``pread``/``pwrite`` methods are thread-safe.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from ..protocol import Attr, CacheMode, Command, Cred
from .connection import Connection, Transaction
from .held import MAX_EXTENTS, PUSH_BYTES, HeldWrites
from .paths import encode_path, normal_path
from .resend import resending
from .services import FileServices

CHUNK = 1 << 20  # bytes per READ/WRITE request of a large transfer
WINDOW = 16  # requests of one transfer in flight at once
WRITE_BEHIND_BYTES = 32 << 20  # unanswered write-behind data per file, at most
REOPEN_MASK = ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
ABANDON_POLL = 0.02  # how often a lock request that may be abandoned looks
MOVES_DATA = 0x08 | 0x20  # FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE

log = logging.getLogger("pohmelfs.client")


class CacheGrant(NamedTuple):
    attr: Attr  # the file as it is once every conflicting holder has written back
    writers: int  # handles of other clients open for writing it
    watchers: int  # other clients that have it open and hear of its size changes


class RemoteFile(io.RawIOBase):
    def __init__(
        self,
        services: FileServices,
        path: str | bytes,
        flags: int,
        perm: int,
        mode: str,
        cred: Cred | None = None,
        cache: int = CacheMode.RELEASE,
    ) -> None:
        """``cache``: a cache lock to take with the open if nothing conflicts (0
        shared, 1 exclusive; 2 none): see :meth:`cache_lock`."""
        super().__init__()
        self._services = services
        self.name = path
        self.mode = mode
        self._flags = flags
        self._cred = cred or services.cred
        self._lock = threading.Lock()
        self._behind = threading.Condition()  # write-behind accounting
        self._behind_bytes = 0
        self._behind_count = 0
        self._behind_error: OSError | None = None
        self._held = HeldWrites()  # writes kept back (see held.py), under _held_lock
        self._held_lock = threading.Lock()
        self._push_lock = threading.Lock()  # held writes go out in the order made
        self.on_revoke: Callable[[int, int, int], None] | None = None
        # on_resize(attr, last byte): another client changed the file's size (RESIZE).
        self.on_resize: Callable[[Attr, int], None] | None = None
        got = services.open(path, flags, perm, self._cred, cache)
        conn, oid, attr, writers, cached, directory = got[:6]
        # What a reopen after a lost connection opens: this path (which a rename made
        # through this client changes), and only if it is still this very file.
        self._path = normal_path(encode_path(path))
        self._fids = got.fids
        # The connection and server handle, replaced together when the file reopens.
        self._pair: tuple[Connection, int] = (conn, oid)
        # Where the held writes were made (their lock's connection), while any are held.
        self._held_on: tuple[Connection, int] | None = None
        self.attr: Attr = attr
        # With O_CREAT: the directory as it was right after the open (which may have
        # created the file in it); None otherwise.
        self.directory: Attr | None = directory
        self.writers_elsewhere = writers  # other clients' handles open for writing, at open
        self.watchers_elsewhere = got.watchers  # other mounts that have it open, at open
        # The lock granted with the open, until used or revoked (set before the file
        # can be found by a revocation, which resets it).
        self._granted: int = cached
        if cached < 2 and not services.grants.register(conn, oid, self):
            with self._lock:
                self._granted = 2  # taken back before we registered
        self._pos = attr.size if flags & os.O_APPEND else 0
        services.files.opened(self, conn, oid)

    # --- the handle, reopened after a reconnect ------------------------------

    def handle(self) -> tuple[Connection, int]:
        """The connection and server handle to send this file's requests on; after
        the connection was lost, the file is reopened by path on a new one."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        pair = self._pair
        if not pair[0].closed:
            return pair
        with self._lock:
            if self._pair[0].closed:
                try:
                    flags = self._flags & REOPEN_MASK
                    got = self._services.open(self._path, flags, 0, self._cred, fids=self._fids,
                                             shown=self.name)  # fmt: skip
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
                        raise
                    # Gone, or its name is now a directory or a symlink: not that file.
                    raise OSError(errno.ESTALE, "the file was removed", self.name) from None
                self._pair = (got.conn, got.oid)
                self._services.files.opened(self, got.conn, got.oid)
            return self._pair

    def moved(self, src: bytes, dst: bytes, exchange: bool = False) -> None:
        """A rename made through this client: ``src`` is now ``dst`` (``exchange``:
        and ``dst`` is ``src``). Paths are normal (see ``normal_path``)."""
        with self._lock:
            for old, new in ((src, dst), (dst, src)) if exchange else ((src, dst),):
                if self._path == old or self._path.startswith(old.rstrip(b"/") + b"/"):
                    self._path = new + self._path[len(old) :]
                    return

    @property
    def _conn(self) -> Connection:
        return self._pair[0]

    def handle_lost(self) -> bool:
        """Was the connection this file was opened on lost (with its cache locks)?"""
        return self._conn.closed

    def _retrying(self, fn: Any, idempotent: bool = True) -> Any:
        """Run fn(conn, oid, resent); after a lost connection, reopen and run it again
        (``resend.py``: a change only if the server kept the client session; fn
        sends its requests under the ids they had)."""
        return resending(self.handle, fn, idempotent)

    def _change(self, cmd: Command, idempotent: bool = True, **fields: Any) -> Any:
        """One change through the handle, applied once however often it is sent (and,
        if ``idempotent``, as it sets a state rather than adding to one, sent again
        even to a server that forgot the session, as before)."""
        xid = self._services.resender.next_xid()
        return self._retrying(lambda c, o, resent: c.call(cmd, self.name, oid=o, xid=xid,
                                                         resent=resent, **fields),
                              idempotent)  # fmt: skip

    def copy_from(self, source: RemoteFile, src_offset: int, offset: int, length: int) -> int:
        """Copy up to ``length`` bytes of ``source`` (open for reading through the same
        client) from ``src_offset`` to ``offset`` of this file, on the server (COPY:
        the data does not cross the network); how many were copied (fewer at the
        source's end). ``source`` must be held from other writers (a cache lock:
        ``Client.copy_file`` takes one), else EAGAIN."""
        self._services.held.push_all()  # (held writes, of either file, are older)
        xid = self._services.resender.next_xid()

        def where() -> tuple[Connection, tuple[int, int]]:
            conn, oid = self.handle()
            src_conn, src_oid = source.handle()
            if src_conn is not conn:
                raise ConnectionError(errno.ECONNRESET, "the two files are on two connections")
            return conn, (oid, src_oid)

        def send(conn: Connection, oids: tuple[int, int], resent: bool) -> int:
            reply = conn.call(Command.COPY, self.name, oid=oids[0], xid=xid, resent=resent,
                              offset=offset, length=length, src=oids[1],
                              src_offset=src_offset)  # fmt: skip
            return int(reply.length)

        return resending(where, send, True)

    # --- positional I/O ---------------------------------------------------------

    def preadinto(self, buffer: Any, offset: int) -> int:
        """Read up to len(buffer) bytes at ``offset`` straight into ``buffer``."""
        mv = memoryview(buffer).cast("B")
        return int(self._retrying(lambda c, o, _: self._preadinto(c, o, mv, offset)))

    def _preadinto(self, conn: Connection, oid: int, mv: memoryview, offset: int) -> int:
        chunk = min(CHUNK, conn.max_payload)
        total = len(mv)
        inflight: deque[tuple[Transaction, int, int]] = deque()
        pos = 0
        try:
            while pos < total or inflight:
                while pos < total and len(inflight) < WINDOW:
                    n = min(chunk, total - pos)
                    tx = conn.start(
                        Command.READ, into=mv[pos : pos + n], oid=oid, offset=offset + pos, length=n
                    )
                    inflight.append((tx, pos, n))
                    pos += n
                tx, at, n = inflight.popleft()
                conn.wait(tx, self.name)
                if tx.nbytes < n:  # end of file
                    return at + tx.nbytes
            return total
        finally:
            for tx, _, _ in inflight:  # their buffers are the caller's
                conn.cancel(tx)

    def pread(self, size: int, offset: int) -> bytes:
        buf = bytearray(size)
        n = self.preadinto(buf, offset)
        del buf[n:]
        return bytes(buf)

    def pwrite(self, data: Any, offset: int) -> int:
        """Write all of ``data`` at ``offset`` (at the end in append mode)."""
        mv = memoryview(data).cast("B")
        self._services.held.push_all()  # held writes (of any handle) are older: first
        return int(self._writing(mv, offset)[0])

    def _writing(self, mv: memoryview, offset: int) -> tuple[int, int]:
        """Write all of ``mv`` at ``offset``; (bytes written, where the last one ended).
        Each piece keeps its request id when sent again, so that it is applied once."""
        xids: dict[int, int] = {}  # piece's position -> its request id
        append = bool(self._flags & os.O_APPEND)
        return self._retrying(  # type: ignore[no-any-return]
            lambda c, o, resent: self._pwrite(c, o, mv, offset, xids, resent), not append
        )

    def _pwrite(self, conn: Connection, oid: int, mv: memoryview, offset: int,
                xids: dict[int, int], resent: bool) -> tuple[int, int]:  # fmt: skip
        chunk = min(CHUNK, conn.max_payload)
        inflight: deque[Transaction] = deque()
        pos = written = 0
        end = offset
        try:
            while pos < len(mv) or inflight:
                while pos < len(mv) and len(inflight) < WINDOW:
                    n = min(chunk, len(mv) - pos)
                    xid = xids.get(pos)
                    if xid is None:
                        xid = xids[pos] = self._services.resender.next_xid()
                    inflight.append(
                        conn.start(
                            Command.WRITE,
                            oid=oid,
                            offset=offset + pos,
                            data=mv[pos : pos + n],
                            xid=xid,
                            resent=resent,
                        )
                    )
                    pos += n
                reply = conn.wait(inflight.popleft(), self.name)
                written += reply.length
                end = reply.offset
            return written, end
        finally:
            for tx in inflight:
                conn.cancel(tx)

    # --- RawIOBase ------------------------------------------------------------

    def readable(self) -> bool:
        return (self._flags & os.O_ACCMODE) != os.O_WRONLY

    def writable(self) -> bool:
        return (self._flags & os.O_ACCMODE) != os.O_RDONLY

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.readable():
            raise io.UnsupportedOperation("file not open for reading")
        n = self.preadinto(buffer, self._pos)
        self._pos += n
        return n

    def readall(self) -> bytes:
        buf = bytearray(max(self.fstat().size - self._pos, 0))
        del buf[self.readinto(buf) :]
        while more := self.read(CHUNK):  # the file may have grown since fstat
            buf += more
        return bytes(buf)

    def write(self, data: Any) -> int:
        if not self.writable():
            raise io.UnsupportedOperation("file not open for writing")
        mv = memoryview(data).cast("B")
        self._services.held.push_all()  # held writes (of any handle) are older: first
        written, end = self._writing(mv, self._pos)
        self._pos = end
        return int(written)

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            new = pos
        elif whence == os.SEEK_CUR:
            new = self._pos + pos
        elif whence == os.SEEK_END:
            new = self.fstat().size + pos
        else:
            raise ValueError(f"invalid whence ({whence})")
        if new < 0:
            raise OSError(22, "Invalid argument", self.name)
        self._pos = new
        return new

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._change(Command.FTRUNCATE, offset=size)
        return size

    def fstat(self) -> Attr:
        reply = self._retrying(lambda c, o, _: c.call(Command.FSTAT, self.name, oid=o))
        return reply["attr"]  # type: ignore[no-any-return]

    def stat(self) -> os.stat_result:
        return self._services.stat_result(self.fstat())

    def fallocate(self, offset: int, length: int, mode: int = 0) -> None:
        """Allocate (mode 0) or, with Linux FALLOC_FL_* flags, punch or keep size."""
        # (Collapsing or inserting a range moves data: twice is not once.)
        self._change(
            Command.FALLOCATE, not mode & MOVES_DATA, offset=offset, length=length, mode=mode
        )

    # --- write-behind ------------------------------------------------------------

    def write_behind(self, data: Any, offset: int) -> int:
        """Send a write and return without waiting for the server's answer.

        The data is in the socket when this returns, so the caller may reuse
        its buffer. Requests on a connection are applied in order, so later
        reads and attribute requests see it. A failure is kept and raised by
        the next :meth:`drain` (which ``fsync`` and ``close`` call), as a
        failed page writeback is on a local filesystem. At most
        ``WRITE_BEHIND_BYTES`` of this file, and the client's
        ``write_behind_limit`` of all its files, are unanswered at a time.
        """
        self._services.held.push_all()  # held writes (of any handle) are older: first
        return self._send_behind(*self.handle(), memoryview(data).cast("B"), offset)

    def _send_behind(self, conn: Connection, oid: int, mv: memoryview, offset: int) -> int:
        chunk = min(CHUNK, conn.max_payload)
        for pos in range(0, len(mv), chunk):
            piece = mv[pos : pos + chunk]
            n = len(piece)
            with self._behind:
                deadline = time.monotonic() + 2 * conn.timeout
                while self._behind_bytes >= WRITE_BEHIND_BYTES and time.monotonic() < deadline:
                    self._behind.wait(0.1)
                self._behind_bytes += n
                self._behind_count += 1
            self._services.write_budget.take(n, 2 * conn.timeout)
            try:
                conn.start(Command.WRITE, callback=lambda tx, n=n: self._written(tx, n),
                           behind=True, oid=oid, offset=offset + pos, data=piece)  # fmt: skip
            except OSError as e:
                self._settle(n, e)
                raise
        return len(mv)

    def _written(self, tx: Transaction, n: int) -> None:
        """Receive thread: one write-behind request was answered, or failed."""
        error: OSError | None = None
        if tx.error is not None:
            e = tx.error
            error = e if isinstance(e, OSError) else OSError(errno.EIO, str(e), self.name)
        elif tx.reply is None or tx.reply.status:
            code = tx.reply.status if tx.reply is not None else errno.EIO
            error = OSError(code, os.strerror(code), self.name)
        elif tx.reply.length != n:
            error = OSError(errno.EIO, f"short write ({tx.reply.length} of {n} bytes)", self.name)
        self._settle(n, error)

    def _settle(self, n: int, error: OSError | None) -> None:
        self._services.write_budget.give(n)
        with self._behind:
            self._behind_bytes -= n
            self._behind_count -= 1
            if error is not None and self._behind_error is None:
                self._behind_error = error
            self._behind.notify_all()

    # --- writes held back ---------------------------------------------------------

    def hold(self, data: Any, offset: int) -> bool:
        """Keep a write (under ``HOLD_BELOW`` bytes) back, to be sent later with
        others (see ``held.py``). Only while this client holds the file's exclusive
        cache lock through this handle, which the caller makes sure of against
        revocations; then call :meth:`push_if_due`. Does not block (it runs under the
        caller's lock). False if the lock's connection is gone: send it instead."""
        pair = self._pair
        if pair[0].closed or self._flags & os.O_APPEND:
            return False  # (an append lands where the server's end is when it is sent)
        if not len(data):
            return True
        with self._held_lock:
            if self._held_on is None:
                self._held_on = pair
            elif self._held_on != pair:
                return False  # reopened since: what is held goes with the old one
            self._services.held.added(self, self._held.add(offset, data))
        return True

    def push_if_due(self) -> None:
        """Send held writes if this file or the client holds enough of them."""
        with self._held_lock:
            due = self._held.bytes >= PUSH_BYTES or len(self._held) > MAX_EXTENTS
        if due:
            self.push()
        held = self._services.held
        if held.bytes > held.limit:
            held.push_all()

    def push(self) -> None:
        """Send the held writes behind (without waiting for the server's answers)."""
        if not self._held.bytes and not self._push_lock.locked():
            return  # (a push under way is waited for: what it sends is older)
        with self._push_lock:
            with self._held_lock:
                n, extents, pair = self._take_held()
            try:
                # On the connection they were made under, never reopened: held under
                # a lock, they must not be applied once it went with that connection.
                for offset, data in extents:
                    self._send_behind(*pair, memoryview(data), offset)
            except OSError:
                pass  # kept as this file's write-behind error (flush/fsync/close)
            except Exception as e:  # not one of ours: reported, never silently lost
                log.exception("sending held writes of %s failed", self.name)
                self._failed(OSError(errno.EIO, f"held writes lost: {e}", self.name))
            finally:
                with self._held_lock:  # only now: until sent, others must wait for them
                    self._services.held.taken(self, n, bool(self._held.bytes))

    def _take_held(self) -> tuple[int, list[tuple[int, bytearray]], tuple[Connection, int]]:
        """(bytes, extents, where they were made); nothing is held after. Under
        ``_held_lock``."""
        pair, self._held_on = self._held_on, None
        return self._held.bytes, self._held.take(), pair or self._pair

    def drop_held(self, conn: Connection) -> None:
        """``conn`` (and the lock the writes were held under) is gone."""
        with self._held_lock:
            if self._held_on is None or self._held_on[0] is not conn:
                return
            n, _, _ = self._take_held()
            self._services.held.taken(self, n, False)
        why = f"connection to {conn.address} lost"
        self._failed(OSError(errno.EIO, f"held writes lost: {why}", self.name))

    def _failed(self, error: OSError) -> None:
        with self._behind:
            if self._behind_error is None:
                self._behind_error = error

    def write_back(self) -> bool:
        """Send held writes and wait for every write-behind request to be answered; a
        failure stays to be reported by :meth:`drain`. False if not answered in time."""
        self.push()
        with self._behind:
            deadline = time.monotonic() + 2 * self._conn.timeout + 1
            while self._behind_count and time.monotonic() < deadline:
                self._behind.wait(0.1)
            return not self._behind_count

    def drain(self) -> None:
        """Wait for every write-behind request; raise the first failure (once)."""
        if not self.write_back():
            raise OSError(errno.ETIMEDOUT, "writes were not answered in time", self.name)
        with self._behind:
            error, self._behind_error = self._behind_error, None
        if error is not None:
            raise error

    # --- cache locks ----------------------------------------------------------------

    def cache_lock(self, exclusive: bool = False, start: int = 0, length: int = 0,
                   abandon: Callable[[], bool] | None = None) -> CacheGrant | None:  # fmt: skip
        """Ask the server for a cache lock on a range (length 0: to the end).

        Shared: this client may serve reads of the range from a cache. Exclusive:
        it may also keep writes back. Other clients' conflicting locks are
        revoked first (they write back and drop their caches). The grant carries
        the file's attributes as they are now, and how many handles of other
        clients have it open for writing. ``on_revoke(keep, start, length)``,
        if set, runs when the server takes the lock back, after unanswered
        writes have reached the server; ``keep`` is 0 (shared) or 2 (nothing).
        ``abandon``: stop waiting (and return None) once it says so; the lock may
        still be granted later (and is then revoked like any other).
        """
        conn, oid = self.handle()
        self._services.grants.register(conn, oid, self)
        tx = conn.start(Command.CACHE, oid=oid, offset=start, length=length,
                        type=CacheMode.EXCLUSIVE if exclusive else CacheMode.SHARED)  # fmt: skip
        if abandon is None:
            reply = conn.wait(tx, self.name)  # (PENDING while others give way)
        else:
            while not tx.done.acquire(timeout=ABANDON_POLL):
                if abandon():
                    conn.cancel(tx)
                    return None
            reply = conn.result(tx, self.name)
        return CacheGrant(reply["attr"], reply["writers"], reply["watchers"])

    def granted_at_open(self, exclusive: bool) -> CacheGrant | None:
        """The lock granted with the open, if it is enough and still ours (once)."""
        with self._lock:
            granted, self._granted = self._granted, 2
        if granted == CacheMode.RELEASE or (exclusive and granted == CacheMode.SHARED):
            return None
        return CacheGrant(self.attr, self.writers_elsewhere, self.watchers_elsewhere)

    def cache_release(self, start: int = 0, length: int = 0) -> None:
        conn, oid = self.handle()
        conn.call(
            Command.CACHE, self.name, oid=oid, offset=start, length=length, type=CacheMode.RELEASE
        )

    def revoked(self, keep: int, start: int, length: int) -> None:
        """The server takes (part of) our cache lock back: write back, then tell the
        owner of the cache. Runs on the client's revocation thread."""
        with self._lock:
            self._granted = 2
        if self.on_revoke is not None:
            self.on_revoke(keep, start, length)  # the owner writes back (all its handles)
        else:
            self.write_back()  # a failure stays for the next flush, fsync or close

    def fsync(self, datasync: bool = False) -> None:
        """Make everything written so far durable on the server."""
        self.drain()
        conn, oid = self.handle()
        conn.call(Command.FSYNC, self.name, oid=oid, datasync=int(datasync))

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a remote file has no local file descriptor")

    def close_async(self) -> None:
        """Close without waiting for the server's answer (a write that failed and was
        not reported yet is logged)."""
        if self.closed:
            return
        self.push()
        conn, oid = self._pair

        # Revocations reach this file until the server has closed the handle: one
        # that comes first must still wait for the writes sent behind.
        def closed(_tx: Transaction | None) -> None:
            self._services.grants.unregister(conn, oid)
            self._services.files.closed(conn, oid)
            if self._behind_error is not None:  # nobody is left to report it to
                log.warning("%s: a write after close failed: %s", self.name, self._behind_error)

        try:
            if conn.closed:
                raise ConnectionError
            conn.start(Command.CLOSE, callback=closed, behind=True, oid=oid)
        except OSError:
            closed(None)
        super().close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            try:
                self.drain()  # a failure is raised, after the handle is closed all the same
            except ConnectionError:
                pass  # the server dropped the handle with the connection
        finally:
            try:
                conn, oid = self._pair
                if not conn.closed:
                    conn.call(Command.CLOSE, self.name, oid=oid)
            except ConnectionError:
                pass  # the server dropped the handle with the connection
            finally:
                # Only now: a revocation during the drain must still write back first.
                self._services.grants.unregister(*self._pair)
                self._services.files.closed(*self._pair)
                super().close()
