"""Read-only (``/r``) and write-only (``/w``) servers of a set (client/readroutes.py,
client/connector.py): a read-only server gets none of the client's changes and
reads a file only while its version is the lock server's; a write-only one gets
every change and reads nothing; both change at run time."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    address_of,
    bytes_from,
    make_client,
    routed,
    same_view,
    server_processes,
    settle_times,
    stop_process,  # fmt: skip,
    wait_until,
)
from pohmelfs import Client
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(120)

SIZE = 256 << 10


def state(c: Client, address: str) -> tuple[str, str]:
    s = next(s for s in c.server_stats() if s["address"] == address)
    return s["state"], s["role"]


def write_files(c: Client, n: int, prefix: str = "f") -> dict[str, bytes]:
    data = {f"{prefix}{i}": os.urandom(SIZE) for i in range(n)}
    for name, content in data.items():
        with c.open(name, "wb") as f:
            f.write(content)
    return data


def test_a_read_only_server_reads_what_it_has_and_gets_no_change(
    pair: list[Server], tmp_path: Path
) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        data = write_files(both, 4)  # (the same versions on both servers)
    with make_client([a, f"{b}/prio=1/r"]) as c:
        before = bytes_from(c)
        for name, content in data.items():
            with c.open(name, "rb", buffering=0) as f:
                assert routed(c, f) == b
                assert f.pread(SIZE, 0) == content
        after = bytes_from(c)
        assert after[b] - before[b] >= 4 * SIZE and after[a] - before[a] < 64 << 10
        assert state(c, b) == ("live", "reader")
        with c.open("new", "wb") as f:
            f.write(b"only on the writable server")
        c.mkdir("d")
        c.unlink("f3")
    assert (tmp_path / "export0/new").exists() and not (tmp_path / "export1/new").exists()
    assert not (tmp_path / "export1/d").exists() and (tmp_path / "export1/f3").exists()


def test_a_read_only_server_behind_serves_no_stale_read(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        write_files(both, 2)
    new = os.urandom(SIZE)
    with make_client([a]) as only_a:  # (b misses this change)
        with only_a.open("f0", "r+b") as f:
            f.write(new)
    with make_client([a, f"{b}/prio=1/r"]) as c:
        for _ in range(3):
            with c.open("f0", "rb", buffering=0) as f:
                assert routed(c, f) is None and f.pread(SIZE, 0) == new
        with c.open("f1", "rb", buffering=0) as f:  # (the same on both: read there)
            assert routed(c, f) == b


def test_this_clients_own_write_takes_reads_back_from_a_read_only_server(
    pair: list[Server],
) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        write_files(both, 2)
    with make_client([a, f"{b}/prio=1/r"]) as c:
        f, g = c.open("f0", "rb", buffering=0), c.open("f1", "rb", buffering=0)
        try:
            assert routed(c, f) == b and routed(c, g) == b
            new = os.urandom(4096)
            with c.open("f0", "r+b", buffering=0) as w:
                w.write(new)
            assert routed(c, f) is None and f.pread(4096, 0) == new
            assert routed(c, g) == b  # (another file: still read there)
            c.truncate("f1", 10)  # (by path: which file is not known, so every one)
            assert routed(c, g) is None and len(g.pread(SIZE, 0)) == 10
        finally:
            f.close()
            g.close()


def test_another_clients_write_takes_reads_back_from_a_read_only_server(
    pair: list[Server],
) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as writer:
        write_files(writer, 1)
        with make_client([a, f"{b}/prio=1/r"]) as c, c.open("f0", "rb", buffering=0) as f:
            assert routed(c, f) == b
            new = os.urandom(4096)
            with writer.open("f0", "r+b", buffering=0) as w:
                w.write(new)
            assert routed(c, f) is None and f.pread(4096, 0) == new


def test_a_write_only_server_gets_every_change_and_reads_nothing(
    pair: list[Server], tmp_path: Path
) -> None:
    a, b = (address_of(s) for s in pair)
    # (the higher priority makes b the lock server: it answers lookups, reads no file)
    with make_client([a, f"{b}/prio=5/w"]) as c:
        assert state(c, b)[1] == "lock server"
        data = write_files(c, 4)
        c.mkdir("d")
        c.setxattr("f0", "user.k", b"v")
        before = bytes_from(c)
        for name, content in data.items():
            with c.open(name, "rb", buffering=0) as f:
                assert routed(c, f) == a and f.pread(SIZE, 0) == content
        after = bytes_from(c)
        assert after[b] - before[b] < 16 << 10 and after[a] - before[a] >= 4 * SIZE
        assert c.server_stats()[0]["permission"] == "w"
        settle_times(c, b"")
    with make_client([a, f"{b}/w"]) as c:  # (a the lock server: every read there)
        for name, content in data.items():
            with c.open(name, "rb", buffering=0) as f:
                assert routed(c, f) is None and f.pread(SIZE, 0) == content
    assert same_view(tmp_path / "export0") == same_view(tmp_path / "export1")


def test_a_client_that_only_reads_a_server_marks_it_behind_for_the_others(
    pair: list[Server],
) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b], retry_every=0) as x, make_client([a, f"{b}/r"]) as y:
        # (at once: the lock server y would take b for, were it first, is not x's)
        wait_until(lambda: state(x, b)[0] == "resyncing", 10, "x to hear b is behind")
        with y.open("y", "wb") as f:  # (a change b does not get)
            f.write(b"y")
        assert state(x, b)[0] == "resyncing"


def test_a_lock_server_another_client_leaves_out_is_left_for_the_next(
    pair: list[Server], tmp_path: Path
) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b], retry_every=0) as x, make_client([b, f"{a}/r"]) as y:
        with y.open("from-y", "wb") as f:  # (only b gets it: a is behind)
            f.write(b"y")
        wait_until(lambda: x.exists("from-y") and state(x, b)[1] == "lock server", 10,
                   "x to take b for its lock server")  # fmt: skip
        with x.open("from-y", "rb") as f:
            assert f.read() == b"y"


def test_permissions_change_at_run_time(pair: list[Server], tmp_path: Path) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as c:
        write_files(c, 2)
        c.modify_server(b, perm="r")
        assert state(c, b) == ("live", "reader")
        with c.open("while-r", "wb") as f:
            f.write(b"x")
        assert not (tmp_path / "export1/while-r").exists()
        c.modify_server(b, prio=3, perm="rw")
        wait_until(lambda: state(c, b) == ("live", "replica"), 30, "b resynced and live")
        assert (tmp_path / "export1/while-r").read_bytes() == b"x"
        settle_times(c, b"")  # (each server's own clock set the times of f0, f1)
        assert same_view(tmp_path / "export0") == same_view(tmp_path / "export1")
        with pytest.raises(ValueError, match="permission must be"):
            c.modify_server(b, perm="x")
        with pytest.raises(ValueError, match="prio must be"):
            c.modify_server(b, prio=256, perm="r")
        assert state(c, b) == ("live", "replica")  # (a bad value changes nothing)


def test_a_read_only_server_added_at_run_time_is_read_at_once(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        data = write_files(both, 1)
    with make_client([a]) as c:
        c.add_server(f"{b}/prio=1/r")
        assert state(c, b) == ("live", "reader")
        with c.open("f0", "rb", buffering=0) as f:
            assert routed(c, f) == b and f.pread(SIZE, 0) == data["f0"]


def test_a_read_only_server_that_dies_costs_the_reader_nothing(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        data = write_files(both, 1)
    with make_client([a, f"{b}/prio=1/r"], retry_every=0) as c:
        f = c.open("f0", "rb", buffering=0)
        try:
            assert routed(c, f) == b
            pair[1].stop()
            assert f.pread(SIZE, 0) == data["f0"]
            assert state(c, b)[0] == "gone" and routed(c, f) is None
        finally:
            f.close()


def test_a_set_needs_a_writable_server() -> None:
    with pytest.raises(ValueError, match="at least one must take changes"):
        Client(["127.0.0.1:1/r"])


# --- found by review -----------------------------------------------------------------


def test_a_new_priority_keeps_what_a_server_is_used_for(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        write_files(both, 1)
    with make_client([a, f"{b}/prio=1/r"]) as c:
        c.modify_server(b, prio=2)
        with c.open("f0", "rb", buffering=0) as f:
            assert routed(c, f) == b
            new = os.urandom(4096)
            with c.open("f0", "r+b", buffering=0) as w:
                w.write(new)
            assert f.pread(4096, 0) == new
    with make_client([a, f"{b}/w"]) as c:
        c.modify_server(b, prio=5)
        with c.open("f0", "rb", buffering=0) as f:
            assert routed(c, f) != b


def test_a_write_only_server_added_at_run_time_reads_nothing(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a]) as c:
        write_files(c, 1)
        c.add_server(f"{b}/prio=5/w")
        wait_until(lambda: state(c, b) == ("live", "replica"), 30, "b live")
        for _ in range(4):
            with c.open("f0", "rb", buffering=0) as f:
                assert routed(c, f) is None


def test_this_clients_write_during_a_slow_open_on_a_read_only_server(
    pair: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock server answers the OPEN, this client writes the file, then the slow
    read-only server answers with the old version: it must not read the file."""
    from pohmelfs.server.filerequests import FileRequests

    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        write_files(both, 1)
    slow, real = pair[1].export, FileRequests._open_existing

    def open_existing(self: FileRequests, *args: object) -> object:
        if self.export is slow:
            time.sleep(0.5)
        return real(self, *args)  # type: ignore[arg-type]

    with make_client([a, f"{b}/prio=1/r"]) as c:
        w = c.open("f0", "r+b", buffering=0)
        monkeypatch.setattr(FileRequests, "_open_existing", open_existing)
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(c.open("f0", "rb", buffering=0)))
        t.start()
        time.sleep(0.2)
        new = os.urandom(4096)
        w.write(new)
        w.close()
        t.join(10)
        f = got[0]
        try:
            assert routed(c, f) is None and f.pread(4096, 0) == new  # type: ignore[attr-defined]
        finally:
            f.close()  # type: ignore[attr-defined]


