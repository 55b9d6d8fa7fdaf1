"""fanotify(7) through ctypes: a notification group on a whole filesystem that
reports, for each change, the process that made it and file handles of the
objects concerned (the object itself, its directory and name), never a
descriptor; and ``open_by_handle_at`` to learn which file a handle means.

``parse`` is pure (bytes in, events out), so the format is tested without a
kernel. Everything here needs CAP_SYS_ADMIN (marking a filesystem) and
CAP_DAC_READ_SEARCH (opening by handle): a server run as root.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

from .linux import checked

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]  # fmt: skip
_libc.fanotify_mark.restype = ctypes.c_int
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int

# fanotify_init flags
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_TARGET_FID = 0x1000
FAN_REPORT_DFID_NAME_TARGET = (FAN_REPORT_DIR_FID | FAN_REPORT_NAME | FAN_REPORT_FID
                               | FAN_REPORT_TARGET_FID)  # fmt: skip
# fanotify_mark flags
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
# events
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_DELETE_SELF = 0x400
FAN_MOVE_SELF = 0x800
FAN_Q_OVERFLOW = 0x4000
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000
CHANGES = (FAN_MODIFY | FAN_ATTRIB | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE
           | FAN_DELETE_SELF | FAN_MOVE_SELF | FAN_RENAME | FAN_ONDIR)  # fmt: skip
# info records
INFO_FID = 1
INFO_DFID_NAME = 2
INFO_DFID = 3
INFO_OLD_DFID_NAME = 10
INFO_NEW_DFID_NAME = 12

METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
METADATA_VERSION = 3
INFO_HEADER = struct.Struct("=BBH")  # info_type, pad, len
FSID = 8
HANDLE_HEAD = struct.Struct("=Ii")  # handle_bytes, handle_type
MAX_HANDLE = 128  # MAX_HANDLE_SZ: the kernel's largest file handle


class Record(NamedTuple):
    """One object an event names: ``kind`` INFO_FID (the object), INFO_DFID_NAME and
    the rename ones (its directory, and ``name`` in it), INFO_DFID (the directory)."""

    kind: int
    handle: bytes  # a struct file_handle, as open_by_handle_at takes it
    name: bytes


class Event(NamedTuple):
    mask: int
    pid: int
    records: tuple[Record, ...]


def parse(buf: bytes | memoryview, skip_pid: int = -1) -> list[Event]:
    """The events in what one read of the group returned, but those of ``skip_pid``
    (an overflow is never skipped). A record of an unknown kind is skipped; a length
    that does not add up raises ValueError."""
    view = memoryview(buf)
    events = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < METADATA.size:
            raise ValueError("truncated event")
        event_len, vers, _r, meta_len, mask, _fd, pid = METADATA.unpack_from(view, pos)
        if vers != METADATA_VERSION or event_len < meta_len or meta_len < METADATA.size \
                or pos + event_len > len(view):  # fmt: skip
            raise ValueError(f"bad event (version {vers}, length {event_len})")
        if pid == skip_pid and not mask & FAN_Q_OVERFLOW:
            pos += event_len
            continue
        records = []
        at, end = pos + meta_len, pos + event_len
        while at + INFO_HEADER.size <= end:
            kind, _pad, length = INFO_HEADER.unpack_from(view, at)
            if length < INFO_HEADER.size or at + length > end:
                raise ValueError(f"bad info record of {length} bytes")
            body = view[at + INFO_HEADER.size + FSID : at + length]
            if kind in (INFO_FID, INFO_DFID, INFO_DFID_NAME, INFO_OLD_DFID_NAME,
                        INFO_NEW_DFID_NAME):  # fmt: skip
                if len(body) < HANDLE_HEAD.size:
                    raise ValueError(f"file handle record of {length} bytes")
                size, _type = HANDLE_HEAD.unpack_from(body)
                handle_end = HANDLE_HEAD.size + size
                if size > MAX_HANDLE or handle_end > len(body):
                    raise ValueError(f"bad file handle of {size} bytes")
                name = b""
                if kind not in (INFO_FID, INFO_DFID):
                    name = bytes(body[handle_end:]).split(b"\0", 1)[0]
                records.append(Record(kind, bytes(body[:handle_end]), name))
            at += length
        events.append(Event(mask, pid, tuple(records)))
        pos += event_len
    return events


def watch_filesystem(path: str) -> int:
    """A non-blocking notification group for every change on the filesystem that
    holds ``path``; its descriptor (``read`` gives what ``parse`` takes)."""
    flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME_TARGET
    fd = checked(_libc.fanotify_init(flags, os.O_RDONLY), "fanotify_init")
    try:
        checked(_libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, CHANGES, -1,
                                   os.fsencode(path)), "fanotify_mark")  # fmt: skip
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_by_handle(mount_fd: int, handle: bytes) -> int:
    """An O_PATH descriptor of the object ``handle`` names (any descriptor on its
    filesystem as ``mount_fd``); OSError (ESTALE) if it is gone."""
    return checked(_libc.open_by_handle_at(mount_fd, handle, os.O_PATH | os.O_CLOEXEC),
                  "open_by_handle_at")  # fmt: skip
