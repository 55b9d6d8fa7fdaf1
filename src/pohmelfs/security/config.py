"""The security settings of one server and of one client, checked once at start."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .. import protocol as p
from .keys import SecurityConfigError, load_secret
from .policy import INSECURE, ClientKey, ClientPolicy, load_exports

DEFAULT_KEY = "default"


@dataclass(frozen=True)
class ServerSecurity:
    """``keys``: the client keys, by name. ``insecure``: no authentication (loopback
    only, every identity squashed)."""

    keys: dict[str, ClientKey] = field(default_factory=dict)
    insecure: bool = False

    @classmethod
    def from_options(cls, *, secret_file: str | None = None, exports: str | None = None,
                     policy: ClientPolicy | None = None,
                     insecure: bool = False) -> ServerSecurity:  # fmt: skip
        if insecure:
            if secret_file or exports:
                raise SecurityConfigError("--insecure cannot be given with keys")
            return cls({}, insecure=True)
        keys: dict[str, ClientKey] = {}
        if exports:
            keys.update(load_exports(exports))
        if secret_file:
            if DEFAULT_KEY in keys:
                raise SecurityConfigError(f"key {DEFAULT_KEY!r} is both in {exports} "
                                          "and --secret-file")  # fmt: skip
            keys[DEFAULT_KEY] = ClientKey(DEFAULT_KEY, load_secret(secret_file),
                                          policy or ClientPolicy())  # fmt: skip
        if not keys:
            raise SecurityConfigError(
                "no client key: give --secret-file FILE (make one with pohmelfs keygen"
                " --secret FILE) or --exports FILE, or --insecure for loopback only"
            )
        return cls(keys)

    @property
    def method(self) -> int:
        return p.AUTH_NONE if self.insecure else p.AUTH_SECRET

    def key(self, name: str) -> ClientKey | None:
        found = self.keys.get(name)
        return found if found is not None and found.secret is not None else None

    def check_listen(self, host: str) -> None:
        """An insecure server listens on loopback only."""
        if not self.insecure:
            return
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise SecurityConfigError(
                f"--insecure serves loopback only, not {host} (give --secret-file instead)"
            )

    def insecure_policy(self) -> ClientPolicy:
        return INSECURE


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves itself: a named key's secret, or nothing (then it takes
    only a server that is --insecure, and says so)."""

    key: str = DEFAULT_KEY
    secret: bytes | None = None

    @classmethod
    def from_options(cls, *, secret_file: str | None = None,
                     key: str | None = None) -> ClientSecurity:  # fmt: skip
        if secret_file is None:
            if key is not None:
                raise SecurityConfigError(f"key {key!r} given without a secret file")
            return cls(DEFAULT_KEY, None)
        return cls(key or DEFAULT_KEY, load_secret(secret_file))