def test_a_permission_of_a_gone_server_is_refused_and_changes_nothing(
    pair: list[Server],
) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b], retry_every=0) as c:
        pair[1].stop()
        with c.open("x", "wb") as f:  # (b fails this change and leaves)
            f.write(b"x")
        wait_until(lambda: state(c, b)[0] == "gone", 10, "b gone")
        with pytest.raises(ValueError, match="is gone"):
            c.modify_server(b, perm="r")
        assert state(c, b)[0] == "gone"


def test_a_read_only_server_that_stops_answering_leaves(tmp_path: Path) -> None:
    servers = server_processes(tmp_path, 2)
    try:
        a, b = (s.address for s in servers)
        with make_client([a, b]) as both:
            write_files(both, 3)
        with make_client([a, f"{b}/prio=1/r"], timeout=1.0, retry_every=0) as c:
            stop_process(servers[1].pid)
            took = []
            for i in range(3):
                t0 = time.monotonic()
                with c.open(f"f{i}", "rb", buffering=0) as f:
                    assert len(f.pread(10, 0)) == 10
                took.append(time.monotonic() - t0)
            assert state(c, b)[0] == "gone" and max(took[1:]) < 0.5, took
    finally:
        for s in servers:
            s.stop()


def test_what_the_routes_keep_of_a_file_goes_with_its_close(pair: list[Server]) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        write_files(both, 1)
    with make_client([a, f"{b}/r"]) as c:
        files = [c.open("f0", "rb", buffering=0) for _ in range(20)]
        c.remove_server(b)
        for f in files:
            f.close()
        reads = c.connection()._reads  # type: ignore[attr-defined]
        assert not reads._objects and not reads._on_readers and not reads._routes


