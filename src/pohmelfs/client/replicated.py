"""One client's connections to a set of servers, used as one connection: every change
goes to each live writable server, everything else to the lock server.

The lock server (the first live writable server in the set's order) grants every
cache lock, lease and advisory lock, answers every lookup and listing (and the reads
``readroutes.py`` does not send elsewhere), and sends the notifications. A change
(``CHANGES``, every OPEN and CLOSE, FSYNC) is sent to all of them at once, under one
request id (each server keeps its own answers for a resend: ``server/replycache.py``),
and is done when all have answered; its answer is the lock server's. An open file has
a handle on each server; requests on the lock server's handle are sent to the replicas
on theirs. A replica that is lost, does not answer, or answers a change otherwise than
the lock server (it missed something: its copy differs) leaves the set, logged, and
the others go on. When the lock server is lost the whole group is (``closed``): files
reopen and locks go, as with one server, and the next group has the next lock server,
where the lost requests are sent again (``resend.py``).
Read-only servers get no changes: only the OPENs, READs and CLOSEs of files they read.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .. import errors
from .. import protocol as p
from ..protocol import Command, Message
from .behind import announce_missing
from .connection import Connection, Transaction
from .majority import changes, minority_error, need_majority
from .readroutes import ReadRoutes, close_on

log = logging.getLogger("pohmelfs.client")
T = TypeVar("T")


# Sent to every server: what changes the export, and what a replica's handles follow.
# (SETVERSION is a resync's, of one server.)
REPLICATED = (p.CHANGES - {Command.SETVERSION}) | {Command.OPEN, Command.CLOSE, Command.FSYNC}
# What changes a file's data: a read-only server, which misses it, reads that file no more.
DATA_CHANGES = frozenset({Command.WRITE, Command.FTRUNCATE, Command.FALLOCATE, Command.TRUNCATE,
                          Command.COPY})  # fmt: skip


class ReplicatedTransaction(Transaction):
    """A change sent to several servers: what its caller waits on (or whose callback
    runs) once every server's part is done. A caller that waits has ``parts`` (the
    lock server's first) and waits for each in turn; one with a callback hears of
    the last part's end (``_Change``). ``replicas``: the servers besides the lock
    server it is for (whether or not their part could be sent)."""

    __slots__ = ("parts", "replicas", "reader", "sent", "changing", "on_reader", "changes")

    def __init__(self, xid: int, cmd: Command, callback: Callable[[Transaction], None] | None,
                 replicas: frozenset[str], reader: str | None) -> None:  # fmt: skip
        super().__init__(xid, cmd, None, None, callback)
        self.parts: list[tuple[str, Connection, Transaction]] = []
        self.replicas = replicas
        self.reader = reader  # an OPEN's: the server to read the file from
        self.sent = 0  # an OPEN's: the group's count of OPENs sent before it
        self.changing = False  # a change that needs a majority (majority mode)
        self.on_reader: Connection | None = None  # an OPEN's: a read-only reader's conn
        self.changes = 0  # ... and this client's changes of file data when it was sent


class _Change:
    """One change in flight on several servers: done when every part is."""

    def __init__(self, tx: ReplicatedTransaction, parts: int) -> None:
        self.tx = tx
        self.left = parts
        self.lock = threading.Lock()
        self.first: Transaction | None = None  # the lock server's part
        self.others: dict[str, Transaction] = {}


class ReplicatedConnection:
    """``lock_server`` and the connections to the other live writable servers;
    ``lost(address, why)`` is told of a replica that leaves; ``prio``: each server's
    priority (reads: ``readroutes.py``)."""

    def __init__(self, lock_server: Connection, replicas: list[Connection],
                 lost: Callable[[str, str], None], prio: dict[str, int] | None = None,
                 quorum: Callable[[], int] | None = None, readers: list[Connection] = (),  # type: ignore[assignment]
                 unread: set[str] | None = None) -> None:  # fmt: skip
        """``quorum``: majority mode, with how many writable servers the set has (a
        change needs more than half of them: ``_majority``); ``readers``: the
        read-only servers; ``unread``: the write-only ones."""
        self.lock_server = lock_server
        self._quorum = quorum
        self.demoted: Callable[[str], None] = lambda _: None  # (the set: resyncing)
        self._reads = ReadRoutes(prio or {}, unread, self.leave)
        self._replicas = {c.address: c for c in replicas}
        for conn in readers:
            self._reads.add_reader(conn, (prio or {}).get(conn.address, 0))
        # Replicas that joined while the client works and are being resynced: they get
        # every change they can apply, and what they cannot (a file opened before they
        # joined, a name they do not have yet) the resync copies; they never leave for it.
        self._resyncing: set[str] = set()
        self._skipped: dict[str, int] = {}  # by resyncing replica: changes it did not apply
        self._joins = itertools.count(1)
        self._missing: set[str] = set()  # servers of the set this group's changes miss
        self._opens = itertools.count()  # OPENs sent, in order
        self._opened_at: dict[int, int] = {}  # lock server handle -> its OPEN's place
        self._joined: dict[str, int] = {}  # by replica that joined: which join it is
        # The servers a change sent on this group went to (each keeps its answer).
        self.members = frozenset([lock_server.address, *self._replicas])
        self._lost = lost
        self._lock = threading.Lock()
        # Held from a change's first send to its last, so that every server gets the
        # changes of this client in one order (re-entrant: a send may first push the
        # writes held back, which are changes too).
        self._sending = threading.RLock()
        # The lock server's handle -> each replica's handle of the same open file, and
        # the file's identity there.
        self._handles: dict[int, dict[str, int]] = {}
        self._fids: dict[int, dict[str, bytes]] = {}
        ls = lock_server
        self.address, self.timeout, self.serial = ls.address, ls.timeout, ls.serial
        self.caps, self.fsid, self.statfs, self.idle = ls.caps, ls.fsid, ls.statfs, ls.idle
        self.resumed = ls.resumed

    @property
    def closed(self) -> bool:
        return self.lock_server.closed

    @property
    def close_reason(self) -> str:
        return self.lock_server.close_reason

    @property
    def replicas(self) -> list[str]:
        with self._lock:
            return list(self._replicas)

    @property
    def readers(self) -> list[str]:  # (the read-only servers)
        return list(self._reads.readers())

    @property
    def resyncing(self) -> list[str]:
        with self._lock:
            return sorted(self._resyncing)

    @property
    def max_payload(self) -> int:
        """The largest payload every server takes."""
        with self._lock:
            sizes = [c.max_payload for c in self._replicas.values()]
        return min([self.lock_server.max_payload, *sizes])

    def join(self, conn: Connection, prio: int = 0, read: bool = True) -> None:
        """A server joins the write set as resyncing (``promote`` once it is current)."""
        with self._sending, self._lock:  # (between two changes: each goes to all or not)
            if conn.address in (*self._reads.readers(), *self._replicas, self.address):
                raise ValueError(f"{conn.address} is already in the write set")
            self._reads.add_server(conn.address, prio, read)
            self._replicas[conn.address] = conn
            self._resyncing.add(conn.address)
            self._joined[conn.address] = next(self._joins)
            self.members = self.members | {conn.address}
            missing = self._missing - {conn.address}
        self.set_missing(missing)  # (its changes reach it again)

    def add_reader(self, conn: Connection, prio: int = 0) -> None:
        """A read-only server joins: it reads the files opened from now on (``readroutes``)."""
        with self._lock:
            if conn.address in (*self._reads.readers(), *self._replicas, self.address):
                raise ValueError(f"{conn.address} is already in the group")
            self._reads.add_reader(conn, prio)
            missing = self._missing | {conn.address}
        self.set_missing(missing, now=True)  # (at once: connector.py)

    def reprioritize(self, address: str, prio: int) -> None:  # (for files opened from now on)
        self._reads.set_prio(address, prio)

    def connections(self) -> dict[str, Connection]:
        """The group's connections by server: the lock server's, the replicas'."""
        with self._lock:
            return {self.address: self.lock_server, **self._replicas}

    def set_missing(self, addresses: set[str], now: bool = False) -> None:
        """The servers of the client's set this group's changes do not reach: each
        server of the group is told (and marks them behind: ``server/peers.py``;
        ``now``: at once, not at this client's first change)."""
        with self._lock:
            told, self._missing = self._missing, set(addresses)
            conns = list(self._replicas.values())
        if addresses or told:  # (none now: the ones told before are reached again)
            announce_missing([self.lock_server, *conns], addresses, now)

    def demote(self, address: str, why: str) -> None:
        """A live replica another server marks behind: it is resynced before it is
        used (read from no more; the set is told, ``demoted``)."""
        with self._sending, self._lock:
            if address not in self._replicas or address in self._resyncing:
                return
            self._resyncing.add(address)
            self._joined[address] = next(self._joins)
        log.warning("server %s %s: resyncing it", address, why)
        self._reads.left(address)
        self.demoted(address)

    def skipped(self, address: str) -> tuple[int, int]:
        """Which join of the resyncing replica ``address`` this is, and how many
        changes it did not apply since it joined."""
        with self._lock:
            return self._joined.get(address, 0), self._skipped.get(address, 0)

    def open_sequence(self) -> int:
        """How many OPENs were sent on this group so far."""
        with self._lock:
            return next(self._opens)

    def promote_if(self, address: str, skipped: tuple[int, int], writing: set[int],
                   since: int = 0) -> bool:  # fmt: skip
        """The resyncing replica ``address`` becomes a replica like the others if it
        is still in the same join and missed no change since ``skipped`` (both read
        before the resync pass that found it current), and every file open for
        writing (``writing``: the lock server's handles) is open on it too. From
        then on, a change it fails makes it leave."""
        with self._sending, self._lock:
            if self.closed or address not in self._resyncing:
                return False
            if (self._joined.get(address, 0), self._skipped.get(address, 0)) != skipped:
                return False
            if any(address not in self._handles.get(oid, ()) for oid in writing):
                return False
            # ... and was opened since the pass began (``since``: ``open_sequence``
            # then): an earlier pass may have removed the name its handle there had
            # (made there first, before the source had it, it looked like an extra).
            if any(self._opened_at.get(oid, -1) < since for oid in writing):
                return False
            self._resyncing.discard(address)
            self._skipped.pop(address, None)
            return True

    def _skip(self, address: str) -> None:
        with self._lock:
            self._skipped[address] = self._skipped.get(address, 0) + 1

    def in_flight(self) -> int:
        return self.lock_server.in_flight()

    # --- sending ----------------------------------------------------------------------

    def start(self, cmd: Command, *, callback: Callable[[Transaction], None] | None = None,
              xid: int | None = None, oid: int = 0, fids: dict[str, bytes] | None = None,
              **kw: Any) -> Transaction:  # fmt: skip
        """``fids``: for an OPEN, the file's identity on each server (a reopen)."""
        if cmd is Command.CLOSE:  # (whichever way it goes: what the routes keep goes)
            on_reader = self._reads.closed(oid)
            if on_reader is not None:
                close_on(*on_reader)
        if cmd is Command.READ and self._reads:
            if self._reads.route(oid) is not None:
                self.lock_server.before_request()  # (this client's held writes go first)
                route = self._reads.route(oid)  # (which they may have taken back)
                if route is not None:
                    return self._reads.read_on(route, callback, xid, kw)
        elif cmd is Command.CACHE and kw.get("type") == p.CacheMode.RELEASE and self._reads:
            self._reads.lock_server_revoked(oid)  # (given back: the same for reads)
        readers = self._reads.read_only
        if readers and (cmd in DATA_CHANGES or (cmd is Command.OPEN and kw["flags"] & os.O_TRUNC)):
            self._reads.changing(0 if cmd is Command.TRUNCATE or cmd is Command.OPEN else oid)
        counted = self._quorum is not None and changes(cmd, kw)
        if counted:
            self._need_majority(cmd, self._current())  # (and again where it is sent)
        if cmd not in REPLICATED or not (
            self._replicas or counted or (readers and cmd in (Command.OPEN, Command.CLOSE))
        ):  # fmt: skip  (the lock server's)
            return self.lock_server.start(cmd, callback=callback, xid=xid, oid=oid, fids=fids,
                                          **kw)  # fmt: skip
        with self._sending:
            return self._replicated(cmd, callback, xid, oid, fids, kw, counted)

    def _replicated(self, cmd: Command, callback: Callable[[Transaction], None] | None,
                    xid: int | None, oid: int, fids: dict[str, bytes] | None,
                    kw: dict[str, Any], counted: bool) -> Transaction:  # fmt: skip
        """``counted``: a change that needs a majority (majority mode)."""
        with self._lock:
            replicas, readers = dict(self._replicas), self._reads.readers()
            resyncing = set(self._resyncing)
            mapped = self._handles.get(oid) if oid else None
            handles = dict(mapped) if mapped is not None else {}
            if cmd is Command.CLOSE:
                self._handles.pop(oid, None)
                self._fids.pop(oid, None)
                self._opened_at.pop(oid, None)
        if oid and mapped is None and cmd is Command.CLOSE:
            replicas = {}  # a lease given back: the lock server's alone
        elif oid:  # a replica without this file's handle cannot apply what is done to it
            for address in [a for a in replicas if a not in handles]:
                if address in resyncing:  # (the resync copies what it missed)
                    self._skip(address)
                elif cmd is not Command.CLOSE:  # (a file read since before it joined)
                    self.leave(address, f"it has no handle for a {cmd.name}")
                del replicas[address]
        if counted:  # (again: who it goes to now)
            self._need_majority(cmd, 1 + len(replicas.keys() - resyncing))
        reader = None
        if cmd is Command.OPEN and kw["flags"] & os.O_ACCMODE != os.O_WRONLY:
            candidates = [self.address, *(a for a in replicas if a not in resyncing)]
            if kw["flags"] & (os.O_ACCMODE | os.O_CREAT | os.O_TRUNC) == os.O_RDONLY:
                candidates += readers  # (read-only servers: for files only read)
            reader = self._reads.pick(candidates)
            if reader != self.address and kw["cache"] == p.CacheMode.RELEASE:
                if kw["flags"] & os.O_ACCMODE == os.O_RDONLY:  # (a reader's: cheap to ask)
                    kw = dict(kw, cache=p.CacheMode.SHARED)
                else:
                    reader = None  # (no lock asked: the lock server reads it)
        parts = dict(replicas)  # (who gets a part: the replicas, and a read-only reader)
        if reader in readers:
            parts[reader] = readers[reader]
        if not parts and not (cmd is Command.OPEN and readers):  # (readers: its fid kept)
            return self.lock_server.start(cmd, callback=callback, xid=xid, oid=oid, fids=fids,
                                          **kw)  # fmt: skip
        if xid is None:
            xid = self.lock_server.next_xid()
        tx = ReplicatedTransaction(xid, cmd, callback, frozenset(replicas), reader)
        if reader in readers:
            tx.on_reader, tx.changes = readers[reader], self._reads.changes
        tx.changing = counted
        if cmd is Command.OPEN:
            with self._lock:
                tx.sent = next(self._opens)
        if callback is None:  # (no callbacks: the caller's thread does the settling)
            tx.parts.append((self.address, self.lock_server,
                             self.lock_server.start(cmd, xid=xid, oid=oid, fids=fids,
                                                    **kw)))  # fmt: skip
            for address, conn in parts.items():
                try:
                    tx.parts.append((address, conn, conn.start(
                        cmd, xid=xid, oid=handles.get(address, 0), fids=fids,
                        **self._fields_for(cmd, kw, address, address == reader))))  # fmt: skip
                except OSError as e:
                    self.leave(address, str(e))
            return tx
        change = _Change(tx, 1 + len(parts) + 1)  # (+1: until every part is sent)
        self.lock_server.start(cmd, callback=lambda t: self._part(change, t, ""), xid=xid,
                               oid=oid, fids=fids, **kw)  # fmt: skip
        for address, conn in parts.items():
            try:
                conn.start(cmd, callback=lambda t, a=address: self._part(change, t, a), xid=xid,
                           oid=handles.get(address, 0), fids=fids,
                           **self._fields_for(cmd, kw, address, address == reader))  # fmt: skip
            except OSError as e:
                self.leave(address, str(e))
                self._part(change, None, address)
        self._part(change, None, None)
        return tx

    def _fields_for(self, cmd: Command, fields: dict[str, Any], address: str,
                    reader: bool) -> dict[str, Any]:  # fmt: skip
        if cmd is Command.COPY:  # (its source is a handle too: the replica's own)
            with self._lock:
                return dict(fields, src=self._handles.get(fields["src"], {}).get(address, 0))
        if cmd is not Command.OPEN:
            return fields
        # A replica's cache lock is only the read server's, and only shared.
        return dict(fields, cache=p.CacheMode.SHARED if reader else p.CacheMode.RELEASE)

    def _current(self) -> int:
        """Servers of the group that are current: the lock server and the replicas
        not being resynced."""
        with self._lock:
            return 1 + len(self._replicas.keys() - self._resyncing)

    def _need_majority(self, cmd: Command, current: int) -> None:
        assert self._quorum is not None
        need_majority(cmd, current, self._quorum())

    def lock_server_revoked(self, msg: Message) -> None:
        """The lock server's REVOKE (its receive thread, before the holder gives way):
        a file read from a replica is read from the lock server from now on."""
        if self._reads and msg["keep"] == p.CacheMode.RELEASE:
            self._reads.lock_server_revoked(msg.oid)

    def behind_notified(self, conn: Connection, msg: Message) -> None:
        """A server's MARKED (a receive thread): the replicas it names missed changes
        another client made without them; they are resynced before they are read
        from again. On a thread of its own (a demotion waits for the send lock)."""

        def demote() -> None:
            for name in msg["names"]:
                address = bytes(name).decode(errors="replace")
                if address == self.address:  # (the next group resyncs it: connector.py)
                    self.lose("the lock server missed changes of another client")
                self.demote(address, "missed changes of another client")
            try:
                conn.answer(msg)
            except OSError:
                pass

        threading.Thread(target=demote, daemon=True, name="pohmelfs-behind").start()

    def replica_notified(self, conn: Connection, msg: Message) -> None:
        """A replica's notification (its receive thread): a REVOKE of the cache lock of
        a file read from it; reads go back to the lock server, then the answer goes.
        (A read-only server's MARKED is not heeded: it is no judge of the write set.)"""
        if msg.cmd is Command.MARKED and conn.address not in self._reads.readers():
            self.behind_notified(conn, msg)
            return
        if msg.cmd is Command.REVOKE and msg["keep"] != p.CacheMode.SHARED:
            self._reads.revoked(conn.address, msg.oid)  # (a shared lock kept: reads stay)
        try:
            conn.answer(msg)
        except OSError:
            pass

    def _part(self, change: _Change, part: Transaction | None, address: str | None) -> None:
        """One part is done (or could not be sent: None; or, address None, all are sent)."""
        with change.lock:
            if part is not None and address == "":
                change.first = part
            elif part is not None and address is not None:
                change.others[address] = part
            change.left -= 1
            if change.left:
                return
        self._settle(change)

    def _settle(self, change: _Change) -> None:
        """Every part is done: the replicas that differ leave; the caller is told."""
        first, tx = change.first, change.tx
        assert first is not None
        unknown = self._compare(tx, first, change.others)
        tx.reply, tx.error, tx.frames = first.reply, first.error, first.frames
        if unknown is not None and tx.error is None:
            tx.reply, tx.error = None, unknown
        tx.complete()

    def _compare(self, tx: ReplicatedTransaction, first: Transaction,
                 others: dict[str, Transaction]) -> OSError | None:  # fmt: skip
        """The replicas whose part failed or answered otherwise leave; an OPEN's handles
        are followed. Returns the error the change ends with when the group itself was
        lost before every replica answered: one that is still a good server may not
        have it (the group's loss closed its connection, maybe before its part was
        sent), so the change goes again to the next group (``resend.py``) instead of
        being told done on the lock server's word alone."""
        cmd = tx.cmd
        answer = first.reply if first.error is None else None
        if self.closed and any(a not in others or others[a].reply is None for a in tx.replicas):
            return errors.connection_error(self.address, f"lost before every server "
                                           f"answered a {cmd.name}")  # fmt: skip
        minority = tx.changing and answer is not None and not answer.status
        with self._lock:
            resyncing = set(self._resyncing)
        for address, part in others.items():
            if address not in tx.replicas:
                continue  # (a read-only server's OPEN: below)
            if address in resyncing and part.reply is not None:
                expected = answer.status if answer is not None else part.reply.status
                if part.error is not None or part.reply.status != expected:
                    self._skip(address)  # (what it could not apply, the resync copies)
                continue
            if part.error is not None:
                self.leave(address, f"{cmd.name} failed: {part.error}")
            elif part.reply is None:
                self.leave(address, f"{cmd.name} was not answered")
            elif answer is not None and part.reply.status != answer.status:
                self.leave(address, f"{cmd.name} answered errno {part.reply.status} where "
                            f"{self.address} answered {answer.status}")  # fmt: skip
        if answer is not None and cmd is Command.OPEN and not answer.status:
            opened = {a: t.reply for a, t in others.items()
                      if t.reply is not None and not t.reply.status}  # fmt: skip
            with self._lock:
                # (one whose part was not sent, or failed, gets no handle: a resyncing
                # replica then stays resyncing while the file is open)
                opened = {a: r for a, r in opened.items() if a in self._replicas}
                self._handles[answer.oid] = {a: r.oid for a, r in opened.items()}
                self._fids[answer.oid] = {a: r["fid"] for a, r in opened.items()}
                self._opened_at[answer.oid] = tx.sent
                read_on = self._replicas.get(tx.reader) if tx.reader in opened else None
            if read_on is not None:
                self._reads.replied(answer, read_on, opened[read_on.address])
            if self._reads.read_only:
                self._reads.opened(answer.oid, answer["fid"])
        if tx.on_reader is not None and tx.reader is not None:
            part = others.get(tx.reader)
            if part is not None and part.reply is not None:
                self._reads.reader_opened(answer, tx.on_reader, part.reply, tx.changes)
            else:  # (lost, or silent: it reads nothing more)
                self.leave(tx.reader, f"its OPEN failed: {(part and part.error) or 'silent'}")
        if minority:  # (those that answered otherwise left above)
            return minority_error(cmd, self._current(), self._quorum())  # type: ignore[misc]
        return None

    def fids(self, oid: int) -> dict[str, bytes]:
        """The identities on the replicas of the file open as the lock server's ``oid``."""
        with self._lock:
            return dict(self._fids.get(oid, {}))

    def leave(self, address: str, why: str) -> None:
        """The replica at ``address`` leaves the group (and the client's set)."""
        reader = self._reads.take_reader(address)
        if reader is not None:  # (it gets no changes: nothing to tell the others)
            log.warning("read-only server %s leaves the group: %s", address, why)
            reader.close()
            self._lost(address, why)
            return
        with self._lock:
            conn = self._replicas.pop(address, None)
            self._resyncing.discard(address)
            self._skipped.pop(address, None)
            self._joined.pop(address, None)
            for handles in self._handles.values():
                handles.pop(address, None)
        self._reads.left(address)
        if conn is None:
            return
        log.warning("server %s leaves the write set: %s", address, why)
        conn.close()
        with self._lock:
            self._missing.add(address)
            missing, conns = set(self._missing), list(self._replicas.values())
        announce_missing([self.lock_server, *conns], missing, now=True)
        self._lost(address, why)

    # --- waiting ----------------------------------------------------------------------

    def wait(self, tx: Transaction, path: Any = None, path2: Any = None,
             forever: bool = False) -> Message:  # fmt: skip
        if not isinstance(tx, ReplicatedTransaction):
            if tx.via is not None:  # a READ on a replica
                return self._reads.wait_on(tx, path, path2)
            if not self._replicas:  # (silent alone: nowhere else to go)
                return self.lock_server.wait(tx, path, path2, forever)
            return self._heard(tx, lambda: self.lock_server.wait(tx, path, path2, forever))
        if not tx.parts:  # a callback's: each part ends (answered, timed out, or lost)
            tx.done.acquire()
            return self.lock_server.result(tx, path, path2)
        (_, _, first), *others = tx.parts
        failure: OSError | None = None
        try:
            reply = self._heard(first, lambda: self.lock_server.wait(first, path, path2))
        except OSError as e:
            failure = e
        for _, conn, part in others:
            try:
                conn.wait(part)
            except OSError:
                pass  # (looked at below: its error, or no reply at all)
        unknown = self._compare(tx, first, {a: t for a, _, t in others})
        if failure is not None:
            raise failure
        if unknown is not None:
            raise unknown
        return reply

    def _heard(self, tx: Transaction, wait: Callable[[], T]) -> T:
        """``wait()`` for the lock server's answer to ``tx``. A lock server silent for
        the whole time-out, while other servers are there, is taken for lost: the
        request goes to the next one (``resend.py``) instead of failing."""
        try:
            return wait()
        except TimeoutError:
            if tx.reply is not None or tx.error is not None or tx.frames or not self.replicas:
                raise  # (an answer that says ETIMEDOUT, one under way, or nowhere to go)
            why = f"silent for {self.timeout:g} s"
            self.lock_server.lose(why)
            raise errors.connection_error(self.address, why) from None

    def result(self, tx: Transaction, path: Any = None, path2: Any = None) -> Message:
        return (tx.via or self.lock_server).result(tx, path, path2)  # type: ignore[no-any-return]

    def call(self, cmd: Command, shown: Any = None, shown2: Any = None, /,
             **kwargs: Any) -> Message:  # fmt: skip
        return self.wait(self.start(cmd, **kwargs), shown, shown2)

    def stream(self, tx: Transaction, path: Any = None) -> list[Message]:
        if not isinstance(tx, ReplicatedTransaction):  # (a listing: the lock server's)
            return self._heard(tx, lambda: self.lock_server.stream(tx, path))
        last = self.wait(tx, path)
        return [*tx.frames, last]

    def cancel(self, tx: Transaction) -> None:
        if not isinstance(tx, ReplicatedTransaction):
            (tx.via or self.lock_server).cancel(tx)
            return
        for _, conn, part in tx.parts:  # (a callback's parts end on their own)
            conn.cancel(part)

    def answer(self, notification: Message) -> None:
        self.lock_server.answer(notification)

    def lose(self, why: str) -> None:
        """Give the group up as lost (its lock server's loss: ``Connection.lose``)."""
        self.lock_server.lose(why)

    def close(self) -> None:
        with self._lock:
            replicas, self._replicas = list(self._replicas.values()), {}
        for conn in [*replicas, *self._reads.take_readers()]:
            conn.close()
        self.lock_server.close()
