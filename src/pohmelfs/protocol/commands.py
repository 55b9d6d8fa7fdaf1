"""Commands, flags and the payload layout (schema) of every message."""

from __future__ import annotations

import enum

from .fields import U32_MAX, U64_MAX, ProtocolError


class Flag(enum.IntFlag):
    REPLY = 0x1  # answers the request with the same xid
    NOTIFY = 0x2  # server-initiated; xid is from the server's own sequence
    MORE = 0x4  # a streamed reply: further frames with this xid follow
    # With REPLY, no payload: the request waits for other clients; the server is at
    # work on it and its answer follows (the requester's time-out starts again).
    PENDING = 0x8
    # On a request: its sender did not wait for it (a write sent behind, a removal sent
    # ahead, a close): every later request of the connection is applied after it.
    # Without it, a request that must wait for other clients holds up nothing else.
    BEHIND = 0x10
    # On a request: sent before, on a connection of this client session that was lost
    # before its answer came; a server that applied it then answers as it did then.
    RESENT = 0x20
    # On a change: it leaves the versions of what it changes alone (a resync's copy,
    # which sets the copied object's version itself, with SETVERSION).
    UNVERSIONED = 0x40


KNOWN_FLAGS = int(Flag.REPLY | Flag.NOTIFY | Flag.MORE | Flag.PENDING | Flag.BEHIND
                  | Flag.RESENT | Flag.UNVERSIONED)  # fmt: skip
# Plain ints for the hot paths: IntFlag arithmetic builds enum objects.
FLAG_REPLY, FLAG_NOTIFY, FLAG_MORE = int(Flag.REPLY), int(Flag.NOTIFY), int(Flag.MORE)
FLAG_PENDING, FLAG_BEHIND, FLAG_RESENT = int(Flag.PENDING), int(Flag.BEHIND), int(Flag.RESENT)
FLAG_UNVERSIONED = int(Flag.UNVERSIONED)
REQUEST_FLAGS = FLAG_BEHIND | FLAG_RESENT | FLAG_UNVERSIONED  # the flags a request may carry


MAX_SERVERS = 32  # a client's server set, at most: MISSING names no more
# OPEN's ``version`` when it vouches for none (versions are 62 bits: never this)
UNKNOWN_VERSION = U64_MAX


class Cap(enum.IntFlag):
    READ_ONLY = 0x1
    XATTR = 0x2


class CacheMode(enum.IntEnum):
    """A cache lock's mode: OPEN's and CACHE's ``cache``/``type``, REVOKE's ``keep``."""

    SHARED = 0
    EXCLUSIVE = 1
    RELEASE = 2  # none (asked for: give it up; kept: nothing)


class LockType(enum.IntEnum):
    """An advisory lock's ``type`` (LOCK, GETLK): the protocol's, not the host's fcntl."""

    RDLCK = 0
    WRLCK = 1
    UNLCK = 2


# HELLO's ``notices``: the notifications a client wants beyond REVOKE.
NOTICE_RESIZE = 0x1


class Command(enum.IntEnum):
    HELLO = 1
    PING = 2
    STATFS = 3
    LOOKUP = 4
    READDIR = 5
    OPEN = 6
    CLOSE = 7
    READ = 8
    WRITE = 9
    FSTAT = 10
    FTRUNCATE = 11
    FSYNC = 12
    TRUNCATE = 13
    MKDIR = 14
    MAKEDIRS = 15
    RMDIR = 16
    RMTREE = 17
    UNLINK = 18
    RENAME = 19
    LINK = 20
    SYMLINK = 21
    READLINK = 22
    MKNOD = 23
    CHMOD = 24
    CHOWN = 25
    UTIMES = 26
    GETXATTR = 27
    SETXATTR = 28
    LISTXATTR = 29
    REMOVEXATTR = 30
    FALLOCATE = 31
    LOCK = 32
    GETLK = 33
    CACHE = 34
    REVOKE = 35
    LEASE = 36
    RESIZE = 37
    AUTH = 38
    VERSION = 39
    SETVERSION = 40
    PEERS = 41
    MISSING = 42
    CLEAR = 43
    MARKED = 44
    COPY = 45


