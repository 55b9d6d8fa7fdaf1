"""Directory listings for the mount: OPENDIR fetches the whole listing with one
streamed request; READDIR and READDIRPLUS hand it to the kernel page by page."""

from __future__ import annotations

import errno
import itertools
import stat
from collections.abc import Callable
from dataclasses import dataclass

from .. import protocol as p
from ..client.client import Client
from ..protocol import Cred
from . import kernel as k
from .names import NameLocks
from .nodes import Node
from .reply import Replier


@dataclass
class OpenDir:
    node: Node
    entries: list[tuple[bytes, p.Attr | None]]
    # The directory's name-lock generation when the listing was fetched under it
    # (None: not under it): a later READDIRPLUS may let the kernel keep the names
    # only while that lock is still the same one.
    generation: int | None = None


class DirectoryOps:
    """Mixed into the operations class, which provides these."""

    client: Client
    dirs: dict[int, OpenDir]
    _fh: itertools.count[int]
    node: Callable[[int], Node]
    cred: Callable[[k.Request], Cred]
    entry: Callable[[Node, bytes, p.Attr, float], bytes]
    _name_timeout: Callable[..., float]
    names: NameLocks | None

    def op_opendir(self, req: k.Request, reply: Replier) -> None:
        node = self.node(req.nodeid)
        entries: list[tuple[bytes, p.Attr | None]] = [(b".", None), (b"..", None)]
        generation = None if self.names is None else self.names.generation(node.nodeid)
        if not self._name_timeout(node, take=True):  # (read before: a release between
            generation = None  # the two makes a later READDIRPLUS keep nothing)
        entries.extend(self.client.readdir(node.path(), self.cred(req)))
        fh = next(self._fh)
        self.dirs[fh] = OpenDir(node, entries, generation)
        reply.ok(k.pack_open(fh))

    def op_readdir(self, req: k.Request, reply: Replier) -> None:
        self._readdir(req, reply, plus=False)

    def op_readdirplus(self, req: k.Request, reply: Replier) -> None:
        self._readdir(req, reply, plus=True)

    def _readdir(self, req: k.Request, reply: Replier, plus: bool) -> None:
        d = self.dirs.get(req.args.fh)
        if d is None:
            raise OSError(errno.EBADF, "unknown directory handle")
        out: list[bytes] = []
        timeout = 0.0
        if plus and self.names is None:  # close-to-open: the option's time-out
            timeout = self._name_timeout(d.node)
        elif plus and d.generation is not None:
            if self.names is not None and self.names.generation(d.node.nodeid) == d.generation:
                timeout = self._name_timeout(d.node)
        room = req.args.size
        for index in range(req.args.offset, len(d.entries)):
            name, attr = d.entries[index]
            size = k.dirent_size(name, plus)
            if size > room:
                break
            room -= size
            ino = attr.ino if attr is not None else d.node.ino
            kind = stat.S_IFMT(attr.mode) >> 12 if attr is not None else stat.S_IFDIR >> 12
            if plus:
                if attr is None:  # "." and "..": the kernel does not link these
                    entry = k.pack_entry(0, 0, None, 0, 0)
                else:
                    entry = self.entry(d.node, name, attr, timeout)
                out.append(k.pack_direntplus(entry, ino, index + 1, kind, name))
            else:
                out.append(k.pack_dirent(ino, index + 1, kind, name))
        reply.ok(b"".join(out))

    def op_releasedir(self, req: k.Request, reply: Replier) -> None:
        self.dirs.pop(req.args.fh, None)
        reply.ok()

    def op_fsyncdir(self, req: k.Request, reply: Replier) -> None:
        reply.ok()
