"""The TCP service: accepts clients, bounds them, and stops cleanly.

Each connection is a ``session.Session`` on a thread of its own; what every
session shares (the export, range, advisory and cache locks, the worker pool)
is one ``shared.Shared``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import protocol as p
from ..security.config import ServerSecurity
from ..wire import shutdown
from . import cachelocks, linux
from .handles import OpenWriters
from .keepalive import Keepalive
from .locks import AdvisoryLocks
from .notifier import Notifiers
from .outside import OutsideChanges
from .rangelock import RangeLocks
from .replycache import ReplyCache
from .session import Session, Terms
from .shared import Budget, Shared
from .sizes import SizeWatchers
from .stamps import Stamps
from .storage import Storage, Watched
from .versions import Versions

log = logging.getLogger("pohmelfs.server")

TRIM_EVERY = 2.0  # seconds: memory of closed connections goes back at most this often
SEND_TIMEOUT = struct.pack("ll", 20, 0)  # struct timeval: 20 s


@dataclass(frozen=True)
class Limits:
    """What one server gives its clients at most."""

    connections: int = 256
    per_peer: int = 64  # connections from one address
    handshake_timeout: float = 10.0  # from accept to the end of the handshake
    handshakes: int = 64  # connections in their handshake at once (the oldest goes)
    waiting: int = 4096  # requests waiting for other clients, on the whole server
    idle_timeout: float = 600.0  # a connection silent this long is closed
    # Changes made to the export outside pohmelfs, watched to revoke caches: on the whole
    # filesystem (fanotify; "held" where it cannot serve), on held objects only
    # (inotify), or "off" (then found only on use: stamps.py).
    watch: str = "filesystem"


class Server:
    """Serve ``export`` on ``host:port``; ``port`` 0 picks a free port."""

    def __init__(
        self,
        export: Storage,
        host: str = "127.0.0.1",
        port: int = 0,
        max_payload: int = p.DEFAULT_MAX_PAYLOAD,
        workers: int = 16,
        lease: float = 5.0,
        *,
        security: ServerSecurity,
        limits: Limits | None = None,
        allow_setuid: bool = False,
        versions: Versions | None = None,
        metrics: Any = None,
    ) -> None:
        """``versions``: where the versions of objects are kept (none: in memory);
        ``metrics``: a ``metrics.Metrics`` to count in (none: nothing counted)."""
        security.check_listen(host)
        linux.raise_descriptor_limit()
        self.export = export
        self.limits = limits = limits or Limits()
        if limits.watch not in ("filesystem", "held", "off"):
            raise ValueError(f"watch must be filesystem, held or off, not {limits.watch!r}")
        self._per_peer = collections.Counter[str]()
        self._trimmed = 0.0  # when memory was last given back (see forget)
        self._handshaking: dict[Session, float] = {}  # not yet admitted -> deadline
        self._reaper: threading.Thread | None = None
        self.cache = cache = cachelocks.CacheLocks(lease)
        notifiers = Notifiers()
        versions = versions if versions is not None else Versions()
        self.outside = OutsideChanges(cache, notifiers.revoke, versions.moved)
        self.shared = Shared(
            export=export,
            ranges=RangeLocks(),
            locks=AdvisoryLocks(),
            cache=cache,
            sizes=SizeWatchers(lease, notifiers.get, cache.lapsed, cache.lapse, cache.unlapse),
            notifiers=notifiers,
            stamps=Stamps(cache, self.outside.changed),
            writers=OpenWriters(),
            keepalive=Keepalive(),
            waiting=Budget(limits.waiting),
            pool=ThreadPoolExecutor(
                max_workers=workers,
                thread_name_prefix="pohmelfs-worker",
                initializer=linux.private_umask_zero,
            ),
            replies=ReplyCache(),
            versions=versions,
            allow_setuid=allow_setuid,
            metrics=metrics,
        )
        if metrics is not None:
            metrics.holders(cache.holder_count)
            cache.on_revoked = metrics.revoked
        self.locks, self.waiting = self.shared.locks, self.shared.waiting
        self.shared.versions.peers.told = self._tell_behind
        self.watched: Watched | None = None
        self.terms = Terms(security, max_payload, random.getrandbits(63) | 1,
                           limits.handshake_timeout, limits.idle_timeout)  # fmt: skip
        self.session_ids = itertools.count(1)
        self.sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.address = self.listener.getsockname()[:2]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="pohmelfs-accept", daemon=True
        )
        self._threads: list[threading.Thread] = []

    def _tell_behind(self, addresses: list[bytes]) -> None:
        """Servers newly marked behind: every client connected hears it (MARKED), on a
        thread of its own (the change that marked them must not wait for sockets)."""
        threading.Thread(target=self.shared.notifiers.tell_all, daemon=True,
                         args=(p.Command.MARKED, {"names": sorted(addresses)}),
                         name="pohmelfs-behind").start()  # fmt: skip

    def start(self) -> Server:
        if self.limits.watch != "off":
            stamps = self.shared.stamps
            whole = self.limits.watch == "filesystem"
            self.watched = self.export.watch(self.outside.changed, stamps.look, self.outside.lost,
                                             whole)  # fmt: skip
            if self.watched is not None:
                stamps.watched_by(self.watched)
        self._accept_thread.start()
        log.info(
            "serving %s on %s:%d%s",
            self.export.root,
            *self.address,
            " (read-only)" if self.export.read_only else "",
        )
        return self

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, addr = self.listener.accept()
            except OSError:
                if self._stopping:
                    return
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A client that does not take its replies for this long is cut off
            # (a blocked send would otherwise hold a range lock indefinitely).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, SEND_TIMEOUT)
            host = addr[0]
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                full = len(self.sessions) >= self.limits.connections
                if full or self._per_peer[host] >= self.limits.per_peer:
                    sock.close()
                    log.warning("%s:%d: refused, %s", host, addr[1],
                                f"{len(self.sessions)} connections already" if full
                                else f"{self._per_peer[host]} connections from {host} "
                                "already")  # fmt: skip
                    continue
                session = Session(next(self.session_ids), sock, "%s:%d" % addr[:2], self.shared,
                                  self.terms, self.admitted, self.forget)  # fmt: skip
                self._per_peer[host] += 1
                self.sessions.add(session)
                if self.shared.metrics is not None:
                    self.shared.metrics.sessions.set(len(self.sessions))
                self._handshake_started(session)
                t = threading.Thread(
                    target=session.run, name=f"pohmelfs-conn-{session.peer}", daemon=True
                )
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
                t.start()  # under the lock: stop() must never join an unstarted thread

    def _handshake_started(self, session: Session) -> None:
        """(Under ``_lock``.) The whole handshake has ``handshake_timeout``, however
        slowly its bytes come, and at most ``limits.handshakes`` run at once: the
        oldest is cut off for a new one, so connections that never prove a key cannot
        keep a client that has one out."""
        if len(self._handshaking) >= self.limits.handshakes:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            shutdown(oldest.sock)
        self._handshaking[session] = time.monotonic() + self.limits.handshake_timeout
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap_handshakes, daemon=True,
                                            name="pohmelfs-handshakes")  # fmt: skip
            self._reaper.start()

    def admitted(self, session: Session) -> None:
        with self._lock:
            self._handshaking.pop(session, None)

    def _reap_handshakes(self) -> None:
        while not self._stopping:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                late = [s for s, deadline in self._handshaking.items() if deadline <= now]
                for s in late:
                    del self._handshaking[s]
            for s in late:
                log.info("%s: no handshake within %.0f s, closed", s.peer,
                         self.limits.handshake_timeout)  # fmt: skip
                shutdown(s.sock)

    def forget(self, session: Session) -> None:
        now = time.monotonic()
        if now - self._trimmed > TRIM_EVERY:  # at most this often: it walks the heap
            self._trimmed = now
            linux.give_back_memory()
        with self._lock:
            self._handshaking.pop(session, None)
            if session in self.sessions:
                self.sessions.discard(session)
                if self.shared.metrics is not None:
                    self.shared.metrics.sessions.set(len(self.sessions))
                host = session.peer.rpartition(":")[0]
                self._per_peer[host] -= 1
                if self._per_peer[host] <= 0:
                    del self._per_peer[host]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish, then close everything."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            sessions = list(self.sessions)
            threads = list(self._threads)
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        if self.watched is not None:
            self.watched.stop()
        self.outside.close()
        for s in sessions:  # end each reader at its next frame boundary
            shutdown(s.sock, socket.SHUT_RD)
        for t in threads:
            t.join(timeout)
        self.shared.pool.shutdown(wait=True)
        self.cache.close()
        self.shared.keepalive.close()
        self.shared.versions.close()
        self._accept_thread.join(timeout)
        log.info("stopped")