# The commands that change the export (besides OPEN with O_CREAT or O_TRUNC): what a
# read-only key may not send, and whose answers a server keeps for a resend.
CHANGES = frozenset({
    Command.WRITE, Command.FTRUNCATE, Command.FALLOCATE, Command.TRUNCATE, Command.MKDIR,
    Command.MAKEDIRS, Command.RMDIR, Command.RMTREE, Command.UNLINK, Command.RENAME,
    Command.LINK, Command.SYMLINK, Command.MKNOD, Command.CHMOD, Command.CHOWN,
    Command.UTIMES, Command.SETXATTR, Command.REMOVEXATTR, Command.SETVERSION, Command.COPY,
})  # fmt: skip

# HELLO's and AUTH's ``auth``: how the client proves its key.
AUTH_NONE = 0  # an --insecure server on loopback: every identity squashed
AUTH_SECRET = 1  # HMAC-SHA256 challenge-response over a shared secret; frames tagged
AUTH_TLS = 2  # the TLS client certificate (the channel protects every frame)


# Bits of the UTIMES "which" field.
UTIME_ATIME_NOW = 0x1
UTIME_ATIME_OMIT = 0x2
UTIME_MTIME_NOW = 0x4
UTIME_MTIME_OMIT = 0x8

# The value of CHOWN's uid or gid that leaves it unchanged.
ID_UNCHANGED = U32_MAX


Schema = tuple[tuple[str, str], ...]
# "data" as the last field means: the rest of the payload, raw.
DATA = ("data", "data")

_C = Command
# Advisory locks on the file of handle oid, bytes [offset, offset+length), length 0 =
# to the end of the file. type: 0 shared, 1 exclusive, 2 unlock.
_LOCK_REQUEST: Schema = (("owner", "u64"), ("type", "u32"), ("flags", "u32"), ("pid", "u32"))
LOCK_WAIT = 0x1  # wait for a conflicting lock to go instead of failing with EAGAIN
LOCK_FLOCK = 0x2  # a whole-file flock() lock (separate from POSIX record locks)
REQUESTS: dict[Command, Schema] = {
    # keepalive_ms: while a request waits for other clients, send PENDING this often;
    # notices: NOTICE_* bits (a mount wants RESIZE, a library client does not)
    # key: the name of the client's key (empty: none); nonce: the client's challenge
    _C.HELLO: (
        ("version", "u32"),
        ("max_payload", "u32"),
        ("keepalive_ms", "u32"),
        ("notices", "u32"),
        ("client", "name"),
        ("key", "name"),
        ("nonce", "nonce"),
        # the client session this connection belongs to (random, the client's own; a
        # session outlives its connections: the server keeps its recent replies)
        ("session", "session"),
    ),
    # proof: HMAC-SHA256 of the handshake under the key (all zero without a secret)
    _C.AUTH: (("proof", "nonce"),),
    _C.PING: (),
    _C.STATFS: (("cred", "cred"),),
    _C.LOOKUP: (("cred", "cred"), ("path", "path")),
    _C.READDIR: (("cred", "cred"), ("path", "path")),
    # cache: a cache lock to grant at once if nothing conflicts (0 shared, 1
    # exclusive, 2 none); the reply's ``cached`` says which was granted (2: none).
    _C.OPEN: (
        ("cred", "cred"),
        ("path", "path"),
        ("flags", "u32"),
        ("mode", "u32"),
        ("cache", "u32"),
        ("fid", "fid"),  # the file a reopen must find (all zero: any)
    ),
    _C.CLOSE: (),
    _C.READ: (),
    _C.WRITE: (DATA,),
    # oid: the handle copied to, at offset, length bytes; src: the handle copied from
    _C.COPY: (("src", "u64"), ("src_offset", "u64")),
    _C.FSTAT: (),
    _C.FTRUNCATE: (),
    _C.FSYNC: (("datasync", "u32"),),
    _C.TRUNCATE: (("cred", "cred"), ("path", "path")),
    _C.MKDIR: (("cred", "cred"), ("path", "path"), ("mode", "u32")),
    _C.MAKEDIRS: (("cred", "cred"), ("path", "path"), ("mode", "u32"), ("parent_mode", "u32")),
    _C.RMDIR: (("cred", "cred"), ("path", "path")),
    _C.RMTREE: (("cred", "cred"), ("path", "path")),
    _C.UNLINK: (("cred", "cred"), ("path", "path")),
    _C.RENAME: (("cred", "cred"), ("path", "path"), ("new", "path"), ("flags", "u32")),
    _C.LINK: (("cred", "cred"), ("path", "path"), ("new", "path")),
    _C.SYMLINK: (("cred", "cred"), ("target", "name"), ("path", "path")),
    _C.READLINK: (("cred", "cred"), ("path", "path")),
    _C.MKNOD: (("cred", "cred"), ("path", "path"), ("mode", "u32"), ("rdev", "u64")),
    _C.CHMOD: (("cred", "cred"), ("path", "path"), ("mode", "u32")),
    _C.CHOWN: (("cred", "cred"), ("path", "path"), ("uid", "u32"), ("gid", "u32")),
    _C.UTIMES: (
        ("cred", "cred"),
        ("path", "path"),
        ("atime_ns", "i64"),
        ("mtime_ns", "i64"),
        ("which", "u32"),
    ),
    _C.GETXATTR: (("cred", "cred"), ("path", "path"), ("name", "name")),
    _C.SETXATTR: (
        ("cred", "cred"),
        ("path", "path"),
        ("name", "name"),
        ("value", "blob"),
        ("flags", "u32"),
    ),
    _C.LISTXATTR: (("cred", "cred"), ("path", "path")),
    _C.REMOVEXATTR: (("cred", "cred"), ("path", "path"), ("name", "name")),
    _C.FALLOCATE: (("mode", "u32"),),
    _C.LOCK: _LOCK_REQUEST,
    _C.GETLK: _LOCK_REQUEST,
    # A cache lock on the file of handle oid, bytes [offset, offset+length), length 0 =
    # to the end. type: 0 shared (may cache reads), 1 exclusive (may buffer writes),
    # 2 release. The grant carries the file's attributes.
    _C.CACHE: (("type", "u32"),),
    _C.REVOKE: (),  # only ever a client's answer to the REVOKE notification
    _C.RESIZE: (),  # likewise
    _C.MARKED: (),  # likewise
    # LOOKUP that also asks for a shared cache lock on the attributes of a regular
    # file, with no handle (a lease): the reply's oid names it (0: none), for REVOKE
    # and for CLOSE, which gives it back.
    _C.LEASE: (("cred", "cred"), ("path", "path")),
    # The version of the object at ``path`` on this server (``server/versions.py``).
    _C.VERSION: (("cred", "cred"), ("path", "path")),
    # Set it to ``version`` if it is still ``expect`` and no change of it is under
    # way; otherwise ESTALE (a resync's copy is then done again).
    _C.SETVERSION: (("cred", "cred"), ("path", "path"), ("expect", "u64"), ("version", "u64")),
    # The servers this server knows missed changes it applied (``server/peers.py``).
    _C.PEERS: (),
    # The servers of the client's set its changes do not reach from now on (their
    # addresses as the client names them): each is marked behind here once a change
    # of this session is applied, or at once if ``now`` (one may have been missed).
    _C.MISSING: (("names", "names"), ("now", "u32")),
    # A resync made ``names[0]`` the same as this server: its mark goes if it is
    # still at generation ``expect`` and no session connected leaves it out; else
    # ESTALE.
    _C.CLEAR: (("cred", "cred"), ("names", "names"), ("expect", "u64")),
}

