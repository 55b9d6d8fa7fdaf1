"""The blocking, thread-safe client library: ``os``/``shutil``-like calls."""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .. import protocol as p
from ..protocol import Attr, Command, Cred, LockType
from ..security.config import ClientSecurity
from .calls import CallerCalls
from .connection import Connection
from .connector import ConnectionTerms, Connector
from .copies import copy_file
from .file import RemoteFile
from .grants import Grants, Revocable
from .held import HeldFiles
from .membership import Membership
from .oslike import (
    ScanEntry,
    check_open_args,
    io_wrapped,
    mode_flags,
    process_umask,
    stat_result,
    statvfs_result,  # fmt: skip
    utime_args,
)
from .pathlocks import PathLocks
from .paths import PathArg, encode_path
from .registry import FileRegistry
from .replicated import ReplicatedConnection
from .resend import Resender, resending
from .serverset import ServerSet, parse_server, parse_servers
from .services import FileServices, WriteBudget

log = logging.getLogger("pohmelfs.client")
T = TypeVar("T")
# Requests that may safely be sent again after the connection carrying them died.
IDEMPOTENT = frozenset(
    {
        Command.LOOKUP,
        Command.READDIR,
        Command.READLINK,
        Command.STATFS,
        Command.GETXATTR,
        Command.LISTXATTR,
        Command.PING,
    }
)


