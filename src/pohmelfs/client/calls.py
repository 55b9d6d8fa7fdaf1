"""Typed calls for a client acting for others (the mount, for each process that asks):
the namespace as one caller, by path; an object's attributes and extended
attributes, by path or through an open handle (which reaches the very file even
after its name was removed or reused); record locks and reads through a handle.

The protocol's request messages for them are built here and nowhere above the
client core: an adapter calls ``caller.mkdir(path, mode)`` and gets the server's
answer as values (``Made``, ``Attr``), never a raw message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from .. import protocol as p
from ..protocol import Attr, Command, Cred, Message
from .connection import Connection, Sink, Transaction
from .file import RemoteFile
from .paths import PathArg, encode_path

Callback = Callable[[Transaction], None]


class Requester(Protocol):
    """What sends a request and waits for its answer (``Client.request``)."""

    def request(self, cmd: Command, shown: Any = None, shown2: Any = None, /,
                **fields: Any) -> Message: ...  # fmt: skip

    def connection(self) -> Any: ...


class Made(NamedTuple):
    attr: Attr  # of the new name's object
    dir: Attr | None  # of its directory, right after


class Renamed(NamedTuple):
    dir: Attr | None  # the old name's directory, right after
    new_dir: Attr | None  # the new name's


class ObjectCalls:
    """Calls on one object's attributes: by its path or through an open handle."""

    def __init__(self, send: Callable[..., Message]) -> None:
        self._send = send

    def chmod(self, mode: int) -> None:
        self._send(Command.CHMOD, mode=mode)

    def chown(self, uid: int = p.ID_UNCHANGED, gid: int = p.ID_UNCHANGED) -> None:
        self._send(Command.CHOWN, uid=uid, gid=gid)

    def utimes(self, atime_ns: int, mtime_ns: int, which: int) -> None:
        """``which``: ``p.UTIME_*`` bits (a time set to now, or left alone)."""
        self._send(Command.UTIMES, atime_ns=atime_ns, mtime_ns=mtime_ns, which=which)

    def setxattr(self, name: bytes, value: bytes, flags: int) -> None:
        self._send(Command.SETXATTR, name=name, value=value, flags=flags)

    def getxattr(self, name: bytes) -> bytes:
        return self._send(Command.GETXATTR, name=name)["value"]  # type: ignore[no-any-return]

    def listxattr(self) -> list[bytes]:
        return self._send(Command.LISTXATTR)["names"]  # type: ignore[no-any-return]

    def removexattr(self, name: bytes) -> None:
        self._send(Command.REMOVEXATTR, name=name)


class CallerCalls:
    """The namespace as one caller (``cred``) sees it, by path (as given: it names
    the file in errors; sent encoded)."""

    def __init__(self, client: Requester, cred: Cred) -> None:
        self._client = client
        self.cred = cred

    def call(self, cmd: Command, path: PathArg, **fields: Any) -> Message:
        """Any request by path, as this caller."""
        return self._client.request(cmd, path, cred=self.cred, path=encode_path(path), **fields)

    def lookup(self, path: PathArg) -> Attr:
        return self.call(Command.LOOKUP, path)["attr"]  # type: ignore[no-any-return]

    def readlink(self, path: PathArg) -> bytes:
        return self.call(Command.READLINK, path)["target"]  # type: ignore[no-any-return]

    def statfs(self, shown: PathArg = "/") -> p.StatFs:
        return self._client.request(Command.STATFS, shown, cred=self.cred)["statfs"]  # type: ignore[no-any-return]

    def truncate(self, path: PathArg, size: int) -> None:
        self.call(Command.TRUNCATE, path, offset=size)

    def mknod(self, path: PathArg, mode: int, rdev: int) -> Made:
        return _made(self.call(Command.MKNOD, path, mode=mode, rdev=rdev))

    def mkdir(self, path: PathArg, mode: int) -> Made:
        return _made(self.call(Command.MKDIR, path, mode=mode))

    def symlink(self, path: PathArg, target: PathArg) -> Made:
        return _made(self.call(Command.SYMLINK, path, target=encode_path(target)))

    def link(self, old: PathArg, new: PathArg) -> Made:
        made = self._client.request(Command.LINK, old, new, cred=self.cred,
                                    path=encode_path(old), new=encode_path(new))  # fmt: skip
        return _made(made)

    def unlink(self, path: PathArg) -> Attr | None:
        """Returns the directory's attributes right after."""
        return self.call(Command.UNLINK, path)["dir"]  # type: ignore[no-any-return]

    def unlink_behind(self, path: bytes, callback: Callback) -> None:
        """Send an unlink without waiting for it; ``callback`` gets its transaction."""
        self._client.connection().start(Command.UNLINK, callback=callback, behind=True,
                                        cred=self.cred, path=path)  # fmt: skip

    def rmdir(self, path: PathArg) -> Attr | None:
        return self.call(Command.RMDIR, path)["dir"]  # type: ignore[no-any-return]

    def rename(self, old: PathArg, new: PathArg, flags: int = 0) -> Renamed:
        done = self._client.request(Command.RENAME, old, new, cred=self.cred,
                                    path=encode_path(old), new=encode_path(new),
                                    flags=flags)  # fmt: skip
        return Renamed(done["dir"], done["new_dir"])

    def object(self, path: PathArg) -> ObjectCalls:
        """Attribute calls on the object at ``path``."""
        return ObjectCalls(lambda cmd, **fields: self.call(cmd, path, **fields))


