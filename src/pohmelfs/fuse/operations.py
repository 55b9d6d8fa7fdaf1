"""The filesystem behind the mount: FUSE requests carried out with the client core.

Depends only on injected objects (a :class:`~pohmelfs.Client` and a reply
writer), so it is testable without a kernel. READ is asynchronous (see
``reads.py``: the client's receive thread answers the kernel); everything else
runs inline in the FUSE reader thread that received it. ``reply.errno_of`` is
the one place where failures become the errno an application sees.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from .. import protocol as p
from ..client.client import Client
from ..client.file import RemoteFile
from ..client.held import HOLD_BELOW
from ..protocol import Command, Cred
from . import kernel as k
from .coherent import CacheState
from .directories import DirectoryOps, OpenDir
from .leases import Lease, Leases
from .locks import FuseLocks
from .names import NameLocks
from .namespace import NamespaceOps
from .nodes import ROOT_ID, Node, NodeTable
from .openfiles import OpenFiles
from .reads import DirectReads
from .reply import Replier, errno_of
from .xattrs import ExtendedAttributeOps

__all__ = ["Operations", "Options", "Replier", "errno_of"]

log = logging.getLogger("pohmelfs.fuse")

PAGE = 4096
RESIZE_WAIT = 0.2  # seconds a new size is waited for in the kernel before we answer
EMPTY = 256  # RESIZE's ``last`` when there is no last byte to store
OPEN_FLAGS_PASSED = (
    os.O_ACCMODE | os.O_TRUNC | os.O_APPEND | os.O_SYNC | os.O_DSYNC | os.O_NONBLOCK | os.O_EXCL
    | os.O_CREAT
)  # fmt: skip


def kernel_attr(a: p.Attr) -> k.Attr:
    return k.Attr(a.ino, a.size, a.blocks, a.atime_ns, a.mtime_ns, a.ctime_ns, a.mode, a.nlink,
                  a.uid, a.gid, a.rdev, a.blksize)  # fmt: skip


@dataclass
class Options:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    max_write: int = 1 << 20
    splice: bool = False  # READ data socket -> pipe -> /dev/fuse, no copy in Python
    writeback: bool = False  # the kernel buffers writes in its page cache (experimental)
    coherent: bool = False  # kernel caching under the server's cache locks
    locked_attr_timeout: float = 60.0  # how long attributes are kept while a lock is held
    # The kernel checks permissions itself (default_permissions), before a request
    # reaches us: a removal may then be answered before the server has done it.
    kernel_checks: bool = False
    # close(2) sends the file's writes without waiting for them (coherent only: others
    # still see them, since a revocation waits); their failures are only logged.
    async_close: bool = False


class Operations(NamespaceOps, DirectoryOps, ExtendedAttributeOps):
    def __init__(self, client: Client, options: Options | None = None) -> None:
        self.client = client
        self.opts = options or Options()
        self.kernel_flags = 0  # what INIT negotiated (set by the session)
        self.epochs = False  # the kernel takes INC_EPOCH (set by the session)
        root = client.request(Command.LOOKUP, "/", cred=client.cred, path=b"/")["attr"]
        self.nodes = NodeTable(root.ino)
        # The export's longest name: longer ones are refused here too, also where the
        # mount answers a lookup itself (a name it knows is not there).
        self.name_max = client.connection().statfs.namemax or 255
        self.files = OpenFiles()
        self.dirs: dict[int, OpenDir] = {}
        self.dir_attrs: dict[int, p.Attr] = {}  # see _dir_changed
        self._dirs_lock = threading.Lock()
        self._fh = itertools.count(1)
        self._groups: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}
        self.reads = DirectReads(self.opts.splice, self.opts.max_write)
        self.locks = FuseLocks(self._invalidate)
        self.cache = (
            CacheState(self._invalidate, self._node_handles) if self.opts.coherent else None
        )
        if self.cache is not None:
            client.on_disconnect.append(self.cache.lost_all)
        self.leases = (
            Leases(client, lambda nodeid: self._invalidate(nodeid, False))
            if self.opts.coherent else None
        )  # fmt: skip
        self.names = (
            NameLocks(client, self._bump_epoch, self._names_released)
            if self.opts.coherent else None
        )  # fmt: skip
        # Set by the session: writes a notification to the kernel.
        self.notify: Callable[[list[Any]], None] | None = None
        self.handlers: dict[int, Callable[[k.Request, Replier], None]] = {
            op: getattr(self, "op_" + op.name.lower())
            for op in k.Op
            if hasattr(self, "op_" + op.name.lower())
        }

    # --- dispatch ---------------------------------------------------------------

    def dispatch(self, req: k.Request, reply: Replier) -> None:
        handler = self.handlers.get(req.opcode)
        if handler is None:
            reply.error(errno.ENOSYS)
            return
        try:
            handler(req, reply)
        except Exception as e:
            if not isinstance(e, OSError):
                log.exception("%s failed", k.Op(req.opcode).name)
            reply.error(errno_of(e))

    def close(self) -> None:
        for f in self.files.take_all():
            try:
                f.close()
            except OSError:
                pass
        self.reads.close()
        if self.names is not None:
            self.names.close()

    # --- helpers ----------------------------------------------------------------

    def cred(self, req: k.Request) -> Cred:
        uid, gid, pid = req.header.uid, req.header.gid, req.header.pid
        return Cred(uid, gid, self._supplementary_groups(pid, uid))

    def _supplementary_groups(self, pid: int, uid: int) -> tuple[int, ...]:
        now = time.monotonic()
        cached = self._groups.get((pid, uid))
        if cached is not None and cached[0] > now:
            return cached[1]
        groups: tuple[int, ...] = ()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("Groups:"):
                        groups = tuple(int(g) for g in line.split()[1:])
                        break
        except (OSError, ValueError):
            pass
        if len(self._groups) > 4096:
            self._groups.clear()
        self._groups[(pid, uid)] = (now + 1.0, groups)
        return groups

    def node(self, nodeid: int) -> Node:
        node = self.nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown node")
        return node

    def call(self, cmd: Command, req: k.Request, path: bytes, **fields: Any) -> p.Message:
        return self.client.request(cmd, path, cred=self.cred(req), path=path, **fields)

    def entry(self, parent: Node, name: bytes, attr: p.Attr, timeout: float,
              lease: Lease | None = None) -> bytes:  # fmt: skip
        # A directory has no second name: a reused inode number is another object.
        links = 1 if stat.S_ISDIR(attr.mode) else attr.nlink
        node = self.nodes.remember(parent, name, attr.ino, links)
        if lease is not None and self.leases is not None:
            self.leases.bind(lease, node.nodeid, attr.ino, self.files.node_open(node.nodeid))
        # A node new to the kernel with a lease: a revocation before the kernel had it
        # could not reach it; the GETATTR that follows is answered from the lease.
        new_leased = lease is not None and node.lookups == 1
        attr_timeout = 0.0 if new_leased else self._attr_timeout(node.nodeid)
        return k.pack_entry(node.nodeid, 0, kernel_attr(attr), timeout, attr_timeout)

    def attr_out(self, attr: p.Attr, nodeid: int = 0) -> bytes:
        return k.pack_attr_out(kernel_attr(attr), self._attr_timeout(nodeid))

    def _names_cached(self) -> bool:
        return self.names is not None and self.epochs

    def _name_timeout(self, parent: Node, take: bool = False) -> float:
        """How long the kernel may keep a name (found or not) in ``parent``: coherent,
        while the directory's lock is held (``take``: taking it if need be)."""
        if self.names is None:
            return self.opts.entry_timeout
        if not self.epochs:
            return 0.0
        return self.names.take(parent) if take else self.names.held(parent.nodeid)

    def _attr_timeout(self, nodeid: int) -> float:
        """Coherent: long under the file's (or directory's) cache lock; otherwise none
        once names are cached (no path walk brings fresh attributes then)."""
        if self.cache is not None and self.cache.locked(nodeid):
            return self.opts.locked_attr_timeout
        if self.names is not None and self.names.held(nodeid):
            return self.opts.locked_attr_timeout
        if self.leases is not None and self.leases.held(nodeid):
            return self.opts.locked_attr_timeout
        return 0.0 if self._names_cached() else self.opts.attr_timeout

    def _file_changing(self, *nodeids: int) -> AbstractContextManager[None]:
        """Around this mount's own change of files (see ``Leases.changing``)."""
        return self.leases.changing(*nodeids) if self.leases is not None else nullcontext()

    def _bump_epoch(self) -> None:
        if self.notify is not None:
            self.notify(k.notify_inc_epoch())

    def _node_handles(self, nodeid: int) -> list[RemoteFile]:
        return self.files.of_node(nodeid)

    def _new_file(self, f: RemoteFile, node: Node) -> int:
        fh = next(self._fh)
        f.on_resize = lambda attr, last: self._resized(node.nodeid, attr, last)
        self.files.add(node.nodeid, fh, f)
        return fh

    def _handle_of(self, node: Node, fh: int | None = None) -> RemoteFile | None:
        """An open handle of this node (``fh`` if given): it reaches the very file the
        kernel means even after its name was removed or reused."""
        f = self.files.get(fh) if fh is not None else None
        return f if f is not None else self.files.any_of_node(node.nodeid)

    def object_call(
        self, req: k.Request, node: Node, fh: int | None = None
    ) -> Callable[..., p.Message]:
        """A request sender aimed at the node's open handle if it has one, else its path."""
        f = self._handle_of(node, fh)
        if f is None:
            path = node.path()
            return lambda cmd, **fields: self.call(cmd, req, path, **fields)
        conn, oid = f.handle()
        cred = self.cred(req)
        return lambda cmd, **fields: conn.call(cmd, f.name, cred=cred, path=b"", oid=oid, **fields)

    def object_attr(self, req: k.Request, node: Node, fh: int | None = None) -> p.Attr:
        f = self._handle_of(node, fh)
        if f is not None:
            return f.fstat()
        return self.call(Command.LOOKUP, req, node.path())["attr"]  # type: ignore[no-any-return]

    def file(self, fh: int) -> RemoteFile:
        f = self.files.get(fh)
        if f is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return f

    # --- names and attributes ------------------------------------------------------

    def op_lookup(self, req: k.Request, reply: Replier) -> None:
        parent = self.node(req.nodeid)
        name = req.names[0]
        if len(name) > self.name_max:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        timeout = self._name_timeout(parent, take=True)
        names = self.names if timeout and self._names_cached() else None
        # Known not there: only where the kernel checked the right to look (the
        # server would say EACCES instead).
        if names is not None and self.opts.kernel_checks and names.missing(parent.nodeid, name):
            reply.ok(k.pack_entry(0, 0, None, timeout, 0))
            return
        path = self.nodes.child_path(parent, name)
        lease = None
        try:
            if names is not None and self.leases is not None:
                attr, lease = self.leases.lookup(self.cred(req), path)  # (names kept: worth it)
            else:
                attr = self.call(Command.LOOKUP, req, path)["attr"]
        except FileNotFoundError:
            if names is None:
                raise
            if self.opts.kernel_checks:  # (before the answer: a create follows it)
                names.missed(parent.nodeid, parent.path())
            reply.ok(k.pack_entry(0, 0, None, timeout, 0))  # the kernel keeps "not found"
            return
        reply.ok(self.entry(parent, name, attr, timeout, lease))

    def op_forget(self, req: k.Request, reply: Replier) -> None:
        self._forget(req.nodeid, req.args.nlookup)  # no reply

    def op_batch_forget(self, req: k.Request, reply: Replier) -> None:
        for nodeid, nlookup in k.parse_forgets(req):
            self._forget(nodeid, nlookup)

    def _forget(self, nodeid: int, nlookup: int) -> None:
        self.nodes.forget(nodeid, nlookup)
        if self.nodes.get(nodeid) is not None:
            return
        if self.leases is not None:
            self.leases.forget(nodeid)
        if self.names is not None:
            self.names.forget(nodeid)
            self._names_released(nodeid)
            if self.cache is not None and not self.files.node_open(nodeid):
                self.cache.forget(nodeid)

    def op_getattr(self, req: k.Request, reply: Replier) -> None:
        args = req.args
        after = self._dir_attrs_after(req.nodeid)
        if after is not None:
            reply.ok(self.attr_out(after, req.nodeid))  # see _dir_changed
            return
        fh = args.fh if args.getattr_flags & k.GETATTR_FH else None
        node = self.node(req.nodeid)
        f = self._handle_of(node, fh)
        if self.cache is not None and f is not None:  # fresh attributes: hold a lock
            self.cache.ensure(node, f, exclusive=False)
        # Not open here, and names kept: its lease's attributes, or a lease with them.
        leases = (
            self.leases if f is None and node.linked and node.nodeid != ROOT_ID
            and self._names_cached() else None
        )  # fmt: skip
        if leases is not None:
            kept = leases.attr(node.nodeid, node.ino)
            if kept is not None:
                reply.ok(self.attr_out(kept, node.nodeid))
                return
        # Coherent, a stat by name asks by name: unless this mount holds the lock
        # on its directory, the name may mean another file by now.
        by_name = (
            self.cache is not None and fh is None and node.nodeid != ROOT_ID and node.linked
            and not (node.parent is not None and self._name_timeout(node.parent))
        )  # fmt: skip
        try:
            if leases is not None:
                attr, lease = leases.lookup(self.cred(req), node.path())
                leases.bind(lease, node.nodeid, node.ino, False)  # (not if another file now)
            elif by_name:
                attr = self.call(Command.LOOKUP, req, node.path())["attr"]
            else:
                attr = self.object_attr(req, node, fh)
        except FileNotFoundError:
            raise _stale(node) from None
        if (by_name or leases is not None) and attr.ino != node.ino:
            raise _stale(node)
        reply.ok(self.attr_out(attr, node.nodeid))

    def op_setattr(self, req: k.Request, reply: Replier) -> None:
        with self._file_changing(req.nodeid):
            self._setattr(req, reply)

    def _setattr(self, req: k.Request, reply: Replier) -> None:
        a = req.args
        self._dir_attrs_stale(req.nodeid)
        node = self.node(req.nodeid)
        fh = a.fh if a.valid & k.FATTR_FH else None
        handle = self._handle_of(node, fh)
        call = self.object_call(req, node, fh)
        if a.valid & k.FATTR_MODE:
            call(Command.CHMOD, mode=a.mode & 0o7777)
        if a.valid & (k.FATTR_UID | k.FATTR_GID):
            uid = a.uid if a.valid & k.FATTR_UID else p.ID_UNCHANGED
            gid = a.gid if a.valid & k.FATTR_GID else p.ID_UNCHANGED
            call(Command.CHOWN, uid=uid, gid=gid)
        if a.valid & k.FATTR_SIZE:
            if handle is not None and handle.writable():
                handle.truncate(a.size)
            else:
                self.call(Command.TRUNCATE, req, node.path(), offset=a.size)
        if a.valid & (k.FATTR_ATIME | k.FATTR_MTIME | k.FATTR_ATIME_NOW | k.FATTR_MTIME_NOW):
            which = 0
            if a.valid & k.FATTR_ATIME_NOW:
                which |= p.UTIME_ATIME_NOW
            elif not a.valid & k.FATTR_ATIME:
                which |= p.UTIME_ATIME_OMIT
            if a.valid & k.FATTR_MTIME_NOW:
                which |= p.UTIME_MTIME_NOW
            elif not a.valid & k.FATTR_MTIME:
                which |= p.UTIME_MTIME_OMIT
            call(Command.UTIMES, atime_ns=_ns(a.atime, a.atimensec),
                 mtime_ns=_ns(a.mtime, a.mtimensec), which=which)  # fmt: skip
        reply.ok(self.attr_out(self.object_attr(req, node, fh)))

    def op_readlink(self, req: k.Request, reply: Replier) -> None:
        reply.ok(self.call(Command.READLINK, req, self.node(req.nodeid).path())["target"])

    def op_statfs(self, req: k.Request, reply: Replier) -> None:
        s = self.client.request(Command.STATFS, "/", cred=self.cred(req))["statfs"]
        reply.ok(k.pack_statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize,
                               s.namemax, s.frsize))  # fmt: skip

    # --- files --------------------------------------------------------------------------

    def _open_remote(self, req: k.Request, path: bytes, flags: int, perm: int) -> RemoteFile:
        if self.opts.writeback:
            # The kernel's writeback cache appends by itself and may read pages of a
            # file opened write-only (to fill partly written pages): ask for both.
            flags &= ~os.O_APPEND
            if flags & os.O_ACCMODE == os.O_WRONLY:
                try:
                    rw = (flags & ~os.O_ACCMODE) | os.O_RDWR
                    return RemoteFile(self.client.services, path, rw, perm, "", self.cred(req))
                except PermissionError:
                    pass
        # Coherent: a shared cache lock comes with the open when nothing conflicts.
        cache = 0 if self.cache is not None else 2
        return RemoteFile(self.client.services, path, flags, perm, "", self.cred(req), cache)

    def op_open(self, req: k.Request, reply: Replier) -> None:
        flags = req.args.flags & OPEN_FLAGS_PASSED & ~(os.O_CREAT | os.O_EXCL)
        node = self.node(req.nodeid)
        writes = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        try:
            with self._file_changing(node.nodeid) if writes else nullcontext():
                f = self._open_remote(req, node.path(), flags, 0)
        except FileNotFoundError:
            raise _stale(node) from None
        fh = self._new_file(f, node)
        open_flags = 0
        if self.cache is not None:
            self.cache.ensure(node, f, exclusive=False)
            if self.cache.keep_cache(node.nodeid):
                open_flags = k.FOPEN_KEEP_CACHE
            open_flags |= self._direct_io(f)
        reply.ok(k.pack_open(fh, open_flags))

    def _direct_io(self, f: RemoteFile) -> int:
        """Under ``coherent``, a file open for writing here or on another client
        bypasses the page cache: the kernel then sends each write(2) as one WRITE (a
        cached write is split at the first partial page it lacks) and each read(2) as
        one READ (a cached read may take its pages from before and after a
        revocation), both atomic under the server's range locks. Shared mmap still
        works (DIRECT_IO_ALLOW_MMAP, 7.39); without that, files stay cached."""
        if not self.kernel_flags & k.DIRECT_IO_ALLOW_MMAP:
            return 0
        if f.writable() or f.writers_elsewhere:
            return k.FOPEN_DIRECT_IO
        return 0

    def op_create(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        flags = (req.args.flags & OPEN_FLAGS_PASSED) | os.O_CREAT
        with self._changing((parent, name, True)):
            f = self._open_remote(req, path, flags, req.args.mode & 0o7777)
        self._dir_changed(parent, f.directory)
        node = self.nodes.remember(parent, name, f.attr.ino, f.attr.nlink)
        if self.leases is not None:
            self.leases.drop(node.nodeid)  # (an existing file by another name of it)
        fh = self._new_file(f, node)
        open_flags = 0
        if self.cache is not None:
            self.cache.ensure(node, f, exclusive=False)
            self.cache.keep_cache(node.nodeid)
            open_flags = self._direct_io(f)
        entry = k.pack_entry(node.nodeid, 0, kernel_attr(f.attr), self._name_timeout(parent),
                             self._attr_timeout(node.nodeid))  # fmt: skip
        reply.ok(entry, k.pack_open(fh, open_flags))

    def op_read(self, req: k.Request, reply: Replier) -> None:
        a = req.args
        f = self.file(a.fh)
        if self.cache is None or a.read_flags & k.READ_LOCKOWNER:
            # A direct read puts nothing in the page cache: it needs no lock (the
            # server makes a writer on another client write back first).
            self.reads.start(f, a.offset, a.size, reply)
            return
        # A page-cache fill (it never waits for a revocation: see coherent.py). A fill
        # through a handle open for writing is a fault of its shared mapping (its
        # read(2) calls are direct), whose pages may be dirtied without our knowing:
        # it takes the exclusive lock, so another client's read has them written back.
        node, cache = self.node(req.nodeid), self.cache
        how = cache.read_started(node, f, f.writable())
        done = lambda: cache.read_done(node.nodeid, how, a.offset, a.size)  # noqa: E731
        self.reads.start(f, a.offset, a.size, reply, done)

    def op_write(self, req: k.Request, reply: Replier) -> None:
        # Under the exclusive lock a small write is held back (client/held.py): no
        # request until more come, something else is asked, or a time-out. Others
        # are written behind: the kernel waits for each write(2), so answering once
        # the data is in the socket (not once the server has applied it) lets the
        # next write overlap this one. With HANDLE_KILLPRIV_V2 the kernel no longer asks
        # for security.capability before every write; it flags the writes that
        # must clear set-id bits, which we do synchronously.
        a = req.args
        f = self.file(a.fh)
        if not f.writable():
            raise OSError(errno.EBADF, "file not open for writing")
        cache = self.cache
        if cache is not None and a.write_flags & k.WRITE_CACHE:
            # Write-back of pages dirtied through a shared mapping: the page is under
            # writeback until we answer, and a revocation dropping pages waits for it,
            # so this never waits for a lock (the server revokes others' caches).
            f.write_behind(req.data[: a.size], a.offset)
            reply.ok(k.pack_write(a.size))
            return
        if cache is not None:
            if (a.write_flags & k.WRITE_LOCKOWNER and not cache.locked(req.nodeid)
                    and cache.contended(req.nodeid)):  # fmt: skip
                # A direct write while clients take turns: sent as it is, lockless,
                # and answered once applied (the server revokes others' caches first).
                # Not while this mount holds the file's shared lock (a page-cache
                # reader here): the write would wait in our session's queue for
                # others, and our answer to a revocation waits for our reads, which
                # queue behind it. Under the exclusive lock it waits in a grant.
                f.pwrite(req.data[: a.size], a.offset)
                if a.write_flags & k.WRITE_KILL_SUIDGID:
                    self._kill_suid(req, self.node(req.nodeid), a.fh)
                reply.ok(k.pack_write(a.size))
                return
            cache.ensure(self.node(req.nodeid), f, exclusive=True)
        data = req.data[: a.size]
        if a.write_flags & k.WRITE_KILL_SUIDGID:
            f.pwrite(data, a.offset)
            self._kill_suid(req, self.node(req.nodeid), a.fh)
        elif cache is not None and cache.watched(req.nodeid):
            f.pwrite(data, a.offset)  # answered once the other mounts know the new size
        elif cache is None or a.size >= HOLD_BELOW or not cache.hold(req.nodeid, f, data, a.offset):
            # answered before the server: errors come back from flush/fsync/close
            f.write_behind(data, a.offset)
        reply.ok(k.pack_write(a.size))

    def _kill_suid(self, req: k.Request, node: Node, fh: int) -> None:
        mode = self.object_attr(req, node, fh).mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            self.object_call(req, node, fh)(Command.CHMOD, mode=stat.S_IMODE(mode) & ~kill)

    def op_flush(self, req: k.Request, reply: Replier) -> None:
        # close(2): every write must have reached the server (close-to-open), and
        # a write that failed after write(2) returned is reported here.
        f = self.files.get(req.args.fh)
        if f is not None:
            if self.opts.async_close and self.cache is not None:
                f.push()
            else:
                f.drain()
            self.locks.flush(req.nodeid, f, req.args.lock_owner)
        reply.ok()

    def op_release(self, req: k.Request, reply: Replier) -> None:
        fh = req.args.fh
        f = self.files.get(fh)
        if f is not None:
            f.push()  # (mmap writeback after the last close) while revocations find it
        self.files.remove(req.nodeid, fh)
        if f is not None:
            if self.cache is not None:
                self.cache.handle_closed(req.nodeid, f)
            if req.args.release_flags & k.RELEASE_FLOCK_UNLOCK:
                self.locks.release(f, req.args.lock_owner)
            f.close_async()  # close(2) does not wait for RELEASE: neither do we
        reply.ok()

    def op_fsync(self, req: k.Request, reply: Replier) -> None:
        self.file(req.args.fh).fsync(bool(req.args.fsync_flags & k.FSYNC_FDATASYNC))
        reply.ok()

    def op_fallocate(self, req: k.Request, reply: Replier) -> None:
        a = req.args
        self.file(a.fh).fallocate(a.offset, a.length, a.mode)
        reply.ok()

    def op_interrupt(self, req: k.Request, reply: Replier) -> None:
        # Other requests finish quickly or time out; a blocked lock wait ends now.
        self.locks.interrupt(req.args.unique)

    def _resized(self, nodeid: int, attr: p.Attr, last: int) -> None:
        """Revocation thread: another client changed the size of a file open here. A
        fault in a mapping checks the kernel's own size, asking nobody: storing the
        file's true last byte raises it (a stored page that is not whole stays not
        up to date), and that page is dropped again at once (no lock covers it)."""
        if self.notify is None:
            return
        notify = self.notify
        if not 0 <= last < EMPTY or not attr.size:
            self._invalidate(nodeid, False)  # shrunk: the next stat or read asks
            return
        page = (attr.size - 1) & ~(PAGE - 1)

        def store() -> None:
            notify(k.notify_store(nodeid, attr.size - 1, bytes([last])))
            notify(k.notify_inval_inode(nodeid, page, PAGE))

        # The page may be locked by a read that waits for this very change to finish:
        # then the store completes after our answer instead of before.
        t = threading.Thread(target=store, daemon=True, name="pohmelfs-resize")
        t.start()
        t.join(RESIZE_WAIT)

    def _invalidate(self, nodeid: int, pages: bool = True, offset: int = 0,
                    length: int = -1) -> None:  # fmt: skip
        """Drop the kernel's cached attributes of a node, and its data (of the range;
        length -1: to the end) unless told not to."""
        if self.notify is not None:
            if not pages:
                offset, length = -1, 0
            self.notify(k.notify_inval_inode(nodeid, offset, length))

    # --- advisory locks (fcntl, flock) -------------------------------------------------------

    def op_getlk(self, req: k.Request, reply: Replier) -> None:
        self.locks.getlk(req, self.file(req.args.fh), reply)

    def op_setlk(self, req: k.Request, reply: Replier) -> None:
        self.locks.setlk(req, self.file(req.args.fh), reply, wait=False)

    def op_setlkw(self, req: k.Request, reply: Replier) -> None:
        self.locks.setlk(req, self.file(req.args.fh), reply, wait=True)


def _stale(node: Node) -> OSError:
    """The kernel's cached name points at something another client removed. ESTALE
    makes the VFS look the path up again (LOOKUP_REVAL) and retry, so an open with
    O_CREAT creates it and a stat reports ENOENT, instead of failing on stale data."""
    if node.nodeid == ROOT_ID:
        return OSError(errno.ENOENT, "the export's root is gone")
    return OSError(errno.ESTALE, "removed by another client")


def _ns(sec: int, nsec: int) -> int:
    if sec >= 1 << 63:
        sec -= 1 << 64
    return sec * 1_000_000_000 + nsec
