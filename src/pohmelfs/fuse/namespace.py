"""Creating, removing and renaming names through the mount.

Each change is synchronous except a run of unlinks under the directory's
exclusive lock (``NameLocks.send_ahead``). Under a directory's lock this mount
also keeps two things the kernel would otherwise ask the server for:

- the directory's attributes as the server had them right after this mount's
  change (the kernel drops them after every change and asks again at once);
- the directory's listing, if it read one (``NameLocks.missed``): every change
  is noted there, a failed one drops it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from .. import protocol as p
from ..client.client import Client
from ..protocol import Command, Cred
from . import kernel as k
from .leases import Leases
from .names import NameLocks
from .nodes import Node, NodeTable
from .reply import Replier

log = logging.getLogger("pohmelfs.fuse")

RENAME_WHITEOUT = 4
RENAME_EXCHANGE = 2


class NamespaceOps:
    """Mixed into the operations class, which provides these."""

    client: Client
    nodes: NodeTable
    names: NameLocks | None
    leases: Leases | None
    opts: Any
    dir_attrs: dict[int, p.Attr]
    _dirs_lock: threading.Lock
    node: Callable[[int], Node]
    cred: Callable[[k.Request], Cred]
    call: Callable[..., p.Message]
    entry: Callable[[Node, bytes, p.Attr, float], bytes]
    _name_timeout: Callable[..., float]
    _names_cached: Callable[[], bool]
    _invalidate: Callable[[int, bool], None]
    _file_changing: Callable[..., AbstractContextManager[None]]

    # --- what this mount keeps of a directory it changes ----------------------------

    def _names_released(self, nodeid: int) -> None:
        """A directory's lock went (or the node): its attributes go too."""
        self._dir_attrs_stale(nodeid)
        self._invalidate(nodeid, False)

    def _dir_attrs_stale(self, nodeid: int) -> None:
        """This mount changes the node's own attributes: forget what _dir_changed kept."""
        with self._dirs_lock:
            self.dir_attrs.pop(nodeid, None)

    def _dir_attrs_after(self, nodeid: int) -> p.Attr | None:
        """Attributes kept by ``_dir_changed`` for the kernel's next GETATTR (once)."""
        with self._dirs_lock:
            after = self.dir_attrs.pop(nodeid, None)
        if after is not None and self.names is not None and self.names.held(nodeid):
            return after
        return None

    def _dir_changed(self, parent: Node, after: p.Attr | None) -> None:
        """This mount changed names in ``parent``; ``after``: the directory as the
        server had it right after (None: not known yet). The kernel drops the
        directory's attributes after such a change and asks again: while the
        directory's lock is held, nobody else can have changed it since, so the
        next GETATTR is answered with these."""
        with self._dirs_lock:
            if after is None or not (self.names is not None and self.names.held(parent.nodeid)):
                self.dir_attrs.pop(parent.nodeid, None)
                return
            known = self.dir_attrs.get(parent.nodeid)
            if known is None or after.ctime_ns >= known.ctime_ns:  # replies may cross
                self.dir_attrs[parent.nodeid] = after

    @contextmanager
    def _changing(self, *changes: tuple[Node, bytes, bool]) -> Iterator[None]:
        """Note each (directory, name, there after) in the directory's listing once
        the change is made; if it fails, the listing may be wrong and goes. A file
        that loses or gains a name here changes (links, ctime): its lease goes."""
        children = [self.nodes.child(parent, name) for parent, name, _ in changes]
        with self._file_changing(*(c.nodeid for c in children if c is not None)):
            yield from self._noting(changes)

    def _noting(self, changes: tuple[tuple[Node, bytes, bool], ...]) -> Iterator[None]:
        names = self.names
        if names is None:
            yield
            return
        try:
            yield
        except BaseException:
            for parent, name, _ in changes:
                names.note(parent.nodeid, name, None)
            raise
        for parent, name, present in changes:
            names.note(parent.nodeid, name, present)

    # --- creating names -------------------------------------------------------------

    def op_mknod(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        with self._changing((parent, name, True)):
            made = self.call(Command.MKNOD, req, path, mode=req.args.mode, rdev=req.args.rdev)
        self._made(reply, parent, name, made)

    def op_mkdir(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        with self._changing((parent, name, True)):
            made = self.call(Command.MKDIR, req, path, mode=req.args.mode & 0o7777)
        self._made(reply, parent, name, made)

    def op_symlink(self, req: k.Request, reply: Replier) -> None:
        parent, (name, target) = self.node(req.nodeid), req.names
        path = self.nodes.child_path(parent, name)
        with self._changing((parent, name, True)):
            made = self.client.request(Command.SYMLINK, path, cred=self.cred(req),
                                       target=target, path=path)  # fmt: skip
        self._made(reply, parent, name, made)

    def op_link(self, req: k.Request, reply: Replier) -> None:
        old = self.node(req.args.oldnodeid)
        parent, name = self.node(req.nodeid), req.names[0]
        new = self.nodes.child_path(parent, name)
        with self._file_changing(old.nodeid), self._changing((parent, name, True)):
            made = self.client.request(Command.LINK, old.path(), new, cred=self.cred(req),
                                       path=old.path(), new=new)  # fmt: skip
        self._made(reply, parent, name, made)

    def _made(self, reply: Replier, parent: Node, name: bytes, made: p.Message) -> None:
        self._dir_changed(parent, made["dir"])
        reply.ok(self.entry(parent, name, made["attr"], self._name_timeout(parent)))

    # --- removing and renaming ---------------------------------------------------------

    def op_unlink(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        names = self.names
        send = lambda done: self._unlink_ahead(req, path, done)  # noqa: E731
        with self._changing((parent, name, False)):
            if names is not None and self._may_send_ahead() and names.send_ahead(parent, send):
                self._dir_changed(parent, None)  # the server has not done it yet
            else:
                self._dir_changed(parent, self.call(Command.UNLINK, req, path)["dir"])
        self.nodes.unlinked(parent, name)
        reply.ok()

    def _may_send_ahead(self) -> bool:
        """May a removal be answered before the server made it? Only where the kernel
        checks permissions and names are cached, on a writable export."""
        return (
            self.opts.kernel_checks and self._names_cached()
            and not self.client.connection().caps & p.Cap.READ_ONLY
        )  # fmt: skip

    def _unlink_ahead(self, req: k.Request, path: bytes, done: Callable[[], None]) -> None:
        """Sent under the directory's exclusive lock: the kernel has checked the
        permissions and the name exists (no other client can have changed it), so
        the answer is known; a failure only the server could see is logged."""

        def answered(tx: Any) -> None:
            done()
            status = tx.reply.status if tx.reply is not None else errno.EIO
            if tx.error is not None or status:
                log.error(
                    "unlink of %r sent ahead failed: %s", path, tx.error or os.strerror(status)
                )

        self.client.connection().start(Command.UNLINK, callback=answered, behind=True,
                                       cred=self.cred(req), path=path)  # fmt: skip

    def op_rmdir(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.node(req.nodeid), req.names[0]
        with self._changing((parent, name, False)):
            done = self.call(Command.RMDIR, req, self.nodes.child_path(parent, name))
        self._dir_changed(parent, done["dir"])
        self.nodes.unlinked(parent, name)
        reply.ok()

    def op_rename(self, req: k.Request, reply: Replier) -> None:
        self._rename(req, reply, 0)

    def op_rename2(self, req: k.Request, reply: Replier) -> None:
        self._rename(req, reply, req.args.flags)

    def _rename(self, req: k.Request, reply: Replier, flags: int) -> None:
        if flags & RENAME_WHITEOUT:
            reply.error(errno.EINVAL)
            return
        old_parent, new_parent = self.node(req.nodeid), self.node(req.args.newdir)
        old_name, new_name = req.names
        old = self.nodes.child_path(old_parent, old_name)
        new = self.nodes.child_path(new_parent, new_name)
        exchange = flags == RENAME_EXCHANGE
        with self._changing((old_parent, old_name, exchange), (new_parent, new_name, True)):
            done = self.client.request(Command.RENAME, old, new, cred=self.cred(req),
                                       path=old, new=new, flags=flags)  # fmt: skip
        self._dir_changed(old_parent, done["dir"])
        self._dir_changed(new_parent, done["new_dir"])
        self.nodes.renamed(old_parent, old_name, new_parent, new_name, exchange=exchange)
        self.client.renamed(old, new, exchange)  # what open files reopen by
        reply.ok()
