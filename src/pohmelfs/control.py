"""A mount's control socket: ``pohmelfs ctl`` and ``pohmelfs stats`` ask the daemon
serving a mount to list, add, remove or re-prioritize its servers, and for what it
saw of each.

A Unix stream socket beside the daemon's PID file (mode 0600, and the peer must be
root or the daemon's own user, by SO_PEERCRED); one JSON object per line each way:
``{"op": "list" | "stats" | "add" | "remove" | "modify", "server": "HOST:PORT",
"prio": N, "perm": "r" | "w" | "rw"}`` and ``{"ok": true, "servers": [...]}`` or
``{"ok": false, "error": "..."}``. Requests are taken one at a time, at most
``MAX_REQUEST`` bytes, each connection for at most ``TIMEOUT`` seconds: nothing a
caller sends can hold the daemon up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("pohmelfs.control")

MAX_REQUEST = 64 << 10
TIMEOUT = 10.0  # seconds a caller has to send its request and take the answer
OPS = ("list", "stats", "add", "remove", "modify")


class Controlled(Protocol):
    """What a control socket works on (``Client``)."""

    def server_stats(self) -> list[dict[str, Any]]: ...
    def add_server(self, server: str) -> None: ...
    def remove_server(self, address: str) -> None: ...
    def modify_server(
        self, address: str, prio: int | None = None, perm: str | None = None
    ) -> None: ...


class ControlServer:
    """Serves ``path`` for ``client`` on a thread of its own until ``close``."""

    def __init__(self, path: str, client: Controlled,
                 view: Callable[[], dict[str, Any]] | None = None) -> None:  # fmt: skip
        """``view``: the mount's own figures, for ``stats``."""
        self.path, self._client, self._view = path, client, view
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # (a dead daemon's)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(path)
        os.chmod(path, 0o600)  # (and every caller's identity is checked anyway)
        self._sock.listen(8)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="pohmelfs-control")
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._thread.join(TIMEOUT + 1)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # (closed)
            with conn:
                try:
                    self._one(conn)
                except OSError as e:
                    log.info("control connection: %s", e)

    def _one(self, conn: socket.socket) -> None:
        if peer_uid(conn) not in (0, os.geteuid()):
            conn.settimeout(TIMEOUT)
            _send(conn, {"ok": False, "error": "only root or the mount's owner may ask"})
            return
        deadline = time.monotonic() + TIMEOUT  # (for the whole request, not each piece)
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the caller took too long to ask")
            conn.settimeout(left)
            got = conn.recv(4096)
            if not got:
                break
            data += got
            if len(data) > MAX_REQUEST:
                _send(conn, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                return
        conn.settimeout(TIMEOUT)
        _send(conn, self.answer(data))

    def answer(self, data: bytes) -> dict[str, Any]:
        """The answer to one request (as bytes of JSON)."""
        try:
            req = json.loads(data)
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            op = req.get("op")
            if op not in OPS:
                raise ValueError(f"op must be one of {', '.join(OPS)}")
            c = self._client
            if op in ("add", "remove", "modify"):
                server = req.get("server")
                if not isinstance(server, str):
                    raise ValueError(f"{op} needs a server (HOST:PORT)")
                if op == "add":
                    c.add_server(server)
                elif op == "remove":
                    c.remove_server(server)
                else:
                    prio, perm = req.get("prio"), req.get("perm")
                    if prio is not None and (not isinstance(prio, int) or isinstance(prio, bool)):
                        raise ValueError("prio must be a number")
                    if perm is not None and not isinstance(perm, str):
                        raise ValueError("perm must be r, w or rw")
                    if prio is None and perm is None:
                        raise ValueError("modify needs prio or perm")
                    c.modify_server(server, prio, perm)
            if op == "stats" and self._view is not None:
                return {"ok": True, "servers": c.server_stats(), "mount": self._view()}
            return {"ok": True, "servers": c.server_stats()}
        except (ValueError, OSError) as e:
            return {"ok": False, "error": str(e)}
        except RecursionError:  # (a request nested too deep to read)
            return {"ok": False, "error": "the request is nested too deeply"}


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
    conn.sendall(json.dumps(reply).encode() + b"\n")


def ask(path: str, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send one request to the control socket at ``path``; its answer. OSError if
    there is no daemon there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(path)
        if peer_uid(s) not in (0, os.geteuid()):  # (not the daemon: someone's socket)
            raise OSError(f"the socket at {path} belongs to another user")
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            got = s.recv(65536)
            if not got:
                break
            data += got
    try:
        reply = json.loads(data)
    except ValueError:
        raise OSError(f"the daemon at {path} answered {data[:80]!r}") from None
    if not isinstance(reply, dict):
        raise OSError(f"the daemon at {path} answered {reply!r}")
    return reply
