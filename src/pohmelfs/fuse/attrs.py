"""One attribute policy for the mount: for a node, which attributes the kernel
gets and how long it may keep them (and its names).

The sources, in the order GETATTR tries them: what this mount kept of a
directory it just changed under the directory's lock; the file's open handle
(under the file's cache lock when coherent); the lease of a file open nowhere
here (names cached); the server by name (coherent, where the name may mean
another file by now); the server by path or handle. Time-outs: long under a
lock (the file's cache lock, the directory's name lock, a lease), none once
names are cached without one (no path walk brings fresh attributes then), the
``-o attr_timeout`` otherwise.
"""

from __future__ import annotations

import errno
import stat
import threading
from contextlib import AbstractContextManager, nullcontext

from .. import protocol as p
from . import kernel as k
from .channel import KernelChannel
from .coherent import CacheState
from .leases import Lease, Leases
from .names import NameLocks
from .nodes import ROOT_ID, Node, NodeTable
from .openfiles import OpenFiles
from .options import Options
from .remote import Remote


def kernel_attr(a: p.Attr) -> k.Attr:
    return k.Attr(a.ino, a.size, a.blocks, a.atime_ns, a.mtime_ns, a.ctime_ns, a.mode, a.nlink,
                  a.uid, a.gid, a.rdev, a.blksize)  # fmt: skip


def stale(node: Node) -> OSError:
    """The kernel's cached name points at something another client removed. ESTALE
    makes the VFS look the path up again (LOOKUP_REVAL) and retry, so an open with
    O_CREAT creates it and a stat reports ENOENT, instead of failing on stale data."""
    if node.nodeid == ROOT_ID:
        return OSError(errno.ENOENT, "the export's root is gone")
    return OSError(errno.ESTALE, "removed by another client")


