"""A library client given several servers (client/serverset.py's syntax) takes the one
of the highest priority that answers as its lock server; servers that are read-only
or write-only for the client are refused with the reason (they need versions)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import address_of, make_client, start_server, stopping

pytestmark = pytest.mark.timeout(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_highest_priority_that_answers(tmp_path: Path) -> None:
    dirs = [tmp_path / n for n in ("a", "b")]
    for d in dirs:
        d.mkdir()
    with stopping(start_server(dirs[0])) as a, stopping(start_server(dirs[1])) as b:
        with make_client([address_of(a), f"{address_of(b)}/prio=1"]) as c:
            assert c.connection().address == address_of(b)
        dead = f"127.0.0.1:{free_port()}/prio=9"
        with make_client(f"{dead},{address_of(a)}", connect_timeout=2) as c:
            assert c.connection().address == address_of(a)


def test_a_set_of_read_only_servers_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="at least one must take changes"):
        make_client(["127.0.0.1:1/r", "127.0.0.1:2/prio=2/r"])


def test_a_bad_server_says_why() -> None:
    with pytest.raises(ValueError, match="prio must be"):
        make_client(["127.0.0.1:1/prio=x"])
