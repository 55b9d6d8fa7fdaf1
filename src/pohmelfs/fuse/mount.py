"""Running a mount: connect, mount, serve the kernel, unmount on SIGTERM."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import protocol as p
from ..client.client import Client
from ..control import ControlServer
from . import device
from .operations import Operations
from .options import Options
from .session import MAX_WRITE, FuseSession

log = logging.getLogger("pohmelfs.fuse")


@dataclass
class MountConfig:
    servers: list[str]
    mountpoint: str
    allow_other: bool = False
    default_permissions: bool = True
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    timeout: float = 5.0
    dirty_timeout: float = 3.0  # seconds a write may be held back (coherent)
    threads: int = 4
    readahead_kib: int = 1024
    splice: bool = False
    writeback: bool = False
    coherent: bool = True  # cached locks; nocoherent: close-to-open with time-outs
    async_close: bool = False  # close(2) does not wait for the file's writes
    majority: bool = False  # a change needs a majority of the servers
    secret_file: str | None = None  # the key's shared secret
    key: str | None = None  # the key's name in the server's exports
    tls_cert: str | None = None  # mutual TLS instead
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_server_name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, servers: str, mountpoint: str, options: list[str]) -> MountConfig:
        """Build from ``-o a,b=c`` option strings; raises ValueError on unknown ones."""
        cfg = cls([s for s in servers.split(",") if s], os.path.abspath(mountpoint))
        for chunk in options:
            for opt in filter(None, chunk.split(",")):
                key, _, value = opt.partition("=")
                if key in ("allow_other", "default_permissions"):
                    setattr(cfg, key, True)
                elif key == "no_default_permissions":
                    cfg.default_permissions = False
                elif key in ("attr_timeout", "entry_timeout", "timeout", "dirty_timeout"):
                    setattr(cfg, key, _number(key, value, float))
                elif key in ("splice", "writeback", "async_close", "majority"):
                    setattr(cfg, key, True)
                elif key == "no_writeback":
                    cfg.writeback = False
                elif key in ("coherent", "nocoherent"):
                    cfg.coherent = key == "coherent"
                elif key in ("threads", "readahead_kib"):
                    setattr(cfg, key, _number(key, value, int))
                elif key in ("secret_file", "key", "tls_cert", "tls_key", "tls_ca",
                             "tls_server_name"):  # fmt: skip
                    if not value:
                        raise ValueError(f"mount option {key} needs a value")
                    is_file = key in ("secret_file", "tls_cert", "tls_key", "tls_ca")
                    setattr(cfg, key, os.path.abspath(value) if is_file else value)
                elif key in ("rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "auto",
                             "noauto", "user", "nouser", "users", "_netdev", "defaults",
                             "nofail") or key.startswith("x-"):  # fmt: skip
                    continue  # fstab and mount(8) words that mean nothing here
                else:
                    raise ValueError(f"unknown mount option {key!r}")
        if not cfg.servers:
            raise ValueError("no server given")
        if cfg.async_close and not cfg.coherent:
            raise ValueError("async_close needs coherent mounts (close-to-open waits at close)")
        if cfg.coherent:
            if cfg.entry_timeout != 1.0:
                raise ValueError("entry_timeout applies only with -o nocoherent")
            # Every path walk looks each name up again (entry timeout 0), and each
            # lookup brings fresh attributes; so attributes may stay for a second:
            # only a stat by name or by descriptor reads them, and the first comes
            # after a lookup, the second through a handle under a cache lock.
            cfg.entry_timeout = 0.0
        return cfg


def _number(key: str, value: str, kind: type) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"mount option {key} needs a number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"mount option {key} must not be negative")
    return number  # type: ignore[no-any-return]


def run_dir() -> str:
    """Where the daemons' PID files and control sockets are: /run/pohmelfs as root,
    else a directory of the user's own (OSError if one of that name is someone
    else's, or others may write it)."""
    if os.geteuid() == 0:
        path = "/run/pohmelfs"
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
        path = os.path.join(base, f"pohmelfs-{os.geteuid()}")
    os.makedirs(path, mode=0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{path} is not a directory of this user's alone", path)
    return path


def pid_file(mountpoint: str) -> str:
    return os.path.join(run_dir(), f"mount-{_name(mountpoint)}.pid")


def control_path(mountpoint: str) -> str:
    """The daemon's control socket (``control.py``: ``pohmelfs ctl``, ``stats``): named
    by a hash of the mount point's path, so that two mount points never share one."""
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:24]
    return os.path.join(run_dir(), f"mount-{digest}.sock")


def _name(mountpoint: str) -> str:
    # abspath, not realpath: no system call, so a hung mount cannot hang us here.
    return os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"


