"""The filesystem behind the mount: FUSE requests carried out with the client core.

``Operations`` implements the typed interface (``filesystem.FileSystem``, a
method per opcode) and is where the mount's parts are made: the node and file
tables, the attribute policy, the coherent mount's cache locks, leases and name
locks, and the handlers of names (``namespace``), directories, extended
attributes and open files (``fileops``), each a collaborator with one job. It
depends only on injected objects (a :class:`~pohmelfs.Client` and the kernel's
channel), so it is testable without a kernel. READ is asynchronous (see
``reads.py``: the client's receive thread answers the kernel); everything else
runs inline in the FUSE reader thread that received it.
"""

from __future__ import annotations

import errno
import itertools
import os

from .. import protocol as p
from ..client.calls import CallerCalls
from ..client.client import Client
from . import kernel as k
from .attrs import AttrPolicy
from .channel import KernelChannel
from .coherent import CacheState
from .directories import Directories
from .fileops import FileOps
from .filesystem import FileSystem, Handler, dispatch, handlers
from .leases import Leases
from .locks import FuseLocks
from .names import NameLocks
from .namespace import Namespace
from .nodes import NodeTable
from .openfiles import OpenFiles
from .options import Options
from .parts import MountParts
from .reads import DirectReads
from .remote import Remote
from .reply import Replier, errno_of
from .xattrs import ExtendedAttributes

__all__ = ["Operations", "Options", "Replier", "errno_of"]


