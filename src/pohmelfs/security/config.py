"""The security settings of one server and of one client, checked once at start."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field

from .. import protocol as p
from .keys import SecurityConfigError, load_secret
from .policy import ClientKey, ClientPolicy, load_exports
from .tls import client_context, server_context

DEFAULT_KEY = "default"


@dataclass(frozen=True)
class ServerSecurity:
    """``keys``: the client keys, by name. ``insecure``: no authentication (loopback
    only, every identity squashed)."""

    keys: dict[str, ClientKey] = field(default_factory=dict)
    insecure: bool = False
    tls: ssl.SSLContext | None = None  # every connection is TLS; clients known by certificate
    tls_policy: ClientPolicy | None = None  # for any certificate of the CA (no exports file)

    @classmethod
    def from_options(cls, *, secret_file: str | None = None, exports: str | None = None,
                     policy: ClientPolicy | None = None, insecure: bool = False,
                     tls_cert: str | None = None, tls_key: str | None = None,
                     tls_ca: str | None = None) -> ServerSecurity:  # fmt: skip
        tls_given = [x for x in (tls_cert, tls_key, tls_ca) if x]
        if insecure:
            if secret_file or exports or tls_given:
                raise SecurityConfigError("--insecure cannot be given with keys")
            return cls({}, insecure=True)
        keys: dict[str, ClientKey] = {}
        if exports:
            keys.update(load_exports(exports))
        if tls_given:
            if len(tls_given) != 3:
                raise SecurityConfigError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
            if secret_file or any(k.secret for k in keys.values()):
                raise SecurityConfigError("a TLS server knows clients by certificate: "
                                          "give no secrets")  # fmt: skip
            assert tls_cert and tls_key and tls_ca
            ctx = server_context(tls_cert, tls_key, tls_ca)
            return cls(keys, tls=ctx, tls_policy=None if exports else policy or ClientPolicy())
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
        if self.tls is not None:
            return p.AUTH_TLS
        return p.AUTH_NONE if self.insecure else p.AUTH_SECRET

    def key(self, name: str) -> ClientKey | None:
        found = self.keys.get(name)
        return found if found is not None and found.secret is not None else None

    def certificate_key(self, name: str) -> ClientKey | None:
        """The key of a TLS client whose certificate (from the CA) names ``name``."""
        found = self.keys.get(name)
        if found is not None and found.secret is None:
            return found
        if self.tls_policy is not None and name:
            return ClientKey(name, None, self.tls_policy)
        return None

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


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves itself: a named key's secret, or nothing (then it takes
    only a server that is --insecure, and says so)."""

    key: str = DEFAULT_KEY
    secret: bytes | None = None
    tls: ssl.SSLContext | None = None
    server_name: str | None = None  # the name to check in the server's certificate

    @classmethod
    def from_options(cls, *, secret_file: str | None = None, key: str | None = None,
                     tls_cert: str | None = None, tls_key: str | None = None,
                     tls_ca: str | None = None,
                     tls_server_name: str | None = None) -> ClientSecurity:  # fmt: skip
        tls_given = {n: v for n, v in (("tls_cert", tls_cert), ("tls_key", tls_key),
                                       ("tls_ca", tls_ca)) if v}  # fmt: skip
        if tls_given:
            missing = {"tls_cert", "tls_key", "tls_ca"} - set(tls_given)
            if missing:
                raise SecurityConfigError(f"TLS needs {', '.join(sorted(missing))} too")
            if secret_file:
                raise SecurityConfigError("give a secret file or TLS files, not both")
            assert tls_cert and tls_key and tls_ca
            return cls(DEFAULT_KEY, None, client_context(tls_cert, tls_key, tls_ca),
                       tls_server_name)  # fmt: skip
        if secret_file is None:
            if key is not None:
                raise SecurityConfigError(f"key {key!r} given without a secret file")
            return cls(DEFAULT_KEY, None)
        return cls(key or DEFAULT_KEY, load_secret(secret_file))

    @property
    def method(self) -> int:
        if self.tls is not None:
            return p.AUTH_TLS
        return p.AUTH_NONE if self.secret is None else p.AUTH_SECRET

    def mismatch(self, method: int) -> str:
        """What is wrong when the server asks for ``method`` ("" if nothing): a client
        never falls back to less than it was given."""
        if method == self.method:
            return ""
        if self.tls is not None:
            return "TLS was accepted but the server does not authenticate by certificate"
        if method == p.AUTH_NONE:
            return "the server does not authenticate (--insecure): refusing to connect without it"
        if method == p.AUTH_SECRET:
            return "the server requires a key: give a secret file (secret_file=)"
        if method == p.AUTH_TLS:
            return "the server requires TLS: give tls_cert, tls_key and tls_ca"
        return f"unknown authentication {method}"
