"""A ceiling for metadata benchmarks: pohmelfs's own FUSE layer serving a
filesystem kept in memory (no network, no server, no disk).

Whatever a benchmark measures through a pohmelfs mount, the same operations on
this mount show what the kernel round trips and the Python request loop alone
cost on the machine. It knows only what the create benchmarks use: names, new
empty files and directories.

    python bench/memory_fuse.py MOUNTPOINT   # serves until unmounted

Prints "ready" once the mount answers.
"""

from __future__ import annotations

import errno
import stat
import sys
import threading
import time

from pohmelfs.fuse import device
from pohmelfs.fuse import kernel as k
from pohmelfs.fuse.channel import KernelChannel
from pohmelfs.fuse.reply import Replier
from pohmelfs.fuse.session import FuseSession

FOREVER = 86400.0


class MemoryOptions:
    writeback = False
    coherent = True


class MemoryOperations:
    """What FuseSession needs of an operations class, over dicts."""

    def __init__(self) -> None:
        self.opts = MemoryOptions()
        self.kernel = KernelChannel()  # filled in by the session at INIT
        self._lock = threading.Lock()
        self._attrs = {k.ROOT_ID: self._attr(k.ROOT_ID, stat.S_IFDIR | 0o755)}
        self._children: dict[int, dict[bytes, int]] = {k.ROOT_ID: {}}
        self._next = k.ROOT_ID + 1

    @staticmethod
    def _attr(ino: int, mode: int) -> k.Attr:
        now = time.time_ns()
        return k.Attr(ino, 0, 0, now, now, now, mode, 1, 0, 0, 0, 4096)

    def dispatch(self, req: k.Request, reply: Replier) -> None:
        op = req.opcode
        if op == k.Op.LOOKUP:
            ino = self._children.get(req.nodeid, {}).get(req.names[0])
            attr = None if ino is None else self._attrs[ino]
            reply.ok(k.pack_entry(ino or 0, 0, attr, FOREVER, FOREVER))
        elif op == k.Op.GETATTR:
            reply.ok(k.pack_attr_out(self._attrs[req.nodeid], FOREVER))
        elif op in (k.Op.MKDIR, k.Op.CREATE):
            directory = op == k.Op.MKDIR
            with self._lock:
                ino, self._next = self._next, self._next + 1
                attr = self._attr(ino, stat.S_IFDIR | 0o755 if directory else stat.S_IFREG | 0o644)
                self._attrs[ino] = attr
                self._children[req.nodeid][req.names[0]] = ino
                if directory:
                    self._children[ino] = {}
            entry = k.pack_entry(ino, 0, attr, FOREVER, FOREVER)
            reply.ok(entry) if directory else reply.ok(entry, k.pack_open(ino))
        elif op in (k.Op.FLUSH, k.Op.RELEASE, k.Op.RELEASEDIR):
            reply.ok()
        elif op == k.Op.OPENDIR:
            reply.ok(k.pack_open(0))
        elif op in (k.Op.READDIR, k.Op.READDIRPLUS):
            reply.ok()  # listings are not needed by the benchmarks: empty
        elif op not in (k.Op.FORGET, k.Op.BATCH_FORGET):  # (those take no reply)
            reply.error(errno.ENOSYS)


def main() -> None:
    mountpoint = sys.argv[1]
    fd = device.mount(mountpoint, "memory", max_read=1 << 20, allow_other=False,
                      default_permissions=True)  # fmt: skip
    session = FuseSession(fd, MemoryOperations())  # type: ignore[arg-type]
    session.init()
    session.start()
    print("ready", flush=True)
    session.wait()


if __name__ == "__main__":
    main()
