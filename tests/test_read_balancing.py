"""Reads balanced over a group's servers (client/readroutes.py): files read from the
servers of the highest priority in turn, each under a shared cache lock of the
server it reads from; another client's change takes reads back to the lock
server; a read server that dies costs the reader nothing."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from conftest import address_of, bytes_from, make_client, routed, server_processes
from pohmelfs import Client
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(120)

SIZE = 1 << 20


def write_files(c: Client, n: int) -> dict[str, bytes]:
    data = {f"f{i}": os.urandom(SIZE) for i in range(n)}
    for name, content in data.items():
        with c.open(name, "wb") as f:
            f.write(content)
    return data


def test_files_are_read_from_equal_servers_in_turn(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as c:
        data = write_files(c, 8)
        before = bytes_from(c)
        files = [c.open(name, "rb", buffering=0) for name in data]
        try:
            assert sorted(routed(c, f) or a for f in files) == sorted([a, b] * 4)
            for f, content in zip(files, data.values(), strict=True):
                assert f.pread(SIZE, 0) == content
        finally:
            for f in files:
                f.close()
        after = bytes_from(c)
        got = {s: after[s] - before[s] for s in (a, b)}
        assert got[a] >= 3 * SIZE and got[b] >= 3 * SIZE, got


def test_the_highest_priority_takes_every_read(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([f"{a}/prio=1", f"{b}/prio=2"]) as c:  # b: the lock server too
        data = write_files(c, 4)
        before = bytes_from(c)
        for name, content in data.items():
            with c.open(name, "rb", buffering=0) as f:
                assert routed(c, f) is None and f.pread(SIZE, 0) == content
        after = bytes_from(c)
        assert after[a] - before[a] < 64 << 10 and after[b] - before[b] >= 4 * SIZE


def test_another_clients_write_takes_reads_back_to_the_lock_server(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as x, make_client([a, b]) as y:
        write_files(x, 1)
        f = next(g for g in (x.open("f0", "rb", buffering=0) for _ in range(4))
                 if routed(x, g) == b)  # fmt: skip
        assert len(f.pread(SIZE, 0)) == SIZE
        new = os.urandom(4096)
        with y.open("f0", "r+b", buffering=0) as g:
            g.pwrite(new, 0)  # (revokes x's lock on b before b applies it)
        assert routed(x, f) is None
        assert f.pread(4096, 0) == new
        f.close()


def test_a_read_server_killed_under_readers_costs_nothing(tmp_path: Path) -> None:
    procs = server_processes(tmp_path, 2)
    a, b = procs
    problems: list[BaseException] = []
    stop = threading.Event()
    try:
        with make_client([a.address, b.address], timeout=5, retry_every=0) as c:
            data = write_files(c, 4)
            files = {name: c.open(name, "rb", buffering=0) for name in data}
            assert {routed(c, f) for f in files.values()} == {None, b.address}

            def reader(name: str) -> None:
                try:
                    n = 0
                    while not stop.is_set() and n < 100_000:
                        n += 1
                        off = (n * 65536) % SIZE
                        if files[name].pread(65536, off) != data[name][off : off + 65536]:
                            raise AssertionError(f"{name}: other data than written")
                except BaseException as e:
                    problems.append(e)

            threads = [threading.Thread(target=reader, args=(n,)) for n in files]
            for t in threads:
                t.start()
            try:
                threading.Event().wait(0.5)
                os.kill(b.pid, signal.SIGKILL)
                threading.Event().wait(1.0)
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            assert not problems, problems
            assert all(routed(c, f) is None for f in files.values())
            for f in files.values():
                f.close()
    finally:
        for p in procs:
            p.stop()


# --- found by review -----------------------------------------------------------------


def test_a_read_on_a_replica_sends_this_clients_held_writes_first(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b], retry_every=0) as c:
        with c.open("f", "wb") as f:
            f.write(b"o" * 8192)
        readers = [c.open("f", "rb", buffering=0) for _ in range(4)]
        r = next(g for g in readers if routed(c, g) == b)
        assert r.pread(4, 0) == b"oooo"
        w = c.open("f", "r+b", buffering=0)
        w.cache_lock(exclusive=True)  # (takes the readers' shared locks back)
        assert w.hold(b"NEW!", 0)  # kept back here, not sent yet
        assert r.pread(4, 0) == b"NEW!"
        w.close()
        for g in readers:
            g.close()


def test_a_writer_that_lost_the_read_server_still_takes_reads_back(pair: list[Server]) -> None:
    """Y no longer reaches B (its changes go to A alone): X, reading from B, hears of
    Y's write from A, the lock server, and reads from A from then on."""
    a, b = (address_of(s) for s in pair)
    with make_client([a, b], retry_every=0) as x, make_client([a, b], retry_every=0) as y:
        with x.open("f", "wb") as f:
            f.write(b"o" * 4096)
        r = next(g for g in (x.open("f", "rb", buffering=0) for _ in range(4))
                 if routed(x, g) == b)  # fmt: skip
        assert r.pread(4, 0) == b"oooo"
        y.connection().leave(b, "cut by the test")  # type: ignore[attr-defined]
        with y.open("f", "r+b", buffering=0) as g:
            g.pwrite(b"NEW!", 0)
        assert routed(x, r) is None
        assert r.pread(4, 0) == b"NEW!"


def test_a_replica_whose_version_differs_reads_nothing(pair: list[Server]) -> None:
    """A replica that missed a change of a file no one told it of (a client that does
    not name it changed it) is not read for that file: the versions in the OPEN
    replies differ, and the lock server reads it; another file is still balanced."""
    a, b = (address_of(s) for s in pair)
    with make_client([a, b], retry_every=0) as c:
        write_files(c, 2)
        new = os.urandom(SIZE)
        with make_client([a]) as only_a, only_a.open("f0", "r+b") as f:
            f.write(new)
        for _ in range(6):
            with c.open("f0", "rb", buffering=0) as f:
                assert routed(c, f) is None and f.pread(SIZE, 0) == new
        assert {routed(c, g) for g in [c.open("f1", "rb", buffering=0) for _ in range(4)]} \
            == {None, b}  # fmt: skip
