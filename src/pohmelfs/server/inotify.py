"""inotify(7) through ctypes: watches on single objects, for a server that
fanotify cannot serve (not root, or a filesystem it cannot mark). A watch is on
an inode, named here by a descriptor of it (``/proc/self/fd/N``: no path of the
export is walked twice), and reports no process: telling pohmelfs' own changes
apart is the caller's (``heldwatch.py``, by change attributes).

``parse`` is pure (bytes in, events out), so the format is tested without a
kernel.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import NamedTuple

from .linux import checked

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_init1.restype = ctypes.c_int
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_add_watch.restype = ctypes.c_int
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.inotify_rm_watch.restype = ctypes.c_int

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000  # the watch is gone (removed, or its inode is)
IN_EXCL_UNLINK = 0x4000000
IN_ISDIR = 0x40000000  # (the entry an event names is a directory)
# What an entry of a watched directory reports that changes only the entry (which
# is watched itself if somebody holds it), not the directory's names.
ENTRY_ONLY = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE
# Everything that changes an object's data, attributes or (a directory's) names.
CHANGES = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_EXCL_UNLINK)  # fmt: skip

EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (of the name that follows)
NAME_MAX = 255


class Event(NamedTuple):
    wd: int
    mask: int
    named: bool  # about an entry of the watched directory, not the directory itself


def parse(buf: bytes | memoryview) -> list[Event]:
    """The events of one read (the names themselves are not kept: a directory's
    change is looked up on the directory). A length that does not add up raises
    ValueError."""
    view = memoryview(buf)
    events = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < EVENT.size:
            raise ValueError("truncated event")
        wd, mask, _cookie, length = EVENT.unpack_from(view, pos)
        if length > NAME_MAX + 1 + EVENT.size or pos + EVENT.size + length > len(view):
            raise ValueError(f"bad event (name of {length} bytes)")
        events.append(Event(wd, mask, length > 0))
        pos += EVENT.size + length
    return events


def new_group() -> int:
    """A non-blocking inotify instance (EMFILE past fs.inotify.max_user_instances)."""
    return checked(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")


def watch(group: int, fd: int) -> int:
    """Watch the object ``fd`` is a descriptor of; its watch descriptor (ENOSPC past
    fs.inotify.max_user_watches). One object watched twice has one watch."""
    return checked(_libc.inotify_add_watch(group, b"/proc/self/fd/%d" % fd, CHANGES),
                  "inotify_add_watch")  # fmt: skip


def unwatch(group: int, wd: int) -> None:
    _libc.inotify_rm_watch(group, wd)  # (EINVAL if its inode went first: nothing to do)
