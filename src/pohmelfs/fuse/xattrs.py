"""Extended attributes through the mount: each request goes to the server, on the
node's open handle when it has one (so it reaches a file whose name is gone)."""

from __future__ import annotations

import errno
from collections.abc import Callable
from contextlib import AbstractContextManager

from .. import protocol as p
from ..protocol import Command
from . import kernel as k
from .nodes import Node
from .reply import Replier


class ExtendedAttributeOps:
    """Mixed into the operations class, which provides these."""

    node: Callable[[int], Node]
    object_call: Callable[..., Callable[..., p.Message]]
    _dir_attrs_stale: Callable[[int], None]
    _file_changing: Callable[..., AbstractContextManager[None]]

    def op_setxattr(self, req: k.Request, reply: Replier) -> None:
        self._dir_attrs_stale(req.nodeid)
        value = bytes(req.data[: req.args.size])
        call = self.object_call(req, self.node(req.nodeid))
        with self._file_changing(req.nodeid):
            call(Command.SETXATTR, name=req.names[0], value=value, flags=req.args.flags)
        reply.ok()

    def op_getxattr(self, req: k.Request, reply: Replier) -> None:
        call = self.object_call(req, self.node(req.nodeid))
        value = call(Command.GETXATTR, name=req.names[0])["value"]
        _sized_reply(reply, req.args.size, value)

    def op_listxattr(self, req: k.Request, reply: Replier) -> None:
        names = self.object_call(req, self.node(req.nodeid))(Command.LISTXATTR)["names"]
        _sized_reply(reply, req.args.size, b"".join(n + b"\0" for n in names))

    def op_removexattr(self, req: k.Request, reply: Replier) -> None:
        self._dir_attrs_stale(req.nodeid)
        call = self.object_call(req, self.node(req.nodeid))
        with self._file_changing(req.nodeid):
            call(Command.REMOVEXATTR, name=req.names[0])
        reply.ok()


def _sized_reply(reply: Replier, size: int, value: bytes) -> None:
    """getxattr/listxattr: size 0 asks for the length; a smaller buffer is ERANGE."""
    if size == 0:
        reply.ok(k.pack_xattr_size(len(value)))
    elif len(value) > size:
        reply.error(errno.ERANGE)
    else:
        reply.ok(value)
