"""How a client connects to its server set: the lock server first, then every other
live writable server (``replicated.py``), the servers being resynced and the
read-only ones; and how servers join and leave the set while the client works."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..protocol import Message
from ..security.config import ClientSecurity
from .behind import marked_behind
from .connection import Connection
from .replicated import ReplicatedConnection
from .serverset import (
    GONE,
    LIVE,
    MAX_PRIO,
    PERMS,
    READ,
    RESYNCING,
    WRITE,
    ServerSet,
    ServerSpec,  # fmt: skip
    parse_server,
)
from .stats import ServerStats

log = logging.getLogger("pohmelfs.client")


@dataclass(frozen=True)
class ConnectionTerms:
    """What every connection of one client session is made with."""

    timeout: float
    connect_timeout: float
    max_payload: int
    notices: int  # what the lock server is to tell beyond REVOKE (the replicas: nothing)
    security: ClientSecurity
    session: bytes
    xids: Iterator[int]  # the session's request ids, shared by its connections
    before_request: Callable[[], None]  # run before any request but a WRITE
    unversioned: bool = False  # changes leave versions alone (a resync's target)
    majority: bool = False  # a change needs a majority of the servers (majority mode)


class Connector:
    """``notified(conn, msg)`` and ``disconnected(conn)`` hear the lock server's
    notifications and its loss, as the connection the client uses (the group)."""

    def __init__(self, servers: ServerSet, terms: ConnectionTerms,
                 notified: Callable[[Any, Message], None],
                 disconnected: Callable[[Any], None]) -> None:  # fmt: skip
        self.servers, self.terms = servers, terms
        # What this client saw of each server, across its connections to it.
        self.stats = {m.spec.address: ServerStats() for m in servers.members()}
        self._joining: set[str] = set()  # servers being joined now
        self._joins_lock = threading.Lock()
        self._notified, self._disconnected = notified, disconnected

    def connect(self) -> Connection:
        """The connection to use: to the first live server that answers and, if
        others answer too, a group of it (the lock server) and them. A server that
        does not answer while a later one does leaves the set: it would miss the
        changes made from now on (and be taken back stale). The last one stays, to
        be tried again."""
        members = sorted(self.servers.members(), key=lambda m: -m.spec.prio)
        live = [m.spec.address for m in members if m.state == LIVE and m.spec.perm & WRITE]
        group: list[Any] = []  # the connection notifications and the loss are told as
        last: OSError = OSError(errno.EHOSTUNREACH, "no live server left in the set")
        lock_server, n = None, 0
        while lock_server is None and n < len(live):
            try:
                lock_server = self._connect(live[n], self.terms.notices, group)
            except OSError as e:
                last = e
            n += 1
        if lock_server is None:
            raise last
        for address in live[: n - 1]:
            self.server_lost(address, f"unreachable: {last}")
        replicas = []
        for address in live[n:]:
            try:
                replicas.append(self._replica(address, group))
            except OSError as e:
                self.server_lost(address, str(e))
        readers = []
        for m in members:
            if m.state == LIVE and not m.spec.perm & WRITE:
                try:
                    readers.append(self._replica(m.spec.address, group))
                except OSError as e:
                    self.server_lost(m.spec.address, str(e))
        # (a group even of one: servers may join it while the client works)
        prio = {m.spec.address: m.spec.prio for m in members}
        unread = {m.spec.address for m in members if not m.spec.perm & READ}
        quorum = self.writable if self.terms.majority else None
        made = ReplicatedConnection(lock_server, replicas, self.server_lost, prio, quorum,
                                    readers, unread)  # fmt: skip
        made.demoted = lambda address: self.servers.transition(address, LIVE, RESYNCING)  # type: ignore[assignment,return-value]
        group.append(made)
        for m in members:
            if m.state == RESYNCING and m.spec.perm & WRITE:
                try:
                    made.join(self._replica(m.spec.address, group), m.spec.prio)
                except OSError as e:
                    self.server_lost(m.spec.address, str(e))
        # The read-only servers too, marked at once: other clients that write them
        # must not take them for current, nor one for their lock server while this
        # client takes its locks from another.
        made.set_missing({m.spec.address for m in members} - set(made.connections()),
                         now=bool(readers))  # fmt: skip
        stale = self._stale(made)
        for address in stale - {made.address}:
            made.demote(address, "missed changes another server has")
        if made.address in stale:  # (the lock server itself: the next one, then)
            log.warning("server %s missed changes another server has: resyncing it",
                        made.address)  # fmt: skip
            self.servers.set_state(made.address, RESYNCING)
            made.close()
            return self.connect()
        return made

    def _stale(self, made: ReplicatedConnection) -> set[str]:
        """The servers of ``made`` another of them marks behind (``behind.py``). If
        each is marked by another (their histories split: see docs/design.md), the
        lock server's is taken for the current one."""
        reports: dict[str, set[str]] = {}
        conns = made.connections()
        if len(conns) < 2:
            return set()  # (no other server to know)
        for address, conn in conns.items():
            try:
                reports[address] = set(marked_behind(conn))
            except OSError as e:
                log.warning("cannot ask server %s which servers missed changes: %s", address, e)
                reports[address] = set()
        if self.terms.majority:  # marked by a majority of the set: the other side's
            total = self.writable()
            return {x for x in reports
                    if 2 * sum(x in r for y, r in reports.items() if y != x) > total}  # fmt: skip
        stale = {x for x in reports if any(x in r for y, r in reports.items() if y != x)}
        if len(reports) > 1 and stale >= set(reports):
            log.error("servers %s each missed changes the others have (a split): %s is "
                      "taken for current, the others are resynced from it",
                      ", ".join(sorted(reports)), made.address)  # fmt: skip
            stale.discard(made.address)
        return stale

    def writable(self) -> int:
        """How many servers of the set take changes (majority mode's whole)."""
        return sum(1 for m in self.servers.members() if m.spec.perm & WRITE)

    def _replica(self, address: str, group: list[Any]) -> Connection:
        """A connection to a replica of ``group`` (which tells it of its REVOKEs)."""
        return self._connect(address, 0, None,
                             lambda conn, msg: group[0].replica_notified(conn, msg))  # fmt: skip

    def _connect(self, address: str, notices: int, group: list[Any] | None,
                 replica_notified: Callable[[Connection, Message], None] | None = None,
                 ) -> Connection:  # fmt: skip
        t = self.terms

        def notified(conn: Connection, msg: Message) -> None:
            self._notified(group[0] if group else conn, msg)

        def lost(conn: Connection) -> None:
            self._disconnected(group[0] if group else conn)

        return Connection(address, timeout=t.timeout, connect_timeout=t.connect_timeout,
                          max_payload=t.max_payload, notices=notices,
                          on_notify=replica_notified if group is None else notified,
                          on_close=None if group is None else lost,
                          before_request=None if group is None else t.before_request,
                          security=t.security,
                          session=t.session, xids=t.xids,
                          stats=self.stats[address], unversioned=t.unversioned)  # fmt: skip

    def group_lost(self, group: Connection) -> None:
        """The lock server of ``group`` was lost: it leaves the set if another server
        of the group is still live (that one goes on, and it would miss changes)."""
        states = {m.spec.address: m.state for m in self.servers.members()}
        if states.get(group.address) == LIVE and any(
                states.get(a) == LIVE for a in group.members - {group.address}):  # fmt: skip
            self.server_lost(group.address, f"lost: {group.close_reason}")

    def remove(self, address: str, conn: ReplicatedConnection | None) -> None:
        """``Client.remove_server``: ``address`` leaves the set for good, and ``conn``
        (the connection in use) lets go of it."""
        address = parse_server(address).address
        members = {m.spec.address: m for m in self.servers.members()}
        if address not in members:
            raise ValueError(f"{address} is not one of this client's servers")
        if not any(m.state == LIVE and m.spec.perm & WRITE
                   for a, m in members.items() if a != address):  # fmt: skip
            raise ValueError(f"{address} is the last live writable server of the set: "
                             "not removed")  # fmt: skip
        self.server_lost(address, "removed")
        self.servers.discard(address)
        if conn is None or conn.closed:
            return
        if conn.address == address:
            conn.lose("the server was removed from the set")
        else:
            conn.leave(address, "removed")

    def modify(self, address: str, prio: int | None, perm: str | None,
               conn: ReplicatedConnection | None) -> ServerSpec | None:  # fmt: skip
        """``Client.modify_server``: a new priority is taken at once; a new permission
        is returned, as the server to remove and add again (ValueError: a bad value,
        or a server not in the set, and nothing changes)."""
        spec = next((m.spec for m in self.servers.members() if m.spec.address == address),
                    None)  # fmt: skip
        if spec is None:
            raise ValueError(f"{address} is not one of this client's servers")
        if perm is not None and PERMS.get(perm, spec.perm) != spec.perm:
            state = self.servers.state(address)
            if state != LIVE:
                raise ValueError(f"{address} is {state}: its permission changes once it is "
                                 "live (or remove it, and add it again)")  # fmt: skip
        if perm is not None and perm not in PERMS:
            raise ValueError(f"permission must be r, w or rw, got {perm!r}")
        if prio is not None and not 0 <= prio <= MAX_PRIO:
            raise ValueError(f"prio must be 0-{MAX_PRIO}, got {prio}")
        if perm is not None and PERMS[perm] != spec.perm:
            return ServerSpec(spec.host, spec.port, spec.prio if prio is None else prio,
                              PERMS[perm])  # fmt: skip
        if prio is not None:
            self.servers.modify(address, prio)
            if conn is not None:
                conn.reprioritize(address, prio)
        return None

    def join(self, spec: ServerSpec, conn: ReplicatedConnection, new: bool) -> None:
        """``spec`` joins the write set of ``conn`` as resyncing: a new server (``new``)
        or a gone one back. OSError if it cannot be reached (a new one is then not
        added); ValueError if it is in the set (``new``) or not gone (else)."""
        address = spec.address
        with self._joins_lock:  # (one join of a server at a time)
            if address in self._joining:
                raise ValueError(f"{address} is joining already")
            if new:
                self.servers.add(spec, GONE)
                self.stats.setdefault(address, ServerStats())
            elif self.servers.state(address) != GONE:
                raise ValueError(f"{address} is not a gone server of this client's set")
            self._joining.add(address)
        writes = bool(spec.perm & WRITE)
        try:
            try:
                joined = self._connect(address, 0, None, conn.replica_notified)
                try:
                    if writes:
                        conn.join(joined, spec.prio, bool(spec.perm & READ))
                    else:
                        conn.add_reader(joined, spec.prio)
                except BaseException:
                    joined.close()
                    raise
            except BaseException:
                if new:
                    self.servers.discard(address)
                raise
            self.servers.set_state(address, RESYNCING if writes else LIVE)
        finally:
            with self._joins_lock:
                self._joining.discard(address)
        if writes:
            log.warning("server %s joined the write set; resyncing it", address)
        else:  # (read where its versions agree: nothing to copy to it first)
            log.warning("read-only server %s joined", address)

    def promote(self, address: str, conn: ReplicatedConnection, skipped: tuple[int, int],
                writing: set[int], since: int = 0) -> bool:  # fmt: skip
        """A resynced server is current (``ReplicatedConnection.promote_if``): live,
        read and written like the others. False if it is not (yet)."""
        if not conn.promote_if(address, skipped, writing, since):
            return False
        self.servers.set_state(address, LIVE)
        log.warning("server %s is resynced and live", address)
        return True

    def report(self, conn: Connection | None) -> list[dict[str, Any]]:
        """``Client.server_stats``: each server, with its role for ``conn``."""
        lock = conn.address if conn is not None and not conn.closed else None
        replicas = set(conn.replicas) if isinstance(conn, ReplicatedConnection) else set()
        readers = set(conn.readers) if isinstance(conn, ReplicatedConnection) else set()
        resyncing = set(conn.resyncing) if isinstance(conn, ReplicatedConnection) else set()
        states = {m.spec.address: m.state for m in self.servers.members()}
        out = []
        for spec in self.servers.by_priority():
            role = "lock server" if spec.address == lock else (
                "resyncing" if spec.address in resyncing else
                "replica" if spec.address in replicas else
                "reader" if spec.address in readers else "-")  # fmt: skip
            out.append({"address": spec.address, "priority": spec.prio,
                        "permission": {READ: "r", WRITE: "w"}.get(spec.perm, "rw"),
                        "state": states[spec.address], "role": role,
                        **self.stats[spec.address].snapshot()})  # fmt: skip
        return out

    def server_lost(self, address: str, why: str) -> None:
        """A server leaves the set: it misses changes from now on (until resynced)."""
        if self.servers.state(address) in (None, GONE):
            return  # (removed, or told already)
        log.warning("server %s left this client's server set: %s", address, why)
        self.servers.set_state(address, GONE)
