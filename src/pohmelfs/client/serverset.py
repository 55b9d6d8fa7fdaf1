"""The servers a client uses, each with a priority and a permission, and which of
them a request goes to (pure: no sockets, so the choices are tested alone).

Syntax (``Client(servers=...)``, ``pohmelfs mount SERVERS``)::

    SERVERS := SERVER ("," SERVER)*
    SERVER  := HOST ":" PORT ("/" OPTION)*
    OPTION  := "prio=" N   (0-255, default 0: higher is read first)
             | "r" | "w" | "rw"   (what the server is used for; default rw)

``h1:7400/prio=2/rw,h2:7400/prio=1/r``: reads go to h1 while it is live, writes
go to h1 only (h2 is read-only for this client: it reads a file only where its
version is the lock server's, ``readroutes.py``). A write-only server (``/w``) gets
every change and reads no file. At least one server takes changes. HOST may be an IPv6 address in
brackets (``[::1]:7400``, ``[fe80::1%eth0]:7400``); hosts compare without case.

Reads (lookups, listings, data) go to one live readable server: the highest
priority, in turn among equals, never one that is stale for the object
(``read_server``). Changes go to every live writable server (``write_servers``);
``majority`` says whether enough of them are live to accept a change in majority
mode.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .. import protocol as p

READ, WRITE = 1, 2
PERMS = {"r": READ, "w": WRITE, "rw": READ | WRITE, "wr": READ | WRITE}
MAX_PRIO = 255
MAX_SERVERS = p.MAX_SERVERS  # a client's set: each a connection and a copy of every change
LIVE, STALE, RESYNCING, GONE = "live", "stale", "resyncing", "gone"
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+(?:%[\w.-]+)?\]|[^\s/:\[\]%]+):(\d{1,5})")


@dataclass(frozen=True)
class ServerSpec:
    host: str
    port: int
    prio: int = 0
    perm: int = READ | WRITE

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        perm = {READ: "r", WRITE: "w", READ | WRITE: "rw"}[self.perm]
        return f"{self.address}/prio={self.prio}/{perm}"


def parse_server(text: str) -> ServerSpec:
    """One ``HOST:PORT[/prio=N][/r|w|rw]``; ValueError with the reason."""
    address, *options = text.strip().split("/")
    m = _ADDRESS.fullmatch(address)
    if m is None:
        if address.count(":") > 1 and not address.startswith("["):
            raise ValueError(f"an IPv6 address goes in brackets ([::1]:7400), got {text!r}")
        raise ValueError(f"server address must be HOST:PORT, got {text!r}")
    host, port = m.group(1), int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port} in {text!r}")
    prio, perm = 0, READ | WRITE
    seen: set[str] = set()
    for option in options:
        name = "prio" if option.startswith("prio=") else "perm"
        if name in seen:
            raise ValueError(f"{name} given twice in {text!r}")
        seen.add(name)
        if name == "prio":
            value = option[len("prio=") :]
            if not value.isdigit() or int(value) > MAX_PRIO:
                raise ValueError(f"prio must be 0-{MAX_PRIO}, got {value!r} in {text!r}")
            prio = int(value)
        elif option in PERMS:
            perm = PERMS[option]
        else:
            raise ValueError(f"unknown server option {option!r} in {text!r} "
                             "(prio=N, r, w or rw)")  # fmt: skip
    return ServerSpec(host, port, prio, perm)


def parse_servers(servers: str | Sequence[str]) -> list[ServerSpec]:
    """A comma-separated string or a list of servers; each address once."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    specs = [parse_server(s) for s in items if s.strip()]
    if not specs:
        raise ValueError("no server given")
    if len(specs) > MAX_SERVERS:
        raise ValueError(f"at most {MAX_SERVERS} servers, got {len(specs)}")
    addresses = [s.address.lower() for s in specs]
    twice = sorted({a for a in addresses if addresses.count(a) > 1})
    if twice:
        raise ValueError(f"server given twice: {', '.join(twice)}")
    if not any(s.perm & WRITE for s in specs):
        raise ValueError("every server is read-only (/r): at least one must take changes")
    return specs