class Client:
    """A connection to a pohmelfs export.

    ``servers`` is a list of ``"host:port[/prio=N]"`` (or one comma-separated
    string; the syntax: ``serverset.py``). Requests go to the server of the
    highest priority that answers; every change goes to all of them
    (``replicated.py``). Every call is thread-safe; many threads share one
    connection with their requests in flight at once. A call that gets no
    answer within ``timeout`` seconds raises ``TimeoutError`` (ETIMEDOUT); a
    lost connection is re-established by the next call. ``write_behind_limit``
    bounds the bytes written behind (``RemoteFile.write_behind``) and not yet
    answered, across all files: what a crash of this client could lose after
    ``write(2)`` returned. Writes a file holds back under an exclusive cache lock
    (``RemoteFile.hold``, used by the mount) are sent within ``dirty_timeout``
    seconds, and at once when more than ``held_limit`` bytes are held.

    ``secret_file`` names the file holding the key's shared secret (the server's
    ``--secret-file``, or one line of its exports file, ``key`` names which); the
    client then proves the key, checks the server proves it back, and tags every
    frame. Without one it connects only to an ``--insecure`` server (as a
    squashed identity). A wrong key raises PermissionError "authentication
    failed"; a client with a key never falls back to an unauthenticated server.
    ``tls_cert``, ``tls_key`` and ``tls_ca`` instead: mutual TLS 1.3 (the server's
    certificate must name the address's host, or ``tls_server_name``).
    ``unversioned``: changes leave the versions of objects alone (root only: a
    resync's, which sets them with ``set_version``). A server of the set that was
    lost is tried again every ``retry_every`` seconds (0: never) and, once it
    answers, resynced and taken back (``membership.py``; ``add_server`` likewise).
    ``majority``: a change needs more than half of the servers of the set; without a
    majority reachable it fails with EROFS (docs/design.md, "Partitions").
    """

    def __init__(
        self,
        servers: Sequence[str] | str,
        *,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
        cred: Cred | None = None,
        umask: int | None = None,
        max_payload: int = p.DEFAULT_MAX_PAYLOAD,
        write_behind_limit: int = 128 << 20,
        dirty_timeout: float = 3.0,
        held_limit: int = 64 << 20,
        notices: int = 0,
        secret_file: str | None = None,
        key: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        tls_server_name: str | None = None,
        unversioned: bool = False,
        retry_every: float = 5.0,
        majority: bool = False,
    ) -> None:
        self.security = ClientSecurity.from_options(
            secret_file=secret_file, key=key, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
            tls_server_name=tls_server_name)  # fmt: skip
        self.server_set = ServerSet(parse_servers(servers))
        self.notices = notices  # notifications beyond REVOKE (p.NOTICE_*): the mount's
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.cred = cred or Cred(os.geteuid(), os.getegid(), tuple(os.getgroups()))
        self._as_me = CallerCalls(self, self.cred)  # the requests by path, built there
        self.umask = process_umask() if umask is None else umask
        self.max_payload = max_payload
        # One client session: its id, and its request ids, across its connections.
        self.session = os.urandom(p.SESSION_SIZE)
        self.resender = Resender(self.connection)
        self.write_budget = WriteBudget(write_behind_limit)
        self.held = HeldFiles(held_limit, dirty_timeout)
        self.connector = Connector(
            self.server_set,
            ConnectionTerms(
                self.timeout,
                self.connect_timeout,
                max_payload,
                notices,
                self.security,
                self.session,
                self.resender.xids,
                self.held.push_all,
                unversioned,
                majority,
            ),
            self._notified,
            self._disconnected,
        )
        # Holders of cache locks (open files, the mount's leases and name locks) by
        # (connection, handle), which the server's REVOKEs name; open files by
        # handle, for its RESIZEs, and for renames made here (the path a file
        # reopens by after a lost connection).
        self.grants = Grants()
        self.files = FileRegistry()
        self.services = FileServices(self.connection, self.cred, self.grants, self.files,
                                     self.held, self.write_budget, self._stat_result,
                                     self.resender)  # fmt: skip
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        self._path_locks = PathLocks(self.services)  # the advisory locks taken by path
        self._key = dict(secret_file=secret_file, key=key, tls_cert=tls_cert, tls_key=tls_key,
                         tls_ca=tls_ca, tls_server_name=tls_server_name)  # fmt: skip
        self.membership = Membership(self.connector, self.connection, self.files.writing,  # type: ignore[arg-type]
                                     self._single, retry_every, self.cred)  # fmt: skip
        # Notifications run on threads of their own, never the reader's; several: one
        # revocation may wait (for writes, or changes sent ahead) while others go on.
        self._revoker = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pohmelfs-revoke")
        self._on_disconnect: list[Callable[[], None]] = []  # see when_disconnected
        self.connection()  # fail early when no server can be reached
        self.membership.begin()

    # --- connections ---------------------------------------------------------

    @property
    def servers(self) -> list[str]:
        """The servers' addresses, in the order they are tried."""
        return [spec.address for spec in self.server_set.by_priority()]

    def connection(self) -> Connection:
        """The connection requests go on: to the one server, or to the set (the lock
        server and the other live writable servers, ``replicated.py``)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        with self._lock:
            if self._closed:
                raise ValueError("client is closed")
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self._conn is not None:  # (before its loss is heard: never taken back)
                self.connector.group_lost(self._conn)
            self._conn = self.connector.connect()
            return self._conn

    def request(
        self, cmd: Command, shown: Any = None, shown2: Any = None, /, **fields: Any
    ) -> p.Message:
        """Send one protocol request and wait for its reply (the adapters' entry point).

        ``shown``/``shown2`` are the paths named in errors. A request whose
        connection is lost before its answer is sent again on the next one
        (``resend.py``: a change only if the server kept the session).
        """

        def send(conn: Connection, xid: int, resent: bool) -> p.Message:
            return conn.call(cmd, shown, shown2, xid=xid, resent=resent, **fields)

        return self.resender.call(send, cmd in IDEMPOTENT)

    def _on_connection(self, fn: Callable[[Connection], T], idempotent: bool) -> T:
        """fn(connection), again on the next connection if this one is lost under it."""
        return resending(lambda: (self.connection(), None), lambda c, _, __: fn(c), idempotent)

    def readdir(self, path: PathArg, cred: Cred | None = None) -> list[p.DirEntry]:
        """A directory's entries (raw names) with attributes: one streamed request."""
        raw = encode_path(path)

        def listing(conn: Connection) -> list[p.DirEntry]:
            tx = conn.start(Command.READDIR, cred=cred or self.cred, path=raw)
            return [e for frame in conn.stream(tx, path) for e in frame["entries"]]

        return self._on_connection(listing, True)

    def _notified(self, conn: Connection, msg: p.Message) -> None:
        """Receive thread: the server asks for something back (a cache lock) or tells
        of another client's change of a file open here (its size)."""
        if msg.cmd == Command.REVOKE:
            if isinstance(conn, ReplicatedConnection):
                conn.lock_server_revoked(msg)  # (at once: before anything else reads)
            self._revoker.submit(self.grants.revoke, conn, msg)
        elif msg.cmd == Command.RESIZE:
            self._revoker.submit(self.files.resized, conn, msg)
        elif msg.cmd == Command.MARKED and isinstance(conn, ReplicatedConnection):
            conn.behind_notified(conn.lock_server, msg)

    def when_disconnected(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` each time a connection is lost, and with it every cache
        lock, lease and name lock it held (on the thread that found it lost, often the
        receive thread: it must not wait for the server)."""
        self._on_disconnect.append(callback)

    def _disconnected(self, conn: Connection) -> None:
        if isinstance(conn, ReplicatedConnection):
            if not self._closed:
                self.connector.group_lost(conn)  # the others go on without it
            conn.close()  # its replicas' handles went with the lock server's
        for f in self.held.files():
            f.drop_held(conn)
        self.grants.connection_lost(conn)
        for callback in list(self._on_disconnect):
            try:
                callback()
            except Exception:
                log.exception("disconnect callback failed")

    def lease(
        self, path: PathArg, cred: Cred | None, holder: Revocable
    ) -> tuple[Attr, Connection, int]:
        """A path's attributes and, for a regular file nobody writes, a lease on them
        (a shared cache lock with no handle): its id, 0 if none. The server's
        revocation calls ``holder.revoked(keep, start, length)``; give it back with
        :meth:`unlease` on the connection it came by (it goes with it)."""
        raw = encode_path(path)

        def ask(conn: Connection) -> tuple[Connection, p.Message]:
            return conn, conn.call(Command.LEASE, path, cred=cred or self.cred, path=raw)

        conn, reply = self._on_connection(ask, True)  # (a lookup: sent again if need be)
        oid = reply.oid if reply["cached"] == 0 else 0
        if oid and not self.grants.register(conn, oid, holder):
            self.unlease(conn, oid)  # revoked before we could register it: not ours
            oid = 0
        return reply["attr"], conn, oid

    def unlease(self, conn: Connection, oid: int) -> None:
        """Give a lease back (without waiting)."""
        self.grants.unregister(conn, oid)
        if conn.closed:
            return
        try:
            conn.start(Command.CLOSE, behind=True, oid=oid)
        except OSError:
            pass  # the connection went, and the lease with it

    def _path_call(self, cmd: Command, path: PathArg, **fields: Any) -> p.Message:
        return self._as_me.call(cmd, path, **fields)

    def renamed(self, old: PathArg, new: PathArg, exchange: bool = False) -> None:
        """``old`` is now ``new`` (a rename made through this client; ``exchange``: and
        ``new`` is ``old``): open files at or below it reopen by their new path after
        a lost connection."""
        self.files.renamed(old, new, exchange)

    def close(self) -> None:
        self.membership.close()
        self.held.close()
        try:  # what files still hold goes out, and is waited for a while
            self.held.push_all()
            self.write_budget.drained(self.timeout)
        except OSError:
            pass
        self._path_locks.close()
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._revoker.shutdown(wait=False)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _single(self, address: str, unversioned: bool) -> Client:
        """A client of one server of the set, with this one's key (for a resync)."""
        return Client(
            [address],
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            unversioned=unversioned,
            retry_every=0,
            **self._key,
        )  # type: ignore[arg-type]

    def add_server(self, server: str) -> None:
        """A server (``HOST:PORT[/prio=N][/r|w|rw]``) joins the set while the client
        works. A writable one gets every change at once, is resynced from the lock
        server in the background, and is read from only once it is the same
        (``server_stats`` shows it ``resyncing``, then ``live``); a read-only one is
        live at once (it reads only files whose versions agree). OSError if it
        cannot be reached; ValueError if it is in the set already."""
        self.membership.add(parse_server(server))

    def remove_server(self, address: str) -> None:
        """Take a server out of the set while the client works: it gets no more
        changes (and so stays out: it would be stale). If it is the lock server, the
        next call goes to the next one, as after its loss. ValueError for a server
        not in the set, or the last live one."""
        with self._lock:  # (not while a new group is being made)
            self.connector.remove(address, self._conn)

    def modify_server(self, address: str, prio: int | None = None,
                      perm: str | None = None) -> None:  # fmt: skip
        """A server's priority (0-255): reads follow at once, the choice of lock server
        at the next connection. A new permission (``r``, ``w``, ``rw``) makes it
        leave the set and join again with it (a writable one resynced first).
        ValueError for a server not in the set or not live, or a bad value (nothing
        changes); OSError if it cannot be reached again (it stays, as gone)."""
        again = self.connector.modify(parse_server(address).address, prio, perm, self._conn)
        if again is not None:
            self.remove_server(again.address)
            self.membership.add(again, keep=True)

    def in_flight(self) -> int:
        conn = self._conn
        return conn.in_flight() if conn is not None and not conn.closed else 0

    def server_stats(self) -> list[dict[str, Any]]:
        """Each server of the set, highest priority first: its address, priority,
        state (live, gone...), role (``lock server``, ``replica`` or ``-``), and what
        this client sent it and heard back (requests, answers, errors, bytes, mean and
        longest latency, connections made)."""
        return self.connector.report(self._conn)

    def version(self, path: PathArg) -> tuple[int, int]:
        """The version of the object at ``path`` on the server (``server/versions.py``)
        and how many changes of it are under way there."""
        got = self._path_call(Command.VERSION, path)
        return got["version"], got["busy"]

    def set_version(self, path: PathArg, expect: int, version: int) -> None:
        """Set the object's version if it is still ``expect`` (else ESTALE; root only)."""
        self._path_call(Command.SETVERSION, path, expect=expect, version=version)

    def server_info(self) -> dict[str, Any]:
        """What the server announced at connect: capabilities and space."""
        conn = self.connection()
        s = conn.statfs
        return {
            "address": conn.address,
            "protocol_version": p.VERSION,
            "max_payload": conn.max_payload,
            "read_only": bool(conn.caps & p.Cap.READ_ONLY),
            "xattrs": bool(conn.caps & p.Cap.XATTR),
            "total_bytes": s.blocks * s.frsize,
            "used_bytes": (s.blocks - s.bfree) * s.frsize,
            "free_bytes": s.bavail * s.frsize,
        }

    # --- attributes -------------------------------------------------------------

    def _stat_result(self, a: Attr) -> os.stat_result:
        return stat_result(a, self._conn.fsid if self._conn else 0)

    def stat(self, path: PathArg) -> os.stat_result:
        """Attributes of ``path`` (the server never follows symlinks: lstat)."""
        return self._stat_result(self._as_me.lookup(path))

    lstat = stat

    def _mode_or_none(self, path: PathArg) -> int | None:
        """The mode of ``path``, or None where ``os.path`` would say it does not exist
        (but a server that does not answer is still an error, not a "no")."""
        try:
            return self.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENAMETOOLONG, errno.EACCES):
                return None
            raise

    def exists(self, path: PathArg) -> bool:
        return self._mode_or_none(path) is not None

    def isdir(self, path: PathArg) -> bool:
        mode = self._mode_or_none(path)
        return mode is not None and stat_mod.S_ISDIR(mode)

    def isfile(self, path: PathArg) -> bool:
        mode = self._mode_or_none(path)
        return mode is not None and stat_mod.S_ISREG(mode)

    def statvfs(self, path: PathArg = "/") -> os.statvfs_result:
        s = self._as_me.statfs(path)
        return statvfs_result(s, bool(self.connection().caps & p.Cap.READ_ONLY))

    def chmod(self, path: PathArg, mode: int) -> None:
        self._as_me.object(path).chmod(mode)

    def chown(self, path: PathArg, uid: int, gid: int) -> None:
        """Change owner and group; -1 leaves one unchanged (lchown semantics)."""
        self._as_me.object(path).chown(p.ID_UNCHANGED if uid == -1 else uid,
                                       p.ID_UNCHANGED if gid == -1 else gid)  # fmt: skip

    def utime(
        self,
        path: PathArg,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
    ) -> None:
        """Set access and modification times, as ``os.utime`` (never follows symlinks)."""
        self._as_me.object(path).utimes(*utime_args(times, ns))

    def truncate(self, path: PathArg, length: int) -> None:
        if length < 0:
            raise OSError(errno.EINVAL, "negative length", path)
        self._as_me.truncate(path, length)

    # --- directories ------------------------------------------------------------

    def scandir(self, path: PathArg = "/") -> Iterator[ScanEntry]:
        """All entries of a directory with their attributes, in one streamed request."""
        entries = self.readdir(path)
        as_str = isinstance(os.fspath(path), str)
        base = encode_path(path).rstrip(b"/")
        for e in entries:
            full = base + b"/" + e.name
            if as_str:
                yield ScanEntry(os.fsdecode(e.name), os.fsdecode(full), e.attr, self._stat_result)
            else:
                yield ScanEntry(e.name, full, e.attr, self._stat_result)

    def listdir(self, path: PathArg = "/") -> list[Any]:
        return [e.name for e in self.scandir(path)]

    def mkdir(self, path: PathArg, mode: int = 0o777) -> None:
        self._as_me.mkdir(path, mode & ~self.umask)

    def makedirs(self, path: PathArg, mode: int = 0o777, exist_ok: bool = False) -> None:
        """Create a directory and all missing parents with ONE request."""
        try:
            self._path_call(
                Command.MAKEDIRS, path, mode=mode & ~self.umask, parent_mode=0o777 & ~self.umask
            )
        except FileExistsError:
            if not exist_ok or not self.isdir(path):
                raise

    def rmdir(self, path: PathArg) -> None:
        self._as_me.rmdir(path)

    def rmtree(self, path: PathArg) -> None:
        """Remove a directory and everything below it with ONE request."""
        self._path_call(Command.RMTREE, path)

    def unlink(self, path: PathArg) -> None:
        self._as_me.unlink(path)

    remove = unlink

    def rename(
        self, src: PathArg, dst: PathArg, *, noreplace: bool = False, exchange: bool = False
    ) -> None:
        """Rename, replacing ``dst``; ``noreplace`` fails with EEXIST instead,
        ``exchange`` swaps the two names atomically."""
        flags = (1 if noreplace else 0) | (2 if exchange else 0)
        self._as_me.rename(src, dst, flags)
        self.renamed(src, dst, exchange)

    replace = rename

    def link(self, src: PathArg, dst: PathArg) -> None:
        self._as_me.link(src, dst)

    def symlink(self, target: PathArg, path: PathArg) -> None:
        """Create ``path`` as a symlink to ``target`` (stored as given, never followed)."""
        self._as_me.symlink(path, target)

    def readlink(self, path: PathArg) -> Any:
        target = self._as_me.readlink(path)
        return os.fsdecode(target) if isinstance(os.fspath(path), str) else target

    def mknod(self, path: PathArg, mode: int = 0o600 | stat_mod.S_IFREG, device: int = 0) -> None:
        """Create a FIFO, socket or empty regular file (device nodes are refused)."""
        kind = stat_mod.S_IFMT(mode) or stat_mod.S_IFREG
        perm = stat_mod.S_IMODE(mode) & ~self.umask
        self._as_me.mknod(path, kind | perm, device)

    # --- extended attributes ----------------------------------------------------

    def getxattr(self, path: PathArg, attribute: str | bytes) -> bytes:
        return bytes(self._as_me.object(path).getxattr(os.fsencode(attribute)))

    def setxattr(self, path: PathArg, attribute: str | bytes, value: bytes, flags: int = 0) -> None:
        if len(value) > p.MAX_XATTR_VALUE:
            raise OSError(
                errno.E2BIG, f"xattr values are limited to {p.MAX_XATTR_VALUE} bytes", path
            )
        self._as_me.object(path).setxattr(os.fsencode(attribute), bytes(value), flags)

    def listxattr(self, path: PathArg) -> list[str]:
        return [os.fsdecode(n) for n in self._as_me.object(path).listxattr()]

    def removexattr(self, path: PathArg, attribute: str | bytes) -> None:
        self._as_me.object(path).removexattr(os.fsencode(attribute))

    # --- advisory locks ------------------------------------------------------------

    def lock(self, path: PathArg, start: int = 0, length: int = 0, exclusive: bool = True,
             wait: bool = True) -> None:  # fmt: skip
        """Take an advisory record lock on ``length`` bytes at ``start`` (0: to the end).

        POSIX semantics across every client of the server: shared locks coexist,
        an exclusive one excludes all others; this client's own locks are
        replaced or split. Without ``wait`` a conflict raises BlockingIOError
        (EAGAIN). Locks go with :meth:`unlock`, :meth:`close` or a lost connection.
        """
        flags = p.LOCK_WAIT if wait else 0
        self._path_locks.request(
            path, start, length, LockType.WRLCK if exclusive else LockType.RDLCK, flags
        )

    def unlock(self, path: PathArg, start: int = 0, length: int = 0) -> None:
        """Release this client's locks on the range (0: to the end)."""
        self._path_locks.request(path, start, length, LockType.UNLCK, 0)

    def lock_holder(self, path: PathArg, start: int = 0, length: int = 0,
                    exclusive: bool = True) -> tuple[int, int, int, bool] | None:  # fmt: skip
        """Like F_GETLK: a lock of another client that the lock asked for would conflict
        with, as (start, length, pid, exclusive), or None."""
        want = LockType.WRLCK if exclusive else LockType.RDLCK
        reply = self._path_locks.request(path, start, length, want, 0, Command.GETLK)
        if reply["type"] == LockType.UNLCK:
            return None
        return reply.offset, reply.length, reply["pid"], reply["type"] == LockType.WRLCK

    # --- files ------------------------------------------------------------------

    def copy_file(self, src: PathArg, dst: PathArg) -> int:
        """Copy the file ``src`` to ``dst`` (made, or truncated) on the server: the data
        does not cross the network. Its bytes copied (``copies.py``)."""
        return copy_file(self.open, self.stat, src, dst)

    def open(
        self,
        path: PathArg,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """Open a remote file like the built-in ``open``.

        ``buffering=0`` (binary only) returns the raw :class:`RemoteFile`,
        whose ``readinto`` places data straight into the caller's buffer.
        """
        flags = mode_flags(mode)
        check_open_args(mode, buffering, encoding, errors, newline)
        raw = RemoteFile(self.services, os.fspath(path), flags, 0o666 & ~self.umask, mode)
        return io_wrapped(raw, mode, buffering, encoding, errors, newline)
