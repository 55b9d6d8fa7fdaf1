"""Creating, removing and renaming names through the mount.

Each change is synchronous except a run of unlinks under the directory's
exclusive lock (``NameLocks.send_ahead``). Under a directory's lock this mount
also keeps two things the kernel would otherwise ask the server for:

- the directory's attributes as the server had them right after this mount's
  change (the kernel drops them after every change and asks again at once:
  ``AttrPolicy.dir_changed``);
- the directory's listing, if it read one (``NameLocks.missed``): every change
  is noted there, a failed one drops it.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import protocol as p
from ..client.calls import Made
from . import kernel as k
from .nodes import Node
from .parts import MountParts
from .reply import Replier

log = logging.getLogger("pohmelfs.fuse")

RENAME_WHITEOUT = 4
RENAME_EXCHANGE = 2


class Namespace:
    def __init__(self, parts: MountParts) -> None:
        self.client = parts.client
        self.opts = parts.opts
        self.nodes = parts.nodes
        self.names = parts.names
        self.remote = parts.remote
        self.attrs = parts.attrs

    @contextmanager
    def changing(self, *changes: tuple[Node, bytes, bool]) -> Iterator[None]:
        """Note each (directory, name, there after) in the directory's listing once
        the change is made; if it fails, the listing may be wrong and goes. A file
        that loses or gains a name here changes (links, ctime): its lease goes."""
        children = [self.nodes.child(parent, name) for parent, name, _ in changes]
        with self.attrs.file_changing(*(c.nodeid for c in children if c is not None)):
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

    def mknod(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.remote.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        with self.changing((parent, name, True)):
            a = req.args
            made = self.remote.caller(req).mknod(path, a.mode, a.rdev)
        self._made(reply, parent, name, made)

    def mkdir(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.remote.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        with self.changing((parent, name, True)):
            made = self.remote.caller(req).mkdir(path, req.args.mode & 0o7777)
        self._made(reply, parent, name, made)

    def symlink(self, req: k.Request, reply: Replier) -> None:
        parent, (name, target) = self.remote.node(req.nodeid), req.names
        path = self.nodes.child_path(parent, name)
        with self.changing((parent, name, True)):
            made = self.remote.caller(req).symlink(path, target)
        self._made(reply, parent, name, made)

    def link(self, req: k.Request, reply: Replier) -> None:
        old = self.remote.node(req.args.oldnodeid)
        parent, name = self.remote.node(req.nodeid), req.names[0]
        new = self.nodes.child_path(parent, name)
        with self.attrs.file_changing(old.nodeid), self.changing((parent, name, True)):
            made = self.remote.caller(req).link(old.path(), new)
        self._made(reply, parent, name, made)

    def _made(self, reply: Replier, parent: Node, name: bytes, made: Made) -> None:
        self.attrs.dir_changed(parent, made.dir)
        reply.ok(self.attrs.entry(parent, name, made.attr, self.attrs.name_timeout(parent)))

    # --- removing and renaming ---------------------------------------------------------

    def unlink(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.remote.node(req.nodeid), req.names[0]
        path = self.nodes.child_path(parent, name)
        names = self.names
        send = lambda done: self._unlink_ahead(req, path, done)  # noqa: E731
        with self.changing((parent, name, False)):
            if names is not None and self._may_send_ahead() and names.send_ahead(parent, send):
                self.attrs.dir_changed(parent, None)  # the server has not done it yet
            else:
                self.attrs.dir_changed(parent, self.remote.caller(req).unlink(path))
        self.nodes.unlinked(parent, name)
        reply.ok()

    def _may_send_ahead(self) -> bool:
        """May a removal be answered before the server made it? Only where the kernel
        checks permissions and names are cached, on a writable export."""
        return (
            self.opts.kernel_checks and self.attrs.names_cached()
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

        self.remote.caller(req).unlink_behind(path, answered)

    def rmdir(self, req: k.Request, reply: Replier) -> None:
        parent, name = self.remote.node(req.nodeid), req.names[0]
        with self.changing((parent, name, False)):
            after = self.remote.caller(req).rmdir(self.nodes.child_path(parent, name))
        self.attrs.dir_changed(parent, after)
        self.nodes.unlinked(parent, name)
        reply.ok()

    def rename(self, req: k.Request, reply: Replier) -> None:
        self._rename(req, reply, 0)

    def rename2(self, req: k.Request, reply: Replier) -> None:
        self._rename(req, reply, req.args.flags)

    def _rename(self, req: k.Request, reply: Replier, flags: int) -> None:
        if flags & RENAME_WHITEOUT:
            reply.error(errno.EINVAL)
            return
        old_parent, new_parent = self.remote.node(req.nodeid), self.remote.node(req.args.newdir)
        old_name, new_name = req.names
        old = self.nodes.child_path(old_parent, old_name)
        new = self.nodes.child_path(new_parent, new_name)
        exchange = flags == RENAME_EXCHANGE
        with self.changing((old_parent, old_name, exchange), (new_parent, new_name, True)):
            done = self.remote.caller(req).rename(old, new, flags)
        self.attrs.dir_changed(old_parent, done.dir)
        self.attrs.dir_changed(new_parent, done.new_dir)
        self.nodes.renamed(old_parent, old_name, new_parent, new_name, exchange=exchange)
        self.client.renamed(old, new, exchange)  # what open files reopen by
        reply.ok()