_ATTR_REPLY: Schema = (("attr", "attr"),)
# A name made: the new object, and the directory it is in as it is after the change
# (so a client holding the directory's lock need not ask for it again).
_NAMED: Schema = (("attr", "attr"), ("dir", "attr"))
REPLIES: dict[Command, Schema] = {c: () for c in Command}
REPLIES.update(
    {
        # The challenge: what the server wants (auth: AUTH_*) and its own nonce.
        _C.HELLO: (("version", "u32"), ("auth", "u32"), ("nonce", "nonce")),
        # The welcome, once the client proved its key; proof: the server's; idle_ms: a
        # connection silent this long is closed (clients PING well before).
        _C.AUTH: (
            ("max_payload", "u32"),
            ("idle_ms", "u32"),
            ("caps", "u32"),
            ("fsid", "u64"),
            ("statfs", "statfs"),
            ("proof", "nonce"),
            ("resumed", "u32"),  # 1: the server knew the session and kept its replies
        ),
        _C.STATFS: (("statfs", "statfs"),),
        _C.LOOKUP: _ATTR_REPLY,
        _C.READDIR: (("entries", "entries"),),
        # writers: handles open for writing elsewhere; dir: see _NAMED (all zero when
        # the open created nothing)
        _C.OPEN: (
            ("attr", "attr"),
            ("writers", "u32"),
            ("cached", "u32"),
            ("dir", "attr"),
            ("fid", "fid"),  # the identity of the file opened
            ("watchers", "u32"),  # other clients that hear of its size changes (RESIZE)
            # the file's version (versions.py) while the cache lock granted holds it
            # still; UNKNOWN_VERSION when none was granted or a change is under way
            ("version", "u64"),
        ),
        _C.READ: (DATA,),
        _C.FSTAT: _ATTR_REPLY,
        _C.MKDIR: _NAMED,
        _C.MAKEDIRS: _ATTR_REPLY,
        _C.LINK: _NAMED,
        _C.SYMLINK: _NAMED,
        _C.MKNOD: _NAMED,
        _C.UNLINK: (("dir", "attr"),),
        _C.RMDIR: (("dir", "attr"),),
        _C.RENAME: (("dir", "attr"), ("new_dir", "attr")),
        _C.READLINK: (("target", "name"),),
        _C.GETXATTR: (("value", "blob"),),
        # writers, watchers: on other clients, as in OPEN's reply
        _C.CACHE: (("attr", "attr"), ("writers", "u32"), ("watchers", "u32")),
        _C.LEASE: (("attr", "attr"), ("cached", "u32")),  # cached: 0 leased, 2 not
        _C.GETLK: (("type", "u32"), ("pid", "u32")),  # a conflicting lock: offset, length
        _C.LISTXATTR: (("names", "names"),),
        # busy: changes of the object under way (applied, or being applied, and not yet
        # counted in ``version``)
        _C.VERSION: (("version", "u64"), ("busy", "u32")),
        # behind: b"ADDRESS GENERATION" for each server marked behind
        _C.PEERS: (("behind", "names"),),
    }
)
# An error reply (status != 0) carries a human-readable message as its data.
ERROR_REPLY: Schema = (DATA,)
# Server-initiated messages. REVOKE: give up the cache lock of handle oid on
# [offset, offset+length), keeping at most ``keep`` (0 shared, 2 nothing); the client
# writes back and drops its cache first, then answers with a REVOKE reply (same xid).
# RESIZE: the file of handle oid changed size (by another client): its attributes now,
# and its last byte (256: empty), so that a kernel can learn the new end of the file;
# answered once taken in.
NOTIFICATIONS: dict[Command, Schema] = {
    Command.REVOKE: (("keep", "u32"),),
    Command.RESIZE: (("attr", "attr"), ("last", "u32")),
    # Servers newly marked behind here (``server/peers.py``): not to be read from, nor
    # taken back, until resynced.
    Command.MARKED: (("names", "names"),),
}


