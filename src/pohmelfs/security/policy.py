"""What each client key may do, like the lines of an NFS exports file.

A server knows its clients by key: a shared secret (``secret=FILE``) or the
common name of a TLS client certificate (``tls``). Each key has a policy:
read-only or read-write, and how the identities its requests claim are
mapped (``root_squash``, the default: a claimed uid or gid 0 acts as the
anonymous ids; ``all_squash``: every request acts as the anonymous ids;
``no_root_squash``: believed as claimed, for a mount the server's own
administrator runs). The exports file has one key per line::

    # name     options
    laptop     secret=/etc/pohmelfs/laptop.secret,rw,root_squash
    backup     secret=/etc/pohmelfs/backup.secret,ro,all_squash,anonuid=34,anongid=34
    build-01   tls,rw,no_root_squash
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import MAX_NAME, Cred
from .keys import SecurityConfigError, load_secret

NOBODY = 65534
SQUASHES = ("root_squash", "all_squash", "no_root_squash")


@dataclass(frozen=True)
class ClientPolicy:
    read_only: bool = False
    squash: str = "root_squash"
    anon_uid: int = NOBODY
    anon_gid: int = NOBODY

    def __post_init__(self) -> None:
        if self.squash not in SQUASHES:
            raise SecurityConfigError(f"unknown squash {self.squash!r} (one of {SQUASHES})")
        for what, v in (("anonuid", self.anon_uid), ("anongid", self.anon_gid)):
            if not 0 <= v < 0xFFFFFFFF:
                raise SecurityConfigError(f"{what}={v} is not a uid or gid")

    @property
    def trusts_root(self) -> bool:
        """A claimed root acts as root (and so may do what only root may)."""
        return self.squash == "no_root_squash"

    def map(self, cred: Cred) -> Cred:
        """The identity a request acts with, from the one it claims."""
        if self.squash == "no_root_squash":
            return cred
        if self.squash == "all_squash":
            return Cred(self.anon_uid, self.anon_gid, ())
        uid, gid, groups = cred
        if uid and gid and 0 not in groups:
            return cred
        return Cred(
            uid or self.anon_uid,
            gid or self.anon_gid,
            tuple(g or self.anon_gid for g in groups),
        )


INSECURE = ClientPolicy(squash="all_squash")  # every identity squashed


@dataclass(frozen=True)
class ClientKey:
    """One client key: its name, its secret (None: a TLS certificate's name)."""

    name: str
    secret: bytes | None
    policy: ClientPolicy


def parse_options(text: str, where: str) -> tuple[str | None, bool, ClientPolicy]:
    """(secret file, tls, policy) from an exports line's options."""
    secret_file: str | None = None
    tls = False
    read_only = False
    squash = "root_squash"
    anon = {"anonuid": NOBODY, "anongid": NOBODY}
    for opt in filter(None, (o.strip() for o in text.split(","))):
        key, eq, value = opt.partition("=")
        if key == "secret" and eq and value:
            secret_file = value
        elif opt == "tls":
            tls = True
        elif opt in ("ro", "rw"):
            read_only = opt == "ro"
        elif opt in SQUASHES:
            squash = opt
        elif key in anon and eq:
            try:
                anon[key] = int(value)
            except ValueError:
                raise SecurityConfigError(f"{where}: {key}={value!r} is not a number") from None
        else:
            raise SecurityConfigError(f"{where}: unknown option {opt!r}")
    if (secret_file is None) == (not tls):
        raise SecurityConfigError(f"{where}: give exactly one of secret=FILE and tls")
    policy = ClientPolicy(read_only, squash, anon["anonuid"], anon["anongid"])
    return secret_file, tls, policy


def load_exports(path: str) -> dict[str, ClientKey]:
    """The client keys an exports file names, their secrets read."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SecurityConfigError(f"exports file {path}: {e}") from None
    keys: dict[str, ClientKey] = {}
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{n}"
        name, _, options = line.partition(" ")
        if len(name.encode()) > MAX_NAME or not name.isprintable():
            raise SecurityConfigError(f"{where}: bad key name {name!r}")
        if name in keys:
            raise SecurityConfigError(f"{where}: key {name!r} named twice")
        secret_file, _tls, policy = parse_options(options.strip(), where)
        secret = load_secret(secret_file) if secret_file is not None else None
        keys[name] = ClientKey(name, secret, policy)
    if not keys:
        raise SecurityConfigError(f"exports file {path}: names no client key")
    return keys
