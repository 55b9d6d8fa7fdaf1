"""A mount's control socket (control.py), served for a library client: the server
set listed, changed and counted; bad requests answered with a reason, and the socket
goes on."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import address_of, make_client, wait_until
from pohmelfs import Client
from pohmelfs.control import MAX_REQUEST, ControlServer, ask
from pohmelfs.fuse.mount import control_path
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def controlled(pair: list[Server], tmp_path: Path) -> Iterator[tuple[str, Client]]:
    with make_client([address_of(pair[0])], retry_every=0.2) as c:
        control = ControlServer(str(tmp_path / "ctl.sock"), c)
        try:
            yield control.path, c
        finally:
            control.close()


def raw(path: str, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return json.loads(got)  # type: ignore[no-any-return]


def test_the_set_is_listed_changed_and_counted(controlled: tuple[str, Client],
                                               pair: list[Server]) -> None:  # fmt: skip
    path, c = controlled
    a, b = (address_of(s) for s in pair)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    listed = ask(path, {"op": "list"})
    assert listed["ok"] and [s["address"] for s in listed["servers"]] == [a]  # type: ignore[index]
    c.mkdir("d")
    added = ask(path, {"op": "add", "server": b})
    assert added["ok"], added
    wait_until(lambda: {s["address"]: s["state"] for s in ask(path, {"op": "list"})["servers"]}
               == {a: "live", b: "live"}, 20, "b live")  # type: ignore[index]  # fmt: skip
    assert (Path(pair[1].export.root) / "d").is_dir()  # type: ignore[attr-defined]
    modified = ask(path, {"op": "modify", "server": b, "prio": 9})
    assert {s["address"]: s["priority"] for s in modified["servers"]}[b] == 9  # type: ignore[index]
    c.mkdir("e")  # (a change: every server gets it)
    stats = ask(path, {"op": "stats"})
    assert all(s["requests"] > 0 for s in stats["servers"]), stats  # type: ignore[index]
    reader = ask(path, {"op": "modify", "server": b, "perm": "r"})
    assert {s["address"]: (s["permission"], s["role"])  # type: ignore[index]
            for s in reader["servers"]}[b] == ("r", "reader")  # type: ignore[union-attr]  # fmt: skip
    removed = ask(path, {"op": "remove", "server": b})
    assert [s["address"] for s in removed["servers"]] == [a]  # type: ignore[index]


@pytest.mark.parametrize("request_, why", [
    (b"not json\n", "Expecting value"),
    (b"[1, 2]\n", "a request is a JSON object"),
    (b'{"op": "format"}\n', "op must be one of"),
    (b'{"op": "add"}\n', "add needs a server"),
    (b'{"op": "add", "server": "nohost"}\n', "HOST:PORT"),
    (b'{"op": "modify", "server": "127.0.0.1:1", "prio": "high"}\n', "prio must be a number"),
    (b'{"op": "modify", "server": "127.0.0.1:1"}\n', "needs prio or perm"),
    (b'{"op": "modify", "server": "127.0.0.1:1", "perm": 3}\n', "perm must be"),
    (b'{"op": "modify", "server": "127.0.0.1:1", "prio": 3}\n', "not one of"),
    (b'{"op": "remove", "server": "127.0.0.1:1"}\n', "not one of"),
    (b'{"op": "add", "server": "127.0.0.1:1"}\n', "127.0.0.1:1"),
    (b"x" * (MAX_REQUEST + 10), "longer than"),
])  # fmt: skip
def test_a_bad_request_gets_a_reason_and_the_socket_goes_on(
    controlled: tuple[str, Client], request_: bytes, why: str
) -> None:
    path, _ = controlled
    got = raw(path, request_)
    assert got["ok"] is False and why in str(got["error"]), got
    assert ask(path, {"op": "list"})["ok"]


# --- found by review -----------------------------------------------------------------


def test_a_request_nested_too_deep_is_refused(controlled: tuple[str, Client]) -> None:
    path, _ = controlled
    got = raw(path, b"[" * 50_000 + b"\n")
    assert got["ok"] is False and "nested" in str(got["error"])
    assert ask(path, {"op": "list"})["ok"]


def test_a_slow_caller_is_cut_off_for_the_others(
    controlled: tuple[str, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = controlled
    monkeypatch.setattr("pohmelfs.control.TIMEOUT", 1.0)
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(path)
    stop = threading.Event()

    def dribble() -> None:  # a byte every 0.3 s: each wait is short, the whole is not
        try:
            while not stop.wait(0.3):
                slow.sendall(b" ")
        except OSError:
            pass

    t = threading.Thread(target=dribble)
    t.start()
    try:
        t0 = time.monotonic()
        assert ask(path, {"op": "list"}, timeout=10)["ok"]
        assert time.monotonic() - t0 < 5  # (the slow one held the socket 1 s, not for good)
    finally:
        stop.set()
        t.join(5)
        slow.close()


def test_two_mount_points_never_share_a_socket() -> None:
    assert control_path("/mnt/a_b") != control_path("/mnt/a/b")
    assert control_path("/mnt/x/") == control_path("/mnt/x")
