"""Opening /dev/fuse and mounting it: mount(2) as root, fusermount3 otherwise."""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import socket
import subprocess

_libc = ctypes.CDLL(None, use_errno=True)

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
FUSE_DEV_IOC_CLONE = 0x8004E500  # _IOR(229, 0, uint32_t)


def _oserror(what: str, target: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", target)


def mount_options(fd: int, max_read: int, allow_other: bool, default_permissions: bool) -> str:
    opts = [f"fd={fd}", "rootmode=40000", f"user_id={os.getuid()}",
            f"group_id={os.getgid()}", f"max_read={max_read}"]  # fmt: skip
    if allow_other:
        opts.append("allow_other")
    if default_permissions:
        opts.append("default_permissions")
    return ",".join(opts)


def mount(mountpoint: str, source: str, *, max_read: int, allow_other: bool,
          default_permissions: bool) -> int:  # fmt: skip
    """Mount a new FUSE filesystem at ``mountpoint``; returns the /dev/fuse fd."""
    if os.geteuid() == 0:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        data = mount_options(fd, max_read, allow_other, default_permissions)
        ret = _libc.mount(source.encode(), os.fsencode(mountpoint), b"fuse.pohmelfs",
                          ctypes.c_ulong(MS_NOSUID | MS_NODEV), data.encode())  # fmt: skip
        if ret != 0:
            e = _oserror("mount", mountpoint)
            os.close(fd)
            raise e
        return fd
    return _fusermount(mountpoint, source, max_read, allow_other, default_permissions)


def _fusermount(mountpoint: str, source: str, max_read: int, allow_other: bool,
                default_permissions: bool) -> int:  # fmt: skip
    """Let the setuid fusermount3 mount for us; it passes back the fd over a socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    opts = [f"fsname={source}", "subtype=pohmelfs", f"max_read={max_read}"]
    if allow_other:
        opts.append("allow_other")
    if default_permissions:
        opts.append("default_permissions")
    env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
    try:
        proc = subprocess.run(["fusermount3", "-o", ",".join(opts), "--", mountpoint],
                              env=env, pass_fds=[theirs.fileno()], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
    except FileNotFoundError:
        raise OSError(errno.ENOENT, "fusermount3 not found (install fuse3)", mountpoint) from None
    finally:
        theirs.close()
    try:
        if proc.returncode != 0:
            raise OSError(errno.EPERM, f"fusermount3: {proc.stderr.strip()}", mountpoint)
        fds = array.array("i")
        _msg, anc, _flags, _addr = ours.recvmsg(1, socket.CMSG_LEN(fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: fds.itemsize])
        if not fds:
            raise OSError(errno.EIO, "fusermount3 did not pass a /dev/fuse descriptor", mountpoint)
        os.set_inheritable(fds[0], False)
        return fds[0]
    finally:
        ours.close()


def clone(fd: int) -> int:
    """A second descriptor on the same FUSE connection, for another reader thread."""
    new = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(new, FUSE_DEV_IOC_CLONE, array.array("I", [fd]))
    except OSError:
        os.close(new)
        raise
    return new


def unmount(mountpoint: str, lazy: bool = False) -> None:
    if os.geteuid() == 0:
        if _libc.umount2(os.fsencode(mountpoint), MNT_DETACH if lazy else 0) != 0:
            raise _oserror("umount", mountpoint)
        return
    args = ["fusermount3", "-u", *(["-z"] if lazy else []), "--", mountpoint]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise OSError(errno.EBUSY, f"fusermount3: {proc.stderr.strip()}", mountpoint)


def _mountinfo(mountpoint: str) -> list[str] | None:
    """The /proc/self/mountinfo fields of the mount at ``mountpoint`` (the last one)."""
    target = os.path.abspath(mountpoint)  # no syscall: a hung mount must not hang us
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # Mount points are octal-escaped there (a space is \040).
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                found = fields
    return found


def is_mounted(mountpoint: str) -> bool:
    return _mountinfo(mountpoint) is not None


def bdi_of(mountpoint: str) -> str | None:
    """The mount's backing device info name (major:minor), for read_ahead_kb."""
    fields = _mountinfo(mountpoint)
    return fields[2] if fields else None


def set_readahead(mountpoint: str, kib: int) -> bool:
    bdi = bdi_of(mountpoint)
    if bdi is None:
        return False
    try:
        with open(f"/sys/class/bdi/{bdi}/read_ahead_kb", "w") as f:
            f.write(str(kib))
        return True
    except OSError:
        return False