def schema_for(cmd: Command, flags: int, status: int) -> Schema:
    if flags & FLAG_NOTIFY:
        try:
            return NOTIFICATIONS[cmd]
        except KeyError:
            raise ProtocolError(f"unknown notification {cmd.name}") from None
    if flags & FLAG_PENDING:
        return ()
    if flags & FLAG_REPLY:
        return ERROR_REPLY if status else REPLIES[cmd]
    return REQUESTS[cmd]


def _flag_problem(flags: int, status: int) -> str | None:
    if (flags in (0, FLAG_BEHIND) and status == 0) or flags == FLAG_REPLY:
        return None  # the common cases, decided at once
    if flags & ~KNOWN_FLAGS:
        return f"unknown flags {flags:#x}"
    if flags & FLAG_REPLY and flags & FLAG_NOTIFY:
        return "frame is both reply and notification"
    if flags & FLAG_MORE and not flags & FLAG_REPLY:
        return "MORE on a frame that is not a reply"
    if flags & FLAG_PENDING and (flags & ~FLAG_PENDING != FLAG_REPLY or status):
        return "PENDING only on a plain reply with no status"
    if flags & REQUEST_FLAGS and flags & (FLAG_REPLY | FLAG_NOTIFY):
        return "BEHIND, RESENT and UNVERSIONED only on a request"
    if status and not flags & FLAG_REPLY:
        return "status set on a frame that is not a reply"
    return None


_SCHEMA_NAMES: dict[Schema, frozenset[str]] = {}


def _names(schema: Schema) -> frozenset[str]:
    names = _SCHEMA_NAMES.get(schema)
    if names is None:
        names = _SCHEMA_NAMES[schema] = frozenset(n for n, _ in schema)
    return names