@dataclass
class Member:
    spec: ServerSpec
    state: str = LIVE
    stale: set[object] = field(default_factory=set)  # objects it missed changes of


class ServerSet:
    """The members and their states; thread-safe."""

    def __init__(self, specs: Iterable[ServerSpec]) -> None:
        self._lock = threading.Lock()
        self._members = {s.address: Member(s) for s in specs}
        self._turns = itertools.count()

    def members(self) -> list[Member]:
        with self._lock:
            return list(self._members.values())

    def by_priority(self) -> list[ServerSpec]:
        """Every server, highest priority first (the order it was given among equals)."""
        with self._lock:
            specs = [m.spec for m in self._members.values()]
        return sorted(specs, key=lambda s: -s.prio)

    def add(self, spec: ServerSpec, state: str = RESYNCING) -> None:
        """A server joins the set (ValueError if it is there, or the set is full)."""
        with self._lock:
            if spec.address.lower() in {a.lower() for a in self._members}:
                raise ValueError(f"{spec.address} is already one of this client's servers")
            if len(self._members) >= MAX_SERVERS:
                raise ValueError(f"at most {MAX_SERVERS} servers")
            self._members[spec.address] = Member(spec, state)

    def discard(self, address: str) -> None:
        """A server leaves the set for good (not tried again)."""
        with self._lock:
            self._members.pop(address, None)

    def state(self, address: str) -> str | None:
        with self._lock:
            m = self._members.get(address)
            return None if m is None else m.state

    def modify(self, address: str, prio: int) -> None:
        """A server's new priority (ValueError if out of range or not in the set)."""
        if not 0 <= prio <= MAX_PRIO:
            raise ValueError(f"prio must be 0-{MAX_PRIO}, got {prio}")
        with self._lock:
            m = self._member(address)
            m.spec = ServerSpec(m.spec.host, m.spec.port, prio, m.spec.perm)

    def transition(self, address: str, old: str, new: str) -> bool:
        """``address`` goes from state ``old`` to ``new``; False if it was not ``old``."""
        with self._lock:
            m = self._members.get(address)
            if m is None or m.state != old:
                return False
            m.state = new
            return True

    def set_state(self, address: str, state: str) -> None:
        if state not in (LIVE, STALE, RESYNCING, GONE):
            raise ValueError(f"unknown server state {state!r}")
        with self._lock:
            self._member(address).state = state

    def mark_stale(self, address: str, obj: object) -> None:
        with self._lock:
            self._member(address).stale.add(obj)

    def read_server(self, obj: object = None) -> ServerSpec:
        """Where a read of ``obj`` goes: the live readable servers of the highest
        priority not stale for it, in turn. LookupError if there is none."""
        with self._lock:
            fit = [m.spec for m in self._members.values()
                   if m.state == LIVE and m.spec.perm & READ and obj not in m.stale]  # fmt: skip
            if not fit:
                raise LookupError("no live server can serve this read")
            top = max(s.prio for s in fit)
            best = [s for s in fit if s.prio == top]
            return best[next(self._turns) % len(best)]

    def write_servers(self) -> list[ServerSpec]:
        """Every live writable server (a change goes to all of them)."""
        with self._lock:
            return [m.spec for m in self._members.values()
                    if m.state == LIVE and m.spec.perm & WRITE]  # fmt: skip

    def majority(self) -> bool:
        """Are more than half of the writable servers live?"""
        with self._lock:
            writable = [m for m in self._members.values() if m.spec.perm & WRITE]
            return 2 * sum(m.state == LIVE for m in writable) > len(writable)

    def _member(self, address: str) -> Member:
        try:
            return self._members[address]
        except KeyError:
            raise ValueError(f"{address} is not one of this client's servers") from None
