"""Extended attributes through the mount: each request goes to the server, on the
node's open handle when it has one (so it reaches a file whose name is gone)."""

from __future__ import annotations

import errno

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
        calls = self.remote.object(req, self.remote.node(req.nodeid))
        with self.attrs.file_changing(req.nodeid):
            calls.setxattr(req.names[0], value, req.args.flags)
        reply.ok()

    def getxattr(self, req: k.Request, reply: Replier) -> None:
        value = self.remote.object(req, self.remote.node(req.nodeid)).getxattr(req.names[0])
        _sized_reply(reply, req.args.size, value)

    def listxattr(self, req: k.Request, reply: Replier) -> None:
        names = self.remote.object(req, self.remote.node(req.nodeid)).listxattr()
        _sized_reply(reply, req.args.size, b"".join(n + b"\0" for n in names))

    def removexattr(self, req: k.Request, reply: Replier) -> None:
        self.attrs.dir_attrs_stale(req.nodeid)
        calls = self.remote.object(req, self.remote.node(req.nodeid))
        with self.attrs.file_changing(req.nodeid):
            calls.removexattr(req.names[0])
        reply.ok()


def _sized_reply(reply: Replier, size: int, value: bytes) -> None:
    """getxattr/listxattr: size 0 asks for the length; a smaller buffer is ERANGE."""
    if size == 0:
        reply.ok(k.pack_xattr_size(len(value)))
    elif len(value) > size:
        reply.error(errno.ERANGE)
    else:
        reply.ok(value)
