"""The typed interface between the raw FUSE layer and a filesystem.

The raw layer (``session.FuseSession``: reading ``/dev/fuse``, ``kernel``: the
codec) turns each request into a ``kernel.Request`` whose ``args`` are the
opcode's own structure, and calls the one method of a ``FileSystem`` for that
opcode with a ``Replier``. A method answers through the replier (at once, or
later from another thread) or raises: ``dispatch`` is the one place a failure
becomes the errno the application sees (``reply.errno_of``). An opcode whose
method is not overridden is answered ENOSYS, which the kernel remembers.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from . import kernel as k
from .reply import Replier, errno_of

log = logging.getLogger("pohmelfs.fuse")

Handler = Callable[[k.Request, Replier], None]


class FileSystem:
    def lookup(self, req: k.Request, reply: Replier) -> None:
        """A name in a directory: its entry (node id, attributes, time-outs)."""
        raise OSError(errno.ENOSYS, "LOOKUP is not implemented")

    def forget(self, req: k.Request, reply: Replier) -> None:
        """The kernel drops lookups of a node (no reply)."""
        raise OSError(errno.ENOSYS, "FORGET is not implemented")

    def batch_forget(self, req: k.Request, reply: Replier) -> None:
        """FORGET for many nodes (no reply)."""
        raise OSError(errno.ENOSYS, "BATCH_FORGET is not implemented")

    def getattr(self, req: k.Request, reply: Replier) -> None:
        """A node's attributes and how long they may be kept."""
        raise OSError(errno.ENOSYS, "GETATTR is not implemented")

    def setattr(self, req: k.Request, reply: Replier) -> None:
        """Change mode, owner, size or times; the attributes after."""
        raise OSError(errno.ENOSYS, "SETATTR is not implemented")

    def readlink(self, req: k.Request, reply: Replier) -> None:
        """A symlink's target."""
        raise OSError(errno.ENOSYS, "READLINK is not implemented")

    def symlink(self, req: k.Request, reply: Replier) -> None:
        """Make a symlink: its entry."""
        raise OSError(errno.ENOSYS, "SYMLINK is not implemented")

    def mknod(self, req: k.Request, reply: Replier) -> None:
        """Make a file, device, fifo or socket: its entry."""
        raise OSError(errno.ENOSYS, "MKNOD is not implemented")

    def mkdir(self, req: k.Request, reply: Replier) -> None:
        """Make a directory: its entry."""
        raise OSError(errno.ENOSYS, "MKDIR is not implemented")

    def unlink(self, req: k.Request, reply: Replier) -> None:
        """Remove a name."""
        raise OSError(errno.ENOSYS, "UNLINK is not implemented")

    def rmdir(self, req: k.Request, reply: Replier) -> None:
        """Remove a directory."""
        raise OSError(errno.ENOSYS, "RMDIR is not implemented")

    def rename(self, req: k.Request, reply: Replier) -> None:
        """Move a name."""
        raise OSError(errno.ENOSYS, "RENAME is not implemented")

    def rename2(self, req: k.Request, reply: Replier) -> None:
        """Move a name, with flags (RENAME_NOREPLACE, RENAME_EXCHANGE)."""
        raise OSError(errno.ENOSYS, "RENAME2 is not implemented")

    def link(self, req: k.Request, reply: Replier) -> None:
        """Another name for a file: its entry."""
        raise OSError(errno.ENOSYS, "LINK is not implemented")

    def open(self, req: k.Request, reply: Replier) -> None:
        """Open a file: a file handle and open flags."""
        raise OSError(errno.ENOSYS, "OPEN is not implemented")

    def create(self, req: k.Request, reply: Replier) -> None:
        """Create and open: an entry and an open file."""
        raise OSError(errno.ENOSYS, "CREATE is not implemented")

    def read(self, req: k.Request, reply: Replier) -> None:
        """Data of an open file; may be answered later, from another thread, the
        data spliced or copied (``reads.DirectReads``)."""
        raise OSError(errno.ENOSYS, "READ is not implemented")

    def write(self, req: k.Request, reply: Replier) -> None:
        """Write to an open file: how much was written."""
        raise OSError(errno.ENOSYS, "WRITE is not implemented")

    def flush(self, req: k.Request, reply: Replier) -> None:
        """Close(2) of a file descriptor: its writes reach the server."""
        raise OSError(errno.ENOSYS, "FLUSH is not implemented")

    def release(self, req: k.Request, reply: Replier) -> None:
        """The last close of an open file."""
        raise OSError(errno.ENOSYS, "RELEASE is not implemented")

    def fsync(self, req: k.Request, reply: Replier) -> None:
        """Make an open file's data durable."""
        raise OSError(errno.ENOSYS, "FSYNC is not implemented")

    def fallocate(self, req: k.Request, reply: Replier) -> None:
        """Allocate or punch a range of an open file."""
        raise OSError(errno.ENOSYS, "FALLOCATE is not implemented")

    def statfs(self, req: k.Request, reply: Replier) -> None:
        """The filesystem's space and limits."""
        raise OSError(errno.ENOSYS, "STATFS is not implemented")

    def setxattr(self, req: k.Request, reply: Replier) -> None:
        """Set an extended attribute."""
        raise OSError(errno.ENOSYS, "SETXATTR is not implemented")

    def getxattr(self, req: k.Request, reply: Replier) -> None:
        """An extended attribute's value (or its size)."""
        raise OSError(errno.ENOSYS, "GETXATTR is not implemented")

    def listxattr(self, req: k.Request, reply: Replier) -> None:
        """The names of a node's extended attributes (or their size)."""
        raise OSError(errno.ENOSYS, "LISTXATTR is not implemented")

    def removexattr(self, req: k.Request, reply: Replier) -> None:
        """Remove an extended attribute."""
        raise OSError(errno.ENOSYS, "REMOVEXATTR is not implemented")

    def opendir(self, req: k.Request, reply: Replier) -> None:
        """Open a directory: a directory handle."""
        raise OSError(errno.ENOSYS, "OPENDIR is not implemented")

    def readdir(self, req: k.Request, reply: Replier) -> None:
        """Entries of an open directory."""
        raise OSError(errno.ENOSYS, "READDIR is not implemented")

    def readdirplus(self, req: k.Request, reply: Replier) -> None:
        """Entries of an open directory, with their attributes."""
        raise OSError(errno.ENOSYS, "READDIRPLUS is not implemented")

    def releasedir(self, req: k.Request, reply: Replier) -> None:
        """Close a directory handle."""
        raise OSError(errno.ENOSYS, "RELEASEDIR is not implemented")

    def fsyncdir(self, req: k.Request, reply: Replier) -> None:
        """Make a directory durable."""
        raise OSError(errno.ENOSYS, "FSYNCDIR is not implemented")

    def getlk(self, req: k.Request, reply: Replier) -> None:
        """A conflicting advisory lock, if any."""
        raise OSError(errno.ENOSYS, "GETLK is not implemented")

    def setlk(self, req: k.Request, reply: Replier) -> None:
        """Take or release an advisory lock, without waiting."""
        raise OSError(errno.ENOSYS, "SETLK is not implemented")

    def setlkw(self, req: k.Request, reply: Replier) -> None:
        """Take an advisory lock, waiting for it."""
        raise OSError(errno.ENOSYS, "SETLKW is not implemented")

    def interrupt(self, req: k.Request, reply: Replier) -> None:
        """The kernel gives up waiting for a request (no reply)."""
        raise OSError(errno.ENOSYS, "INTERRUPT is not implemented")


