"""The FUSE request loop: INIT negotiation, reader threads, replies.

Each reader thread owns a cloned ``/dev/fuse`` descriptor (the kernel expects
a reply on the descriptor the request was read from) and one reusable buffer
that requests are read into with ``readv``; replies go out with one
``writev`` of header and payload.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from . import device
from . import kernel as k
from .channel import writer
from .operations import Operations, Replier

log = logging.getLogger("pohmelfs.fuse")

MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // 4096
WANTED_FLAGS = (
    k.ASYNC_READ | k.ATOMIC_O_TRUNC | k.BIG_WRITES | k.DO_READDIRPLUS | k.READDIRPLUS_AUTO
    | k.PARALLEL_DIROPS | k.MAX_PAGES | k.AUTO_INVAL_DATA | k.ASYNC_DIO | k.ABORT_ERROR
    | k.CACHE_SYMLINKS | k.INIT_EXT | k.HANDLE_KILLPRIV_V2 | k.POSIX_LOCKS | k.FLOCK_LOCKS
    | k.DIRECT_IO_ALLOW_MMAP
)  # fmt: skip


class FuseSession:
    def __init__(self, fd: int, ops: Operations, threads: int = 4) -> None:
        self.fd = fd
        self.ops = ops
        self.threads = max(1, threads)
        self.minor = 0
        self.flags = 0
        self.stopped = threading.Event()
        self._fds: list[int] = []
        self._workers: list[threading.Thread] = []
        self._counts: list[dict[int, int]] = []  # each reader thread's requests, by opcode

    def init(self) -> None:
        """Read and answer INIT; after this the mount is usable."""
        buf = bytearray(MAX_WRITE + 64 * 1024)
        while True:
            n = self._read(self.fd, buf)
            if n is None:
                raise OSError(errno.ENODEV, "unmounted before INIT")
            req = k.parse_request(memoryview(buf)[:n])
            if req.opcode != k.Op.INIT:
                log.warning("request %d before INIT", req.opcode)
                continue
            break
        major, minor, max_readahead, flags, flags2 = k.parse_init(req)
        flags |= flags2 << 32
        write = writer(self.fd)
        if major != k.KERNEL_MAJOR:
            # Tell the kernel our major; it will retry or give up.
            write(k.reply_parts(req.unique, 0, k.pack_init(k.OUR_MINOR, 0, 0, 0, 0, 0, 0, 0)))
            raise OSError(errno.EPROTO, f"kernel FUSE major {major} not supported")
        self.minor = min(minor, k.OUR_MINOR)
        wanted = WANTED_FLAGS | (k.WRITEBACK_CACHE if self.ops.opts.writeback else 0)
        if self.minor < 39:
            wanted &= ~k.DIRECT_IO_ALLOW_MMAP
        self.flags = flags & wanted
        out = k.pack_init(self.minor, max(max_readahead, MAX_WRITE), self.flags, 64, 48,
                          MAX_WRITE, 1, MAX_PAGES, self.flags >> 32)  # fmt: skip
        write(k.reply_parts(req.unique, 0, out))
        self.ops.kernel.started(write, self.flags, self._probe_epochs())
        log.debug("INIT: kernel 7.%d flags %#x, negotiated 7.%d flags %#x", minor, flags,
                  self.minor, self.flags)  # fmt: skip

    def _probe_epochs(self) -> bool:
        """Does the kernel take INC_EPOCH (7.44, Linux 6.16)? Coherent mounts cache
        names in the kernel only if it does."""
        try:
            os.writev(self.fd, k.notify_inc_epoch())
        except OSError as e:
            log.info("kernel has no FUSE_NOTIFY_INC_EPOCH (%s): names are not cached", e)
            return False
        return True

    def start(self) -> None:
        for i in range(self.threads):
            fd = self.fd if i == 0 else self._clone()
            t = threading.Thread(target=self._loop, args=(fd,), name=f"pohmelfs-fuse-{i}",
                                 daemon=True)  # fmt: skip
            self._workers.append(t)
            t.start()

    def _clone(self) -> int:
        try:
            fd = device.clone(self.fd)
        except OSError:
            return self.fd  # old kernels: share the one descriptor
        self._fds.append(fd)
        return fd

    def wait(self, timeout: float | None = None) -> bool:
        return self.stopped.wait(timeout)

    def _read(self, fd: int, buf: bytearray) -> int | None:
        while True:
            try:
                return os.readv(fd, [buf])
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted before we read it
                if e.errno == errno.ENODEV:
                    return None  # unmounted
                raise

    def _loop(self, fd: int) -> None:
        buf = bytearray(MAX_WRITE + 64 * 1024)
        view = memoryview(buf)
        write = writer(fd)
        setxattr_ext = bool(self.flags & k.SETXATTR_EXT)
        counts: dict[int, int] = {}  # (this thread's alone: no lock)
        self._counts.append(counts)
        try:
            while not self.stopped.is_set():
                n = self._read(fd, buf)
                if n is None:
                    break
                try:
                    req = k.parse_request(view[:n], setxattr_ext)
                except k.FuseError as e:
                    log.error("bad request from the kernel: %s", e)
                    continue
                if req.opcode == k.Op.DESTROY:
                    write(k.reply_parts(req.unique, 0))
                    break
                counts[req.opcode] = counts.get(req.opcode, 0) + 1
                self.ops.dispatch(req, Replier(req.unique, write, fd))
        except Exception:
            log.exception("FUSE reader thread failed")
        finally:
            self.stopped.set()

    def requests(self) -> dict[str, int]:
        """The kernel's requests served so far, by operation."""
        total: dict[str, int] = {}
        for counts in list(self._counts):
            # (dict.copy runs no Python code: its thread cannot change it meanwhile)
            for opcode, n in counts.copy().items():
                name = k.Op(opcode).name if opcode in k.Op._value2member_map_ else str(opcode)
                total[name] = total.get(name, 0) + n
        return total

    def close(self) -> None:
        self.stopped.set()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
