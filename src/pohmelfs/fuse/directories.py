"""Directory listings for the mount: OPENDIR fetches the whole listing with one
streamed request; READDIR and READDIRPLUS hand it to the kernel page by page."""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass

from .. import protocol as p
from . import kernel as k
from .nodes import Node
from .parts import MountParts
from .reply import Replier


@dataclass
class OpenDir:
    node: Node
    entries: list[tuple[bytes, p.Attr | None]]
    # The directory's name-lock generation when the listing was fetched under it
    # (None: not under it): a later READDIRPLUS may let the kernel keep the names
    # only while that lock is still the same one.
    generation: int | None = None


class Directories:
    def __init__(self, parts: MountParts) -> None:
        self.client = parts.client
        self.names = parts.names
        self.remote = parts.remote
        self.attrs = parts.attrs
        self._handle_ids = parts.handle_ids
        self.dirs: dict[int, OpenDir] = {}

    def opendir(self, req: k.Request, reply: Replier) -> None:
        node = self.remote.node(req.nodeid)
        entries: list[tuple[bytes, p.Attr | None]] = [(b".", None), (b"..", None)]
        generation = None if self.names is None else self.names.generation(node.nodeid)
        if not self.attrs.name_timeout(node, take=True):  # (read before: a release between
            generation = None  # the two makes a later READDIRPLUS keep nothing)
        entries.extend(self.client.readdir(node.path(), self.remote.cred(req)))
        fh = next(self._handle_ids)
        self.dirs[fh] = OpenDir(node, entries, generation)
        reply.ok(k.pack_open(fh))

    def readdir(self, req: k.Request, reply: Replier) -> None:
        self._list(req, reply, plus=False)

    def readdirplus(self, req: k.Request, reply: Replier) -> None:
        self._list(req, reply, plus=True)

    def _list(self, req: k.Request, reply: Replier, plus: bool) -> None:
        d = self.dirs.get(req.args.fh)
        if d is None:
            raise OSError(errno.EBADF, "unknown directory handle")
        out: list[bytes] = []
        timeout = 0.0
        if plus and self.names is None:  # close-to-open: the option's time-out
            timeout = self.attrs.name_timeout(d.node)
        elif plus and d.generation is not None:
            if self.names is not None and self.names.generation(d.node.nodeid) == d.generation:
                timeout = self.attrs.name_timeout(d.node)
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
                    entry = self.attrs.entry(d.node, name, attr, timeout)
                out.append(k.pack_direntplus(entry, ino, index + 1, kind, name))
            else:
                out.append(k.pack_dirent(ino, index + 1, kind, name))
        reply.ok(b"".join(out))

    def releasedir(self, req: k.Request, reply: Replier) -> None:
        self.dirs.pop(req.args.fh, None)
        reply.ok()

    def fsyncdir(self, req: k.Request, reply: Replier) -> None:
        reply.ok()