def test_clients_that_disagree_on_a_read_only_server_agree_on_the_lock_server(
    pair: list[Server],
) -> None:
    """y takes a for read only, x for its lock server: y's connecting marks a behind
    at once, so x takes b for lock server too, and one exclusive lock is not
    granted to both."""
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as both:
        write_files(both, 1)
    with make_client([a, b], retry_every=0) as x, make_client([f"{a}/r", b]) as y:
        wait_until(lambda: x.exists("f0") and state(x, b)[1] == "lock server", 10,
                   "x to take b for lock server")  # fmt: skip
        x.lock("f0", wait=False)
        with pytest.raises(BlockingIOError):
            y.lock("f0", wait=False)


def test_a_server_another_client_leaves_out_is_not_resynced_every_second(
    pair: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pohmelfs.client import resync

    a, b = (address_of(s) for s in pair)
    runs: list[int] = []
    real = resync.Resync.run
    monkeypatch.setattr(resync.Resync, "run", lambda self: (runs.append(1), real(self))[1])
    with make_client([a, b], retry_every=0.2) as x, make_client([b, f"{a}/r"]):
        write_files(x, 2)
        wait_until(lambda: len(runs) >= 1, 10, "a first resync")
        time.sleep(4)
        assert len(runs) <= 2, len(runs)


def test_a_change_on_a_servers_disk_keeps_its_copy_from_being_read(
    pair: list[Server], tmp_path: Path
) -> None:
    """A file changed outside pohmelfs on a replica takes a new version there: it is
    read from the lock server, not the replica's changed copy."""
    a, b = (address_of(s) for s in pair)
    with make_client([a, b], retry_every=0) as c:
        data = write_files(c, 1)
        opened = [c.open("f0", "rb", buffering=0) for _ in range(4)]
        f = next(g for g in opened if routed(c, g) == b)  # (read from the replica)
        for g in opened:
            if g is not f:
                g.close()
        with f:
            f.pread(10, 0)  # (held on both: the replica's watcher tells of the change)
            # (by another process: a server's watcher leaves its own process's changes out)
            subprocess.run(["dd", "of=" + str(tmp_path / "export1/f0"), "conv=notrunc",
                            "status=none"], input=b"changed on b's disk", check=True)  # fmt: skip
            wait_until(lambda: routed(c, f) is None, 10, "the replica's lock revoked")
        for _ in range(4):
            with c.open("f0", "rb", buffering=0) as f:
                assert routed(c, f) is None and f.pread(SIZE, 0) == data["f0"]
