"""How the mount reaches the server for a request of the kernel's: with the
caller's identity (its uid, gid and supplementary groups), by path, or through
a node's open handle (which reaches the very file the kernel means even after
its name was removed or reused)."""

from __future__ import annotations

import errno
import time

from .. import protocol as p
from ..client.calls import CallerCalls, ObjectCalls, through_handle
from ..client.client import Client
from ..client.file import RemoteFile
from ..protocol import Cred
from . import kernel as k
from .nodes import Node, NodeTable
from .openfiles import OpenFiles

GROUPS_KEPT = 1.0  # seconds a process's supplementary groups are taken as known
MAX_GROUPS_KEPT = 4096  # processes whose groups are kept


class Remote:
    def __init__(self, client: Client, nodes: NodeTable, files: OpenFiles) -> None:
        self.client = client
        self._nodes = nodes
        self._files = files
        self._groups: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}

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
        if len(self._groups) > MAX_GROUPS_KEPT:
            self._groups.clear()
        self._groups[(pid, uid)] = (now + GROUPS_KEPT, groups)
        return groups

    def node(self, nodeid: int) -> Node:
        node = self._nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown node")
        return node

    def file(self, fh: int) -> RemoteFile:
        f = self._files.get(fh)
        if f is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return f

    def caller(self, req: k.Request) -> CallerCalls:
        """The server's namespace as the process that made ``req`` sees it."""
        return CallerCalls(self.client, self.cred(req))

    def handle_of(self, node: Node, fh: int | None = None) -> RemoteFile | None:
        """An open handle of this node (``fh`` if given)."""
        f = self._files.get(fh) if fh is not None else None
        return f if f is not None else self._files.any_of_node(node.nodeid)

    def object(self, req: k.Request, node: Node, fh: int | None = None) -> ObjectCalls:
        """Attribute calls as the caller, through the node's open handle if it has one
        (``fh`` if given), else by its path."""
        f = self.handle_of(node, fh)
        if f is None:
            return self.caller(req).object(node.path())
        return through_handle(f, self.cred(req))

    def object_attr(self, req: k.Request, node: Node, fh: int | None = None) -> p.Attr:
        f = self.handle_of(node, fh)
        if f is not None:
            return f.fstat()
        return self.caller(req).lookup(node.path())