def handlers(fs: FileSystem) -> dict[int, Handler]:
    """Each opcode's method of ``fs``."""
    return {
        k.Op.LOOKUP: fs.lookup,
        k.Op.FORGET: fs.forget,
        k.Op.BATCH_FORGET: fs.batch_forget,
        k.Op.GETATTR: fs.getattr,
        k.Op.SETATTR: fs.setattr,
        k.Op.READLINK: fs.readlink,
        k.Op.SYMLINK: fs.symlink,
        k.Op.MKNOD: fs.mknod,
        k.Op.MKDIR: fs.mkdir,
        k.Op.UNLINK: fs.unlink,
        k.Op.RMDIR: fs.rmdir,
        k.Op.RENAME: fs.rename,
        k.Op.RENAME2: fs.rename2,
        k.Op.LINK: fs.link,
        k.Op.OPEN: fs.open,
        k.Op.CREATE: fs.create,
        k.Op.READ: fs.read,
        k.Op.WRITE: fs.write,
        k.Op.FLUSH: fs.flush,
        k.Op.RELEASE: fs.release,
        k.Op.FSYNC: fs.fsync,
        k.Op.FALLOCATE: fs.fallocate,
        k.Op.STATFS: fs.statfs,
        k.Op.SETXATTR: fs.setxattr,
        k.Op.GETXATTR: fs.getxattr,
        k.Op.LISTXATTR: fs.listxattr,
        k.Op.REMOVEXATTR: fs.removexattr,
        k.Op.OPENDIR: fs.opendir,
        k.Op.READDIR: fs.readdir,
        k.Op.READDIRPLUS: fs.readdirplus,
        k.Op.RELEASEDIR: fs.releasedir,
        k.Op.FSYNCDIR: fs.fsyncdir,
        k.Op.GETLK: fs.getlk,
        k.Op.SETLK: fs.setlk,
        k.Op.SETLKW: fs.setlkw,
        k.Op.INTERRUPT: fs.interrupt,
    }


def dispatch(table: dict[int, Handler], req: k.Request, reply: Replier) -> None:
    """Run one request; a failure is answered with its errno."""
    handler = table.get(req.opcode)
    if handler is None:
        reply.error(errno.ENOSYS)
        return
    try:
        handler(req, reply)
    except Exception as e:
        if not isinstance(e, OSError):
            log.exception("%s failed", k.Op(req.opcode).name)
        reply.error(errno_of(e))
