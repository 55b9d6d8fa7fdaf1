"""A session's request handlers, one per command: the namespace and attribute
requests here, files (``filerequests``) and locks (``lockrequests``) beside."""

from __future__ import annotations

import errno
from collections.abc import Callable

from .. import protocol as p
from ..protocol import Command, Message
from .context import Context
from .filerequests import FileRequests
from .lockrequests import LockRequests
from .stamps import at_path
from .storage import OpenFile

Handler = Callable[[Message], Message | None]


def _made(m: Message, made: tuple[p.Attr, p.Attr]) -> Message:
    return p.reply(m, attr=made[0], dir=made[1])


class Requests:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.export = export = ctx.shared.export
        self.policy = policy = ctx.policy
        self.files = files = FileRequests(ctx)
        locks = LockRequests(ctx)
        naming = policy.naming
        on_object = self._on_object
        chmod_mode = ctx.guard.chmod_mode
        self._handlers: dict[Command, Handler] = {
            Command.PING: lambda m: p.reply(m),
            Command.STATFS: lambda m: p.reply(m, statfs=export.statfs()),
            Command.LOOKUP: files.lookup,
            Command.LEASE: files.lease,
            Command.READDIR: self._readdir,
            Command.OPEN: files.open,
            Command.CLOSE: files.close,
            Command.READ: files.read,
            Command.WRITE: files.write,
            Command.COPY: files.copy,
            Command.FSTAT: files.fstat,
            Command.FTRUNCATE: files.ftruncate,
            Command.FSYNC: files.fsync,
            Command.FALLOCATE: files.fallocate,
            Command.LOCK: locks.lock,
            Command.GETLK: locks.getlk,
            Command.CACHE: locks.cache,
            Command.TRUNCATE: files.truncate,
            Command.VERSION: self._version,
            Command.SETVERSION: self._set_version,
            Command.PEERS: self._peers,
            Command.MISSING: self._missing,
            Command.CLEAR: self._clear,
            # Names created or removed (see CachePolicy.naming); the replies carry
            # the changed directories as they are after (``dir``, ``new_dir``).
            Command.MKDIR: lambda m: naming(
                m, (m["path"],), lambda: _made(m, export.mkdir(m["path"], m["mode"]))
            ),
            Command.MAKEDIRS: lambda m: naming(
                m,
                (m["path"],),
                lambda: p.reply(m, attr=export.makedirs(m["path"], m["mode"], m["parent_mode"])),
            ),
            Command.RMDIR: lambda m: naming(
                m, (m["path"],), lambda: p.reply(m, dir=export.rmdir(m["path"]))
            ),
            Command.RMTREE: lambda m: naming(m, (m["path"],), lambda: self._rmtree(m)),
            Command.UNLINK: lambda m: naming(
                m, (m["path"],), lambda: p.reply(m, dir=export.unlink(m["path"]))
            ),
            Command.RENAME: lambda m: naming(m, (m["path"], m["new"]), lambda: self._rename(m)),
            Command.LINK: lambda m: naming(
                m, (m["new"],), lambda: _made(m, export.link(m["path"], m["new"]))
            ),
            Command.SYMLINK: lambda m: naming(
                m, (m["path"],), lambda: _made(m, export.symlink(m["target"], m["path"]))
            ),
            Command.READLINK: lambda m: p.reply(m, target=export.readlink(m["path"])),
            Command.MKNOD: lambda m: naming(
                m, (m["path"],), lambda: _made(m, export.mknod(m["path"], m["mode"], m["rdev"]))
            ),
            # These act on the open handle ``oid`` instead of ``path`` when it is set.
            Command.CHMOD: lambda m: on_object(
                m,
                lambda: export.chmod(m["path"], m["mode"], chmod_mode),
                lambda f: f.chmod(m["mode"], chmod_mode),
            ),
            Command.CHOWN: lambda m: on_object(
                m,
                lambda: export.chown(m["path"], m["uid"], m["gid"]),
                lambda f: f.chown(m["uid"], m["gid"]),
            ),
            Command.UTIMES: lambda m: on_object(
                m,
                lambda: export.utimes(m["path"], m["atime_ns"], m["mtime_ns"], m["which"]),
                lambda f: f.utimes(m["atime_ns"], m["mtime_ns"], m["which"]),
            ),
            Command.GETXATTR: lambda m: on_object(
                m,
                lambda: export.getxattr(m["path"], m["name"]),
                lambda f: f.getxattr(m["name"]),
                "value",
            ),
            Command.SETXATTR: lambda m: on_object(
                m,
                lambda: export.setxattr(m["path"], m["name"], m["value"], m["flags"]),
                lambda f: f.setxattr(m["name"], m["value"], m["flags"]),
            ),
            Command.LISTXATTR: lambda m: on_object(
                m,
                lambda: tuple(export.listxattr(m["path"])),
                lambda f: tuple(f.listxattr()),
                "names",
            ),
            Command.REMOVEXATTR: lambda m: on_object(
                m,
                lambda: export.removexattr(m["path"], m["name"]),
                lambda f: f.removexattr(m["name"]),
            ),
        }

    def handle(self, msg: Message) -> Message | None:
        """Run request ``msg``: its reply, or None if it is sent later (or was sent)."""
        handler = self._handlers.get(msg.cmd)
        if handler is None:  # HELLO after the handshake, REVOKE sent as a request
            raise OSError(errno.EPROTO, f"{msg.cmd.name} is not a request here")
        return handler(msg)

    def _key_at(self, path: bytes) -> tuple[int, int]:
        st = self.export.stat(path)
        return st.st_dev, st.st_ino

    def _version(self, m: Message) -> Message:
        version, busy = self.ctx.shared.versions.get(self._key_at(m["path"]))
        return p.reply(m, version=version, busy=busy)

    def _set_version(self, m: Message) -> Message:
        if not self.ctx.shared.versions.set_if(self._key_at(m["path"]), m["expect"], m["version"]):
            raise OSError(errno.ESTALE, "the object changed since its version was read")
        return p.reply(m)

    def _peers(self, m: Message) -> Message:
        marks = self.ctx.shared.versions.peers.behind()
        return p.reply(m, behind=[a + b" %d" % g for a, g in sorted(marks.items())])

    def _missing(self, m: Message) -> Message:
        if len(m["names"]) > p.MAX_SERVERS:
            raise OSError(errno.EINVAL, f"more than {p.MAX_SERVERS} servers named")
        if not self.ctx.guard.policy.read_only:  # (a key that changes nothing leaves none behind)
            self.ctx.shared.versions.peers.missing(self.ctx.sid, m["names"], bool(m["now"]))
        return p.reply(m)

    def _clear(self, m: Message) -> Message:
        if len(m["names"]) != 1:
            raise OSError(errno.EINVAL, "CLEAR names one server")
        peers = self.ctx.shared.versions.peers
        if peers.left_out(m["names"][0]):
            raise OSError(errno.EBUSY, "a client connected here still leaves the server out")
        if not peers.clear(m["names"][0], m["expect"]):
            raise OSError(errno.ESTALE, "the server missed changes since, or still misses them")
        return p.reply(m)

    def _rmtree(self, m: Message) -> Message:
        self.ctx.shared.stamps.tree_removed(self.export.rmtree(m["path"]))
        return p.reply(m)

    def _rename(self, m: Message) -> Message:
        dirs = self.export.rename(m["path"], m["new"], m["flags"])
        return p.reply(m, dir=dirs[0], new_dir=dirs[1])

    def _readdir(self, m: Message) -> None:
        if self.ctx.shared.cache.anything_held():  # a listing is a use of the directory
            try:
                st = self.export.stat(m["path"])
            except OSError:
                pass  # the listing fails the same way, with the reason
            else:
                self.ctx.shared.stamps.seen((st.st_dev, st.st_ino), st, m["path"])
        batches = self.export.readdir(m["path"], self.ctx.max_payload - 4096)
        batch = next(batches, [])
        for following in batches:
            self.ctx.send(p.reply(m, more=True, entries=tuple(batch)))
            batch = following
        self.ctx.send(p.reply(m, entries=tuple(batch)))

    def _on_object(self, m: Message, by_path: Callable[[], object],
                   on_file: Callable[[OpenFile], object],
                   field: str | None = None) -> Message | None:  # fmt: skip
        """Run ``on_file`` on the open handle m.oid or, without one, ``by_path``.
        A change of attributes (no ``field`` to return) makes other clients that
        cache the object's attributes, under its cache lock, give them up first."""

        def reply(result: object) -> Message:
            return p.reply(m, **({field: result} if field else {}))

        if not m.oid:
            run = lambda: reply(by_path())  # noqa: E731
            if field is not None:
                return run()
            try:
                st = self.export.stat(m["path"])
            except OSError:
                return run()  # it fails there, with the reason
            key = st.st_dev, st.st_ino
            touches = [at_path(self.export, key, m["path"])]
            return self.policy.change(m, None, (key,), run, touches=touches)

        with self.ctx.handles.using(m.oid) as h:
            run = lambda: reply(on_file(h.file))  # noqa: E731
            return run() if field is not None else self.policy.change(m, h, (h.key,), run)