def run(cfg: MountConfig, ready: Callable[[str], None] | None = None) -> int:
    """Mount and serve until unmounted or signalled; returns an exit status."""
    # Nothing may touch the mount point between mount(2) and our answer to INIT:
    # the kernel would make that call wait for the very thread making it.
    pidf = pid_file(cfg.mountpoint)
    # RESIZE: the kernel's size of a file another client grows must grow too (mmap).
    client = Client(cfg.servers, timeout=cfg.timeout, umask=0, dirty_timeout=cfg.dirty_timeout,
                    notices=p.NOTICE_RESIZE, secret_file=cfg.secret_file, key=cfg.key,
                    tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, tls_ca=cfg.tls_ca,
                    tls_server_name=cfg.tls_server_name, majority=cfg.majority)  # fmt: skip
    opts = Options(cfg.attr_timeout, cfg.entry_timeout, MAX_WRITE, cfg.splice, cfg.writeback,
                   cfg.coherent, kernel_checks=cfg.default_permissions,
                   async_close=cfg.async_close)  # fmt: skip
    ops = Operations(client, opts)
    source = "pohmelfs:" + ",".join(cfg.servers)
    fd = device.mount(cfg.mountpoint, source, max_read=MAX_WRITE, allow_other=cfg.allow_other,
                      default_permissions=cfg.default_permissions)  # fmt: skip
    session = FuseSession(fd, ops, cfg.threads)
    control: ControlServer | None = None
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    # Taken synchronously by this thread; blocked in the threads started below.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        session.init()
        session.start()
        device.set_readahead(cfg.mountpoint, cfg.readahead_kib)
        with open(pidf, "w") as f:
            f.write(f"{os.getpid()}\n")
        control = ControlServer(control_path(cfg.mountpoint), client,
                                lambda: mount_view(client, ops, session))  # fmt: skip
        if ready is not None:
            ready(f"pohmelfs: mounted {source} on {cfg.mountpoint}")
        while not session.stopped.is_set():
            got = signal.sigtimedwait(stop_signals, 0.5)
            # A debugger or profiler attaching (ptrace) can make it return a siginfo
            # of nothing: only a stop signal stops us.
            if got is not None and got.si_signo in stop_signals:
                log.info("%s from pid %d: unmounting %s", signal.Signals(got.si_signo).name,
                         got.si_pid, cfg.mountpoint)  # fmt: skip
                unmount_quietly(cfg.mountpoint)
                session.wait(10)
                break
    finally:
        if device.is_mounted(cfg.mountpoint) and not session.stopped.is_set():
            unmount_quietly(cfg.mountpoint)
        if control is not None:
            control.close()
        session.close()
        ops.close()
        client.close()
        os.close(fd)
        try:
            os.unlink(pidf)
        except OSError:
            pass
    return 0


def mount_view(client: Client, ops: Operations, session: FuseSession) -> dict[str, Any]:
    """What ``pohmelfs stats`` shows of the mount itself (the kernel's page cache hits
    are the kernel's: only what reaches the daemon is counted)."""
    kernel = session.requests()
    return {
        "kernel_requests": sum(kernel.values()),
        "kernel_requests_by_op": dict(sorted(kernel.items(), key=lambda kv: -kv[1])),
        "network_requests": sum(s["requests"] for s in client.server_stats()),
        "in_flight": client.in_flight(),
        "held_bytes": client.held.bytes,
        "cached_files": ops.cache.held() if ops.cache is not None else 0,
        "coherent": ops.cache is not None,
    }


def unmount_quietly(mountpoint: str) -> None:
    """Unmount; if the mount is busy, detach it lazily (it goes when last used)."""
    try:
        device.unmount(mountpoint)
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.EPERM):
            log.warning("unmount %s: %s", mountpoint, e)
        try:
            device.unmount(mountpoint, lazy=True)
        except OSError as e2:
            log.warning("lazy unmount %s: %s", mountpoint, e2)


def umount(mountpoint: str, timeout: float = 30.0) -> None:
    """Stop the daemon serving ``mountpoint`` (it unmounts after writing back)."""
    mountpoint = os.path.abspath(mountpoint)
    pid = _daemon_pid(mountpoint)
    if pid is None:
        if not device.is_mounted(mountpoint):
            raise OSError(errno.EINVAL, "not mounted", mountpoint)
        unmount_quietly(mountpoint)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.05)
    raise OSError(errno.ETIMEDOUT, f"daemon {pid} did not stop within {timeout:g} s", mountpoint)


def _running(pid: int) -> bool:
    """True while ``pid`` runs (an exited child not yet reaped by its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _daemon_pid(mountpoint: str) -> int | None:
    try:
        with open(pid_file(mountpoint)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"pohmelfs" not in f.read():
                return None
    except OSError:
        return None
    return pid
