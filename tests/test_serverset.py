"""The server set (client/serverset.py): the syntax, and where reads and changes go."""

from __future__ import annotations

import collections

import pytest

from pohmelfs.client.serverset import (
    GONE,
    LIVE,
    READ,
    STALE,
    WRITE,
    ServerSet,
    ServerSpec,
    parse_server,
    parse_servers,
)  # fmt: skip

pytestmark = pytest.mark.timeout(10)


def test_the_syntax() -> None:
    assert parse_server("h1:7400") == ServerSpec("h1", 7400, 0, READ | WRITE)
    assert parse_server("h1:7400/prio=2/r") == ServerSpec("h1", 7400, 2, READ)
    assert parse_server(" [::1]:1/w/prio=255 ") == ServerSpec("[::1]", 1, 255, WRITE)
    assert str(parse_server("h:9/prio=3/w")) == "h:9/prio=3/w"
    assert [s.address for s in parse_servers("a:1,b:2/r,")] == ["a:1", "b:2"]


@pytest.mark.parametrize("bad, why", [
    ("h1", "HOST:PORT"), ("h1:0", "port"), ("h1:99999", "port"), ("h:1/prio=256", "prio"),
    ("h:1/prio=-1", "prio"), ("h:1/prio=1/prio=2", "twice"), ("h:1/x", "unknown server option"),
    ("h:1/r/w", "twice"), ("h:1:2", "brackets"), ("[::1:1", "HOST:PORT"),
])  # fmt: skip
def test_bad_servers_say_why(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_server(bad)


def test_a_set_is_bounded_and_names_each_server_once() -> None:
    with pytest.raises(ValueError, match="twice: a:1"):
        parse_servers("a:1,b:1,a:1")
    with pytest.raises(ValueError, match="no server"):
        parse_servers(" , ")
    with pytest.raises(ValueError, match="at most"):
        parse_servers([f"h:{p}" for p in range(1, 40)])


def test_reads_go_to_the_highest_priority_in_turn_never_to_a_stale_one() -> None:
    servers = ServerSet(parse_servers("a:1/prio=1,b:1/prio=2,c:1/prio=2,d:1/prio=9/w"))
    counts = collections.Counter(servers.read_server("f").address for _ in range(100))
    assert counts == {"b:1": 50, "c:1": 50}  # d is write-only
    servers.mark_stale("b:1", "f")
    assert {servers.read_server("f").address for _ in range(10)} == {"c:1"}
    assert len({servers.read_server("g").address for _ in range(10)}) == 2
    servers.set_state("c:1", GONE)
    assert servers.read_server("f").address == "a:1"
    servers.set_state("a:1", STALE)
    with pytest.raises(LookupError):
        servers.read_server("f")


def test_changes_go_to_every_live_writable_server_and_a_majority_is_counted() -> None:
    servers = ServerSet(parse_servers("a:1,b:1,c:1/r,d:1/w"))
    assert [s.address for s in servers.write_servers()] == ["a:1", "b:1", "d:1"]
    servers.set_state("a:1", GONE)
    assert servers.majority()  # 2 of 3 writable
    servers.set_state("b:1", STALE)
    assert not servers.majority() and [s.address for s in servers.write_servers()] == ["d:1"]
    servers.set_state("b:1", LIVE)
    with pytest.raises(ValueError, match="not one of"):
        servers.set_state("z:1", LIVE)
    with pytest.raises(ValueError, match="unknown server state"):
        servers.set_state("a:1", "asleep")


def test_by_priority_keeps_the_given_order_among_equals() -> None:
    servers = ServerSet(parse_servers("a:1,b:1/prio=3,c:1"))
    assert [s.address for s in servers.by_priority()] == ["b:1", "a:1", "c:1"]


def test_ipv6_hosts_and_names_once_whatever_the_case() -> None:
    assert parse_server("[fe80::1%eth0]:7400").host == "[fe80::1%eth0]"
    with pytest.raises(ValueError, match="brackets"):
        parse_server("::1:7400")
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_server("h\nx:2")
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_server(":7400")
    with pytest.raises(ValueError, match="twice"):
        parse_servers("H:1,h:1")
