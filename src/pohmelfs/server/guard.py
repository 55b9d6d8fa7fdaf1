"""What a session's key may ask: applied to every request before it runs.

The storage (``export.py``) does what it is told; this decides what a client
may tell it. The identity a request claims is mapped by the key's policy
(root squashed by default), so every later step, and the kernel's own
permission checks under that identity, see only the mapped one. A read-only
key gets EROFS for every change. Extended attributes in the ``security.``
and ``trusted.`` namespaces (file capabilities, LSM labels) are refused
unless the request acts as an unsquashed root, and the setuid and setgid bits
of files are dropped from every mode a client sets, unless the server runs
with ``allow_setuid``: a client must not be able to make a program that runs
with more rights on the server host than its user has there. Versions
(SETVERSION, changes marked UNVERSIONED) are for an unsquashed root too.
"""

from __future__ import annotations

import errno
import os
import stat

from ..protocol import CHANGES, FLAG_UNVERSIONED, Command, Message
from ..security.policy import ClientPolicy
from .storage import opens_for_writing

PRIVILEGED_XATTRS = (b"security.", b"trusted.")
VERSION_CHANGES = frozenset({Command.SETVERSION, Command.CLEAR, Command.MISSING})
SETID = stat.S_ISUID | stat.S_ISGID
NO_ID = 0xFFFFFFFF  # what setfsuid(-1) means: "tell me", never an identity


def _refused(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {what}")


class RequestGuard:
    def __init__(self, policy: ClientPolicy, allow_setuid: bool = False) -> None:
        self.policy = policy
        self.allow_setuid = allow_setuid

    def admit(self, m: Message) -> None:
        """Map ``m``'s identity and modes in place, or raise the OSError it gets."""
        fields = m.fields
        cred = fields.get("cred")
        if cred is not None:
            if NO_ID in (cred.uid, cred.gid) or NO_ID in cred.groups:
                raise _refused(errno.EINVAL, "(u32)-1 is no one's id")
            fields["cred"] = cred = self.policy.map(cred)
        cmd = m.cmd
        if self.policy.read_only and (
            cmd in CHANGES or (cmd is Command.OPEN and opens_for_writing(fields["flags"]))
        ):
            raise _refused(errno.EROFS, "this client's key is read-only")
        root = self.policy.trusts_root and cred is not None and cred.uid == 0
        versions = cmd in VERSION_CHANGES or m.flags & FLAG_UNVERSIONED
        if versions and not (self.policy.trusts_root and (cred is None or cred.uid == 0)):
            # (by handle, or no identity: a key that trusts root may claim it anyway)
            # A change that leaves versions alone, or a version set, could make a
            # stale server look current (a resync's, which copies owners anyway); marks
            # of servers behind force resyncs and are bounded: the same keys only.
            raise _refused(errno.EPERM, "versions are set by the server's root only")
        if cmd in (Command.SETXATTR, Command.REMOVEXATTR):
            name = bytes(fields["name"])
            if name.startswith(PRIVILEGED_XATTRS) and not root:
                raise _refused(errno.EPERM, f"{name.decode(errors='replace')} is for the "
                               "server's root only")  # fmt: skip
        if self.allow_setuid:
            return
        if cmd is Command.OPEN or cmd is Command.MKNOD:
            fields["mode"] &= ~SETID
        elif cmd is Command.MKDIR:
            fields["mode"] &= ~stat.S_ISUID
        elif cmd is Command.MAKEDIRS:
            fields["mode"] &= ~stat.S_ISUID
            fields["parent_mode"] &= ~stat.S_ISUID

    def chmod_mode(self, mode: int, st_mode: int) -> int:
        """The mode a CHMOD sets on a file of ``st_mode``: setgid stays on directories
        (it only makes new names inherit the group)."""
        if self.allow_setuid:
            return mode
        return mode & ~(stat.S_ISUID if stat.S_ISDIR(st_mode) else SETID)
