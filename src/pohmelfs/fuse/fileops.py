"""Open files through the mount: opening and creating, reads (answered from the
client's receive thread: ``reads.py``), writes (held back, written behind or
sent at once: see ``write``), flush, release, fsync, fallocate, advisory locks,
and the sizes other clients tell of."""

from __future__ import annotations

import errno
import os
import stat
import threading
from contextlib import nullcontext

from .. import protocol as p
from ..client.file import RemoteFile
from ..client.held import HOLD_BELOW
from . import kernel as k
from .attrs import kernel_attr, stale
from .namespace import Namespace
from .nodes import Node
from .parts import MountParts
from .reply import Replier

PAGE = 4096
RESIZE_WAIT = 0.2  # seconds a new size is waited for in the kernel before we answer
EMPTY = 256  # RESIZE's ``last`` when there is no last byte to store
OPEN_FLAGS_PASSED = (
    os.O_ACCMODE | os.O_TRUNC | os.O_APPEND | os.O_SYNC | os.O_DSYNC | os.O_NONBLOCK | os.O_EXCL
    | os.O_CREAT
)  # fmt: skip


class FileOps:
    def __init__(self, parts: MountParts, namespace: Namespace) -> None:
        self.client = parts.client
        self.opts = parts.opts
        self.kernel = parts.kernel
        self.nodes = parts.nodes
        self.files = parts.files
        self.remote = parts.remote
        self.attrs = parts.attrs
        self.reads = parts.reads
        self.locks = parts.locks
        self.cache = parts.cache
        self.leases = parts.leases
        self._namespace = namespace  # a create is a change of names too
        self._handle_ids = parts.handle_ids

    def close(self) -> None:
        for f in self.files.take_all():
            try:
                f.close()
            except OSError:
                pass
        self.reads.close()

    def _new_file(self, f: RemoteFile, node: Node) -> int:
        fh = next(self._handle_ids)
        f.on_resize = lambda attr, last: self._resized(node.nodeid, attr, last)
        self.files.add(node.nodeid, fh, f)
        return fh

    def _open_remote(self, req: k.Request, path: bytes, flags: int, perm: int) -> RemoteFile:
        if self.opts.writeback:
            # The kernel's writeback cache appends by itself and may read pages of a
            # file opened write-only (to fill partly written pages): ask for both.
            flags &= ~os.O_APPEND
            if flags & os.O_ACCMODE == os.O_WRONLY:
                try:
                    rw = (flags & ~os.O_ACCMODE) | os.O_RDWR
                    cred = self.remote.cred(req)
                    return RemoteFile(self.client.services, path, rw, perm, "", cred)
                except PermissionError:
                    pass
        # Coherent: a shared cache lock comes with the open when nothing conflicts.
        cache = 0 if self.cache is not None else 2
        return RemoteFile(self.client.services, path, flags, perm, "", self.remote.cred(req), cache)

    def open(self, req: k.Request, reply: Replier) -> None:
        flags = req.args.flags & OPEN_FLAGS_PASSED & ~(os.O_CREAT | os.O_EXCL)
        node = self.remote.node(req.nodeid)
        writes = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        try:
            with self.attrs.file_changing(node.nodeid) if writes else nullcontext():
                f = self._open_remote(req, node.path(), flags, 0)
        except FileNotFoundError:
            raise stale(node) from None
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
        if not self.kernel.flags & k.DIRECT_IO_ALLOW_MMAP:
            return 0
        if f.writable() or f.writers_elsewhere:
            return k.FOPEN_DIRECT_IO
        return 0

    def create(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.remote.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        flags = (req.args.flags & OPEN_FLAGS_PASSED) | os.O_CREAT
        with self._namespace.changing((parent, name, True)):
            f = self._open_remote(req, path, flags, req.args.mode & 0o7777)
        self.attrs.dir_changed(parent, f.directory)
        node = self.nodes.remember(parent, name, f.attr.ino, f.attr.nlink)
        if self.leases is not None:
            self.leases.drop(node.nodeid)  # (an existing file by another name of it)
        fh = self._new_file(f, node)
        open_flags = 0
        if self.cache is not None:
            self.cache.ensure(node, f, exclusive=False)
            self.cache.keep_cache(node.nodeid)
            open_flags = self._direct_io(f)
        entry = k.pack_entry(node.nodeid, 0, kernel_attr(f.attr), self.attrs.name_timeout(parent),
                             self.attrs.attr_timeout(node.nodeid))  # fmt: skip
        reply.ok(entry, k.pack_open(fh, open_flags))

    def read(self, req: k.Request, reply: Replier) -> None:
        a = req.args
        f = self.remote.file(a.fh)
        if self.cache is None or a.read_flags & k.READ_LOCKOWNER:
            # A direct read puts nothing in the page cache: it needs no lock (the
            # server makes a writer on another client write back first).
            self.reads.start(f, a.offset, a.size, reply)
            return
        # A page-cache fill (it never waits for a revocation: see coherent.py). A fill
        # through a handle open for writing is a fault of its shared mapping (its
        # read(2) calls are direct), whose pages may be dirtied without our knowing:
        # it takes the exclusive lock, so another client's read has them written back.
        node, cache = self.remote.node(req.nodeid), self.cache
        how = cache.read_started(node, f, f.writable())
        done = lambda: cache.read_done(node.nodeid, how, a.offset, a.size)  # noqa: E731
        self.reads.start(f, a.offset, a.size, reply, done)

    def write(self, req: k.Request, reply: Replier) -> None:
        # Under the exclusive lock a small write is held back (client/held.py): no
        # request until more come, something else is asked, or a time-out. Others
        # are written behind: the kernel waits for each write(2), so answering once
        # the data is in the socket (not once the server has applied it) lets the
        # next write overlap this one. With HANDLE_KILLPRIV_V2 the kernel no longer asks
        # for security.capability before every write; it flags the writes that
        # must clear set-id bits, which we do synchronously.
        a = req.args
        f = self.remote.file(a.fh)
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
                    self._kill_suid(req, self.remote.node(req.nodeid), a.fh)
                reply.ok(k.pack_write(a.size))
                return
            cache.ensure(self.remote.node(req.nodeid), f, exclusive=True)
        data = req.data[: a.size]
        if a.write_flags & k.WRITE_KILL_SUIDGID:
            f.pwrite(data, a.offset)
            self._kill_suid(req, self.remote.node(req.nodeid), a.fh)
        elif cache is not None and cache.watched(req.nodeid):
            f.pwrite(data, a.offset)  # answered once the other mounts know the new size
        elif cache is None or a.size >= HOLD_BELOW or not cache.hold(req.nodeid, f, data, a.offset):
            # answered before the server: errors come back from flush/fsync/close
            f.write_behind(data, a.offset)
        reply.ok(k.pack_write(a.size))

    def _kill_suid(self, req: k.Request, node: Node, fh: int) -> None:
        mode = self.remote.object_attr(req, node, fh).mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            self.remote.object(req, node, fh).chmod(stat.S_IMODE(mode) & ~kill)

    def flush(self, req: k.Request, reply: Replier) -> None:
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

    def release(self, req: k.Request, reply: Replier) -> None:
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

    def fsync(self, req: k.Request, reply: Replier) -> None:
        self.remote.file(req.args.fh).fsync(bool(req.args.fsync_flags & k.FSYNC_FDATASYNC))
        reply.ok()

    def fallocate(self, req: k.Request, reply: Replier) -> None:
        a = req.args
        self.remote.file(a.fh).fallocate(a.offset, a.length, a.mode)
        reply.ok()

    def interrupt(self, req: k.Request, reply: Replier) -> None:
        # Other requests finish quickly or time out; a blocked lock wait ends now.
        self.locks.interrupt(req.args.unique)

    def _resized(self, nodeid: int, attr: p.Attr, last: int) -> None:
        """Revocation thread: another client changed the size of a file open here. A
        fault in a mapping checks the kernel's own size, asking nobody: storing the
        file's true last byte raises it (a stored page that is not whole stays not
        up to date), and that page is dropped again at once (no lock covers it)."""
        notify = self.kernel.notify
        if not 0 <= last < EMPTY or not attr.size:
            self.kernel.invalidate(nodeid, False)  # shrunk: the next stat or read asks
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

    # --- advisory locks (fcntl, flock) ----------------------------------------------

    def getlk(self, req: k.Request, reply: Replier) -> None:
        self.locks.getlk(req, self.remote.file(req.args.fh), reply)

    def setlk(self, req: k.Request, reply: Replier) -> None:
        self.locks.setlk(req, self.remote.file(req.args.fh), reply, wait=False)

    def setlkw(self, req: k.Request, reply: Replier) -> None:
        self.locks.setlk(req, self.remote.file(req.args.fh), reply, wait=True)
