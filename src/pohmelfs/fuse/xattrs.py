"""Extended attributes through the mount: each request goes to the server, on the
node's open handle when it has one (so it reaches a file whose name is gone)."""

from __future__ import annotations

import errno

from ..protocol import Command
from . import kernel as k
from .parts import MountParts
from .reply import Replier


class ExtendedAttributes:
    def __init__(self, parts: MountParts) -> None:
        self.remote = parts.remote
        self.attrs = parts.attrs

    def setxattr(self, req: k.Request, reply: Replier) -> None:
        self.attrs.dir_attrs_stale(req.nodeid)
        value = bytes(req.data[: req.args.size])
        call = self.remote.object_call(req, self.remote.node(req.nodeid))
        with self.attrs.file_changing(req.nodeid):
            call(Command.SETXATTR, name=req.names[0], value=value, flags=req.args.flags)
        reply.ok()

    def getxattr(self, req: k.Request, reply: Replier) -> None:
        call = self.remote.object_call(req, self.remote.node(req.nodeid))
        value = call(Command.GETXATTR, name=req.names[0])["value"]
        _sized_reply(reply, req.args.size, value)

    def listxattr(self, req: k.Request, reply: Replier) -> None:
        call = self.remote.object_call(req, self.remote.node(req.nodeid))
        names = call(Command.LISTXATTR)["names"]
        _sized_reply(reply, req.args.size, b"".join(n + b"\0" for n in names))

    def removexattr(self, req: k.Request, reply: Replier) -> None:
        self.attrs.dir_attrs_stale(req.nodeid)
        call = self.remote.object_call(req, self.remote.node(req.nodeid))
        with self.attrs.file_changing(req.nodeid):
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
