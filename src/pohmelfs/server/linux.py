"""Linux system calls the standard library does not wrap, through ctypes.

openat2 (confined path resolution), renameat2 (no-replace and exchange),
utimensat with UTIME_NOW/UTIME_OMIT, and per-thread credentials. glibc's
setgroups() changes every thread of the process, so the raw system call is
used: a server thread then acts for one caller without affecting the others.
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)

_SYSCALLS = {
    "x86_64": {"setgroups": 116, "renameat2": 316, "openat2": 437, "capget": 125, "capset": 126},
    "aarch64": {"setgroups": 159, "renameat2": 276, "openat2": 437, "capget": 90, "capset": 91},
}
_NR = _SYSCALLS.get(platform.machine(), _SYSCALLS["x86_64"])

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

_libc.syscall.restype = ctypes.c_long
_libc.setfsuid.restype = ctypes.c_int
_libc.setfsgid.restype = ctypes.c_int


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def checked(ret: int, what: str) -> int:
    """``ret`` of a libc call, or the OSError its errno means (``what``: the call)."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _check(ret: int, *names: bytes) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *[n.decode(errors="replace") for n in names])
    return ret


def openat2(dirfd: int, path: bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = _libc.syscall(
        ctypes.c_long(_NR["openat2"]),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    return _check(ret, path)


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    ret = _libc.syscall(
        ctypes.c_long(_NR["renameat2"]),
        ctypes.c_int(olddirfd),
        ctypes.c_char_p(old),
        ctypes.c_int(newdirfd),
        ctypes.c_char_p(new),
        ctypes.c_uint(flags),
    )
    _check(ret, old, new)


def utimensat(
    dirfd: int,
    name: bytes | None,
    atime: int | None,
    mtime: int | None,
    atime_now: bool,
    mtime_now: bool,
) -> None:
    """Set times in ns; None omits that time, *_now uses the current time."""

    def ts(value: int | None, now: bool) -> _Timespec:
        if now:
            return _Timespec(0, UTIME_NOW)
        if value is None:
            return _Timespec(0, UTIME_OMIT)
        sec, nsec = divmod(value, 1_000_000_000)
        return _Timespec(sec, nsec)

    times = (_Timespec * 2)(ts(atime, atime_now), ts(mtime, mtime_now))
    if name is None:  # the open file itself (glibc's utimensat refuses a NULL name)
        _check(_libc.futimens(ctypes.c_int(dirfd), times))
        return
    AT_SYMLINK_NOFOLLOW = 0x100
    ret = _libc.utimensat(
        ctypes.c_int(dirfd), ctypes.c_char_p(name), times, ctypes.c_int(AT_SYMLINK_NOFOLLOW)
    )
    _check(ret, name)


_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


def _capabilities() -> tuple[_CapHeader, Any]:
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(ctypes.c_long(_NR["capget"]), ctypes.byref(header), data))
    return header, data


CAP_SETGID, CAP_SETUID = 6, 7
SWITCH_CAPS = 1 << CAP_SETGID | 1 << CAP_SETUID


def set_thread_capabilities(all_permitted: bool, only: int = 0) -> None:
    """The calling thread's effective capabilities: every permitted one, or none, or
    (``only``) those of the mask that are permitted. The permitted set stays, so they
    can be raised again. Capabilities are per thread in Linux: the other threads of
    the server are not touched."""
    header, data = _capabilities()
    for i, half in enumerate(data):
        if all_permitted:
            half.effective = half.permitted
        else:
            half.effective = half.permitted & (only >> (32 * i)) & 0xFFFFFFFF
    _check(_libc.syscall(ctypes.c_long(_NR["capset"]), ctypes.byref(header), data))


def effective_capabilities() -> int:
    _header, data = _capabilities()
    return int(data[0].effective) | int(data[1].effective) << 32


def set_thread_creds(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """Make the calling thread's file-system identity (uid, gid, groups).

    Only the fs ids change, so the thread keeps its real and effective root
    ids and can switch back. Leaving fsuid 0 drops only the file capabilities
    (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER...), not CAP_SETFCAP, CAP_SYS_ADMIN
    or CAP_MKNOD: so for any uid but 0 the thread also gives up every effective
    capability, and the kernel treats it as exactly that user would be treated.
    """
    # Only what switching needs is raised for it, and a switch that fails part-way
    # leaves the thread with no capability at all (never with root's and the last
    # caller's identity: a later request of that caller would inherit them).
    set_thread_capabilities(False, only=SWITCH_CAPS)
    try:
        arr = (ctypes.c_uint * max(len(groups), 1))(*groups)
        ret = _libc.syscall(ctypes.c_long(_NR["setgroups"]), ctypes.c_size_t(len(groups)), arr)
        _check(ret)
        _libc.setfsgid(ctypes.c_uint(gid))
        _libc.setfsuid(ctypes.c_uint(uid))
        # setfs*id return the previous id and no error: read back to verify.
        if (
            _libc.setfsuid(ctypes.c_uint(0xFFFFFFFF)) != uid
            or _libc.setfsgid(ctypes.c_uint(0xFFFFFFFF)) != gid
        ):
            raise PermissionError(1, "cannot switch to the caller's credentials")
    except BaseException:
        set_thread_capabilities(False)
        raise
    set_thread_capabilities(uid == 0)


MAX_HANDLE_SZ = 128
AT_EMPTY_PATH = 0x1000


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


def file_handle(fd: int) -> bytes | None:
    """The file system's own stable handle of the open file ``fd`` (what NFS servers
    hand out: it names the inode and its generation, and survives reboots), or
    None where the file system has none."""
    handle = _FileHandle(MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    ret = _libc.name_to_handle_at(ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.byref(handle),
                                  ctypes.byref(mount_id), ctypes.c_int(AT_EMPTY_PATH))  # fmt: skip
    if ret < 0:
        return None
    n = min(handle.handle_bytes, MAX_HANDLE_SZ)
    return handle.handle_type.to_bytes(4, "big", signed=True) + bytes(handle.f_handle[:n])


FALLOC_FL_KEEP_SIZE = 0x01


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    ret = _libc.fallocate(
        ctypes.c_int(fd), ctypes.c_int(mode), ctypes.c_long(offset), ctypes.c_long(length)
    )
    _check(ret)


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """A blocking receive on ``sock`` fails with EAGAIN after ``seconds`` of silence
    (0: never). Unlike ``settimeout``, the socket stays blocking for its senders."""
    whole = int(seconds)
    tv = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)


def raise_descriptor_limit() -> None:
    """Open files up to the hard limit: every client handle holds a descriptor."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``): what a
    closed connection used is freed, but stays mapped in the process without it."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(ctypes.c_size_t(0))


CLONE_FS = 0x200


def private_umask_zero() -> None:
    """Give the calling thread its own umask of 0 (unshare CLONE_FS): the server
    creates files with exactly the modes clients send, already masked by the
    client's umask, without changing the umask of the process that embeds it."""
    _check(_libc.unshare(ctypes.c_int(CLONE_FS)))
    os.umask(0)