class AttrPolicy:
    def __init__(self, opts: Options, kernel: KernelChannel, nodes: NodeTable, files: OpenFiles,
                 remote: Remote, cache: CacheState | None, leases: Leases | None,
                 names: NameLocks | None) -> None:  # fmt: skip
        self.opts = opts
        self._kernel = kernel
        self._nodes, self._files, self._remote = nodes, files, remote
        self.cache, self.leases, self.names = cache, leases, names
        self._dir_attrs: dict[int, p.Attr] = {}  # see dir_changed
        self._dirs_lock = threading.Lock()

    # --- time-outs ------------------------------------------------------------------

    def names_cached(self) -> bool:
        return self.names is not None and self._kernel.epochs

    def name_timeout(self, parent: Node, take: bool = False) -> float:
        """How long the kernel may keep a name (found or not) in ``parent``: coherent,
        while the directory's lock is held (``take``: taking it if need be)."""
        if self.names is None:
            return self.opts.entry_timeout
        if not self._kernel.epochs:
            return 0.0
        return self.names.take(parent) if take else self.names.held(parent.nodeid)

    def attr_timeout(self, nodeid: int) -> float:
        if self.cache is not None and self.cache.locked(nodeid):
            return self.opts.locked_attr_timeout
        if self.names is not None and self.names.held(nodeid):
            return self.opts.locked_attr_timeout
        if self.leases is not None and self.leases.held(nodeid):
            return self.opts.locked_attr_timeout
        return 0.0 if self.names_cached() else self.opts.attr_timeout

    # --- replies ----------------------------------------------------------------------

    def entry(self, parent: Node, name: bytes, attr: p.Attr, timeout: float,
              lease: Lease | None = None) -> bytes:  # fmt: skip
        """The kernel's entry for a name found or made (the node remembered)."""
        # A directory has no second name: a reused inode number is another object.
        links = 1 if stat.S_ISDIR(attr.mode) else attr.nlink
        node = self._nodes.remember(parent, name, attr.ino, links)
        if lease is not None and self.leases is not None:
            self.leases.bind(lease, node.nodeid, attr.ino, self._files.node_open(node.nodeid))
        # A node new to the kernel with a lease: a revocation before the kernel had it
        # could not reach it; the GETATTR that follows is answered from the lease.
        new_leased = lease is not None and node.lookups == 1
        attr_timeout = 0.0 if new_leased else self.attr_timeout(node.nodeid)
        return k.pack_entry(node.nodeid, 0, kernel_attr(attr), timeout, attr_timeout)

    def attr_out(self, attr: p.Attr, nodeid: int = 0) -> bytes:
        return k.pack_attr_out(kernel_attr(attr), self.attr_timeout(nodeid))

    def getattr(self, req: k.Request) -> bytes:
        """GETATTR's answer (see the module's note for the sources)."""
        args = req.args
        after = self.dir_attrs_after(req.nodeid)
        if after is not None:
            return self.attr_out(after, req.nodeid)
        fh = args.fh if args.getattr_flags & k.GETATTR_FH else None
        node = self._remote.node(req.nodeid)
        f = self._remote.handle_of(node, fh)
        if self.cache is not None and f is not None:  # fresh attributes: hold a lock
            self.cache.ensure(node, f, exclusive=False)
        # Not open here, and names kept: its lease's attributes, or a lease with them.
        leases = (
            self.leases if f is None and node.linked and node.nodeid != ROOT_ID
            and self.names_cached() else None
        )  # fmt: skip
        if leases is not None:
            kept = leases.attr(node.nodeid, node.ino)
            if kept is not None:
                return self.attr_out(kept, node.nodeid)
        # Coherent, a stat by name asks by name: unless this mount holds the lock
        # on its directory, the name may mean another file by now.
        by_name = (
            self.cache is not None and fh is None and node.nodeid != ROOT_ID and node.linked
            and not (node.parent is not None and self.name_timeout(node.parent))
        )  # fmt: skip
        try:
            if leases is not None:
                attr, lease = leases.lookup(self._remote.cred(req), node.path())
                leases.bind(lease, node.nodeid, node.ino, False)  # (not if another file now)
            elif by_name:
                attr = self._remote.caller(req).lookup(node.path())
            else:
                attr = self._remote.object_attr(req, node, fh)
        except FileNotFoundError:
            raise stale(node) from None
        if (by_name or leases is not None) and attr.ino != node.ino:
            raise stale(node)
        return self.attr_out(attr, node.nodeid)

    # --- changes made here --------------------------------------------------------------

    def file_changing(self, *nodeids: int) -> AbstractContextManager[None]:
        """Around this mount's own change of files (see ``Leases.changing``)."""
        return self.leases.changing(*nodeids) if self.leases is not None else nullcontext()

    def names_released(self, nodeid: int) -> None:
        """A directory's lock went (or the node): its attributes go too."""
        self.dir_attrs_stale(nodeid)
        self._kernel.invalidate(nodeid, False)

    def dir_attrs_stale(self, nodeid: int) -> None:
        """This mount changes the node's own attributes: forget what dir_changed kept."""
        with self._dirs_lock:
            self._dir_attrs.pop(nodeid, None)

    def dir_attrs_after(self, nodeid: int) -> p.Attr | None:
        """Attributes kept by ``dir_changed`` for the kernel's next GETATTR (once)."""
        with self._dirs_lock:
            after = self._dir_attrs.pop(nodeid, None)
        if after is not None and self.names is not None and self.names.held(nodeid):
            return after
        return None

    def dir_changed(self, parent: Node, after: p.Attr | None) -> None:
        """This mount changed names in ``parent``; ``after``: the directory as the
        server had it right after (None: not known yet). The kernel drops the
        directory's attributes after such a change and asks again: while the
        directory's lock is held, nobody else can have changed it since, so the
        next GETATTR is answered with these."""
        with self._dirs_lock:
            if after is None or not (self.names is not None and self.names.held(parent.nodeid)):
                self._dir_attrs.pop(parent.nodeid, None)
                return
            known = self._dir_attrs.get(parent.nodeid)
            if known is None or after.ctime_ns >= known.ctime_ns:  # replies may cross
                self._dir_attrs[parent.nodeid] = after