def through_handle(f: RemoteFile, cred: Cred) -> ObjectCalls:
    """Attribute calls on the object ``f`` is open on, as ``cred``."""
    conn, oid = f.handle()
    return ObjectCalls(lambda cmd, **fields: conn.call(cmd, f.name, cred=cred, path=b"",
                                                       oid=oid, **fields))  # fmt: skip


def _made(reply: Message) -> Made:
    return Made(reply["attr"], reply["dir"])


# --- through an open handle, answered on the receive thread ---------------------------------


class LockRange(NamedTuple):
    offset: int
    length: int  # 0: to the end
    owner: int  # the lock owner (the kernel's, on a mount)
    pid: int


class LockHeld(NamedTuple):
    offset: int
    length: int  # 0: to the end
    pid: int
    type: int  # p.LockType


def start_lock(f: RemoteFile, r: LockRange, type_: int, flags: int,
               **how: Any) -> Transaction:  # fmt: skip
    """A LOCK request for ``f``'s file, not waited for. ``how``: the transaction's
    ``callback``, ``behind``, ``forever`` (see ``Connection.start``)."""
    conn, oid = f.handle()
    return _lock(conn, oid, Command.LOCK, r, type_, flags, **how)


def wait_lock(f: RemoteFile, r: LockRange, type_: int, flags: int) -> None:
    """A LOCK request for ``f``'s file, waited for (errors raised)."""
    conn, oid = f.handle()
    conn.wait(_lock(conn, oid, Command.LOCK, r, type_, flags), f.name)


def lock_holder(f: RemoteFile, r: LockRange, type_: int, flags: int) -> LockHeld | None:
    """Like F_GETLK: the lock that one of ``type_`` on the range would conflict with."""
    conn, oid = f.handle()
    held = conn.wait(_lock(conn, oid, Command.GETLK, r, type_, flags), f.name)
    if held["type"] == p.LockType.UNLCK:
        return None
    return LockHeld(held.offset, held.length, held["pid"], held["type"])


def _lock(conn: Connection, oid: int, cmd: Command, r: LockRange, type_: int, flags: int,
          **how: Any) -> Transaction:  # fmt: skip
    return conn.start(cmd, oid=oid, offset=r.offset, length=r.length, owner=r.owner,
                      type=type_, flags=flags, pid=r.pid, **how)  # fmt: skip


def start_read(f: RemoteFile, offset: int, size: int, sink: Sink,
               callback: Callback) -> Transaction:  # fmt: skip
    """A READ for ``f``'s file whose data ``sink`` places (on the receive thread, from
    the socket: see ``Connection.start``); ``callback`` once it is over."""
    conn, oid = f.handle()
    return conn.start(Command.READ, sink=sink, callback=callback, oid=oid, offset=offset,
                      length=size)  # fmt: skip