class Operations(FileSystem):
    def __init__(self, client: Client, options: Options | None = None,
                 kernel: KernelChannel | None = None) -> None:  # fmt: skip
        self.client = client
        self.opts = opts = options or Options()
        self.kernel = kernel = kernel or KernelChannel()
        root = CallerCalls(client, client.cred).lookup(b"/")
        self.nodes = nodes = NodeTable(root.ino)
        # The export's longest name: longer ones are refused here too, also where the
        # mount answers a lookup itself (a name it knows is not there).
        self.name_max = client.connection().statfs.namemax or 255
        self.files = files = OpenFiles()
        self.remote = remote = Remote(client, nodes, files)
        self.locks = FuseLocks(kernel.invalidate)
        coherent = opts.coherent
        self.cache = CacheState(kernel.invalidate, files.of_node) if coherent else None
        if self.cache is not None:
            client.when_disconnected(self.cache.lost_all)
        self.leases = (
            Leases(client, lambda nodeid: kernel.invalidate(nodeid, False)) if coherent else None
        )
        # (The attribute policy is made next; a released name lock reaches it after.)
        self.names = (
            NameLocks(client, kernel.new_epoch, lambda nodeid: self.attrs.names_released(nodeid))
            if coherent else None
        )  # fmt: skip
        self.attrs = attrs = AttrPolicy(opts, kernel, nodes, files, remote, self.cache,
                                        self.leases, self.names)  # fmt: skip
        parts = MountParts(client, opts, kernel, nodes, files, remote, attrs,
                           DirectReads(opts.splice, opts.max_write), self.locks, self.cache,
                           self.leases, self.names, itertools.count(1))  # fmt: skip
        self.namespace = Namespace(parts)
        self.directories = Directories(parts)
        self.xattrs = ExtendedAttributes(parts)
        self.fileops = FileOps(parts, self.namespace)
        self.handlers: dict[int, Handler] = handlers(self)

    def dispatch(self, req: k.Request, reply: Replier) -> None:
        dispatch(self.handlers, req, reply)

    def close(self) -> None:
        self.fileops.close()
        if self.names is not None:
            self.names.close()

    # --- names and attributes ------------------------------------------------------

    def lookup(self, req: k.Request, reply: Replier) -> None:
        parent = self.remote.node(req.nodeid)
        name = req.names[0]
        if len(name) > self.name_max:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        timeout = self.attrs.name_timeout(parent, take=True)
        names = self.names if timeout and self.attrs.names_cached() else None
        # Known not there: only where the kernel checked the right to look (the
        # server would say EACCES instead).
        if names is not None and self.opts.kernel_checks and names.missing(parent.nodeid, name):
            reply.ok(k.pack_entry(0, 0, None, timeout, 0))
            return
        path = self.nodes.child_path(parent, name)
        lease = None
        try:
            if names is not None and self.leases is not None:
                # (names kept: worth it)
                attr, lease = self.leases.lookup(self.remote.cred(req), path)
            else:
                attr = self.remote.caller(req).lookup(path)
        except FileNotFoundError:
            if names is None:
                raise
            if self.opts.kernel_checks:  # (before the answer: a create follows it)
                names.missed(parent.nodeid, parent.path())
            reply.ok(k.pack_entry(0, 0, None, timeout, 0))  # the kernel keeps "not found"
            return
        reply.ok(self.attrs.entry(parent, name, attr, timeout, lease))

    def forget(self, req: k.Request, reply: Replier) -> None:
        self._forget_node(req.nodeid, req.args.nlookup)  # no reply

    def batch_forget(self, req: k.Request, reply: Replier) -> None:
        for nodeid, nlookup in k.parse_forgets(req):
            self._forget_node(nodeid, nlookup)

    def _forget_node(self, nodeid: int, nlookup: int) -> None:
        self.nodes.forget(nodeid, nlookup)
        if self.nodes.get(nodeid) is not None:
            return
        if self.leases is not None:
            self.leases.forget(nodeid)
        if self.names is not None:
            self.names.forget(nodeid)
            self.attrs.names_released(nodeid)
            if self.cache is not None and not self.files.node_open(nodeid):
                self.cache.forget(nodeid)

    def getattr(self, req: k.Request, reply: Replier) -> None:
        reply.ok(self.attrs.getattr(req))

    def setattr(self, req: k.Request, reply: Replier) -> None:
        with self.attrs.file_changing(req.nodeid):
            self._set_attributes(req, reply)

    def _set_attributes(self, req: k.Request, reply: Replier) -> None:
        a = req.args
        self.attrs.dir_attrs_stale(req.nodeid)
        node = self.remote.node(req.nodeid)
        fh = a.fh if a.valid & k.FATTR_FH else None
        handle = self.remote.handle_of(node, fh)
        calls = self.remote.object(req, node, fh)
        if a.valid & k.FATTR_MODE:
            calls.chmod(a.mode & 0o7777)
        if a.valid & (k.FATTR_UID | k.FATTR_GID):
            uid = a.uid if a.valid & k.FATTR_UID else p.ID_UNCHANGED
            gid = a.gid if a.valid & k.FATTR_GID else p.ID_UNCHANGED
            calls.chown(uid, gid)
        if a.valid & k.FATTR_SIZE:
            if handle is not None and handle.writable():
                handle.truncate(a.size)
            else:
                self.remote.caller(req).truncate(node.path(), a.size)
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
            calls.utimes(_ns(a.atime, a.atimensec), _ns(a.mtime, a.mtimensec), which)
        reply.ok(self.attrs.attr_out(self.remote.object_attr(req, node, fh)))

    def readlink(self, req: k.Request, reply: Replier) -> None:
        reply.ok(self.remote.caller(req).readlink(self.remote.node(req.nodeid).path()))

    def statfs(self, req: k.Request, reply: Replier) -> None:
        s = self.remote.caller(req).statfs()
        reply.ok(k.pack_statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize,
                               s.namemax, s.frsize))  # fmt: skip

    # --- the rest, by the collaborator whose job it is --------------------------------

    def mknod(self, req: k.Request, reply: Replier) -> None:
        self.namespace.mknod(req, reply)

    def mkdir(self, req: k.Request, reply: Replier) -> None:
        self.namespace.mkdir(req, reply)

    def symlink(self, req: k.Request, reply: Replier) -> None:
        self.namespace.symlink(req, reply)

    def link(self, req: k.Request, reply: Replier) -> None:
        self.namespace.link(req, reply)

    def unlink(self, req: k.Request, reply: Replier) -> None:
        self.namespace.unlink(req, reply)

    def rmdir(self, req: k.Request, reply: Replier) -> None:
        self.namespace.rmdir(req, reply)

    def rename(self, req: k.Request, reply: Replier) -> None:
        self.namespace.rename(req, reply)

    def rename2(self, req: k.Request, reply: Replier) -> None:
        self.namespace.rename2(req, reply)

    def opendir(self, req: k.Request, reply: Replier) -> None:
        self.directories.opendir(req, reply)

    def readdir(self, req: k.Request, reply: Replier) -> None:
        self.directories.readdir(req, reply)

    def readdirplus(self, req: k.Request, reply: Replier) -> None:
        self.directories.readdirplus(req, reply)

    def releasedir(self, req: k.Request, reply: Replier) -> None:
        self.directories.releasedir(req, reply)

    def fsyncdir(self, req: k.Request, reply: Replier) -> None:
        self.directories.fsyncdir(req, reply)

    def setxattr(self, req: k.Request, reply: Replier) -> None:
        self.xattrs.setxattr(req, reply)

    def getxattr(self, req: k.Request, reply: Replier) -> None:
        self.xattrs.getxattr(req, reply)

    def listxattr(self, req: k.Request, reply: Replier) -> None:
        self.xattrs.listxattr(req, reply)

    def removexattr(self, req: k.Request, reply: Replier) -> None:
        self.xattrs.removexattr(req, reply)

    def open(self, req: k.Request, reply: Replier) -> None:
        self.fileops.open(req, reply)

    def create(self, req: k.Request, reply: Replier) -> None:
        self.fileops.create(req, reply)

    def read(self, req: k.Request, reply: Replier) -> None:
        self.fileops.read(req, reply)

    def write(self, req: k.Request, reply: Replier) -> None:
        self.fileops.write(req, reply)

    def flush(self, req: k.Request, reply: Replier) -> None:
        self.fileops.flush(req, reply)

    def release(self, req: k.Request, reply: Replier) -> None:
        self.fileops.release(req, reply)

    def fsync(self, req: k.Request, reply: Replier) -> None:
        self.fileops.fsync(req, reply)

    def fallocate(self, req: k.Request, reply: Replier) -> None:
        self.fileops.fallocate(req, reply)

    def getlk(self, req: k.Request, reply: Replier) -> None:
        self.fileops.getlk(req, reply)

    def setlk(self, req: k.Request, reply: Replier) -> None:
        self.fileops.setlk(req, reply)

    def setlkw(self, req: k.Request, reply: Replier) -> None:
        self.fileops.setlkw(req, reply)

    def interrupt(self, req: k.Request, reply: Replier) -> None:
        self.fileops.interrupt(req, reply)


def _ns(sec: int, nsec: int) -> int:
    if sec >= 1 << 63:
        sec -= 1 << 64
    return sec * 1_000_000_000 + nsec
