"""A mount of two servers: what is written through it lands on both, compared file by
file, and a replica killed with SIGKILL in the middle of writing costs the writer
nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MountProcess, ServerProcess, requires_fuse, wait_until
from test_replication import replica_view

pytestmark = [requires_fuse, pytest.mark.timeout(120)]


class TwoServers:
    def __init__(self, top: Path) -> None:
        self.exports = [top / "export0", top / "export1"]
        self.mnt = top / "mnt"
        self.mnt.mkdir()
        self.servers: list[ServerProcess] = []
        self.mount: MountProcess | None = None
        try:
            for d in self.exports:
                d.mkdir()
                self.servers.append(ServerProcess(d))
            self.mount = MountProcess(",".join(s.address for s in self.servers), self.mnt)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.mount is not None:
            self.mount.stop()
        for s in self.servers:
            s.stop()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[TwoServers]:
    t = TwoServers(tmp_path)
    yield t
    t.stop()


def test_what_is_written_through_the_mount_lands_on_both_servers(two: TwoServers) -> None:
    m = two.mnt
    (m / "d/e").mkdir(parents=True)
    (m / "d/small").write_bytes(b"small\n")
    big = os.urandom(3 << 20)
    (m / "d/big").write_bytes(big)
    with open(m / "d/small", "ab") as f:
        for _ in range(100):  # small writes: held back under the exclusive lock, then sent
            f.write(b"x" * 100)
    os.rename(m / "d/small", m / "d/e/moved")
    os.symlink("../big", m / "d/e/link")
    os.chmod(m / "d/big", 0o640)
    os.setxattr(m / "d/big", "user.k", b"v")
    os.truncate(m / "d/big", 1 << 20)
    os.utime(m / "d/big", ns=(1_000_000_000, 2_000_000_000))
    (m / "gone").mkdir()
    (m / "gone/f").write_bytes(b"f")
    os.unlink(m / "gone/f")
    os.rmdir(m / "gone")
    os.sync()
    two.mount.stop()  # type: ignore[union-attr]  # (every write is out once it unmounted)
    two.mount = None
    first = replica_view(two.exports[0])
    assert (two.exports[0] / "d/e/moved").stat().st_size == 6 + 100 * 100
    assert replica_view(two.exports[1]) == first


def test_a_replica_killed_while_the_mount_writes_costs_the_writer_nothing(
    two: TwoServers,
) -> None:
    written: dict[str, str] = {}
    errors: list[BaseException] = []
    halfway = threading.Event()

    def writer() -> None:
        try:
            for n in range(24):
                data = os.urandom(1 << 20)
                with open(two.mnt / f"f{n:02d}", "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                written[f"f{n:02d}"] = hashlib.sha256(data).hexdigest()
                if n == 8:
                    halfway.set()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    assert halfway.wait(60)
    os.kill(two.servers[1].pid, signal.SIGKILL)
    t.join(90)
    assert not t.is_alive() and errors == []
    assert len(written) == 24
    got = {n: hashlib.sha256((two.exports[0] / n).read_bytes()).hexdigest() for n in written}
    assert got == written
    wait_until(lambda: "left this client's server set" in two.mount.log.read_text(),  # type: ignore[union-attr]
               10, "the mount to log the replica leaving")  # fmt: skip


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pohmelfs.cli", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.strip()}


def test_ctl_changes_a_mounts_servers_while_it_is_used(two: TwoServers, tmp_path: Path) -> None:
    """``pohmelfs ctl`` lists, removes and adds servers of a live mount (an added one
    is resynced, then live), ``modify`` changes a priority, and ``pohmelfs stats``
    shows what the mount sent each; the files stay readable throughout."""
    m, (a, b) = two.mnt, (s.address for s in two.servers)
    (m / "before").write_bytes(b"1" * 10_000)
    r = ctl("ctl", str(m), "list")
    assert r.returncode == 0, r.stderr
    listed = rows(r.stdout)
    assert listed[a][1:] == ["rw", "live", "lock-server"]
    assert listed[b][1:] == ["rw", "live", "replica"]
    r = ctl("ctl", str(m), "remove", b)
    assert r.returncode == 0, r.stderr
    assert set(rows(r.stdout)) == {a}
    (m / "while-b-was-out").write_bytes(b"2" * 10_000)
    r = ctl("ctl", str(m), "add", b, "--prio", "0")
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout)[b][2] in ("resyncing", "live")
    wait_until(lambda: rows(ctl("ctl", str(m), "list").stdout)[b][2] == "live", 30, "b live")
    assert (two.exports[1] / "while-b-was-out").read_bytes() == b"2" * 10_000
    r = ctl("ctl", str(m), "modify", b, "--prio", "7")
    assert r.returncode == 0 and rows(r.stdout)[b][0] == "7", r.stdout + r.stderr
    r = ctl("ctl", str(m), "modify", b, "--perm", "r")  # (read only: gets no changes)
    assert r.returncode == 0 and rows(r.stdout)[b] == ["7", "r", "live", "reader"], r.stdout
    (m / "while-b-was-r").write_bytes(b"3" * 10_000)
    assert (m / "before").read_bytes() == b"1" * 10_000
    assert not (two.exports[1] / "while-b-was-r").exists()
    r = ctl("ctl", str(m), "modify", b, "--perm", "rw")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: rows(ctl("ctl", str(m), "list").stdout)[b][2:] == ["live", "replica"],
               30, "b resynced and live")  # fmt: skip
    assert (two.exports[1] / "while-b-was-r").read_bytes() == b"3" * 10_000
    r = ctl("stats", str(m))
    assert r.returncode == 0, r.stderr
    stats = rows(r.stdout)
    assert int(stats[a][2]) > 0 and int(stats[b][2]) > 0  # requests sent to each
    for bad in (["ctl", str(m), "remove", "127.0.0.1:1"], ["ctl", str(m), "modify", b],
                ["ctl", str(tmp_path), "list"], ["stats", str(tmp_path)]):  # fmt: skip
        r = ctl(*bad)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
    assert (m / "before").read_bytes() == b"1" * 10_000


def test_a_mount_reads_from_a_read_only_server_where_it_is_current(
    two: TwoServers, tmp_path: Path
) -> None:
    """A second mount with b read-only reads from b the file both servers have the
    same, from a the one b missed (written through a mount of a alone), and its own
    writes reach a only."""
    a, b = (s.address for s in two.servers)
    same, missed = os.urandom(2 << 20), os.urandom(2 << 20)
    (two.mnt / "same").write_bytes(same)
    (two.mnt / "missed").write_bytes(b"old" * 1000)
    only_a, reader = tmp_path / "only-a", tmp_path / "reader"
    only_a.mkdir()
    reader.mkdir()
    mounts = [MountProcess(a, only_a)]
    try:
        (only_a / "missed").write_bytes(missed)
        mounts.append(MountProcess(f"{a},{b}/prio=1/r", reader))
        assert hashlib.sha256((reader / "missed").read_bytes()).digest() == \
            hashlib.sha256(missed).digest()  # fmt: skip
        before = rows(ctl("stats", str(reader)).stdout)
        assert (reader / "same").read_bytes() == same
        after = rows(ctl("stats", str(reader)).stdout)
        assert after[b][1] == "reader"
        assert float(after[b][5]) - float(before[b][5]) >= 1.5  # MiB in, from b
        (reader / "new").write_bytes(b"new")
        assert (two.exports[0] / "new").read_bytes() == b"new"
        assert not (two.exports[1] / "new").exists()
    finally:
        for mp in reversed(mounts):
            mp.stop()


def test_stats_shows_the_mount_and_its_servers_as_text_and_json(two: TwoServers) -> None:
    import json

    m, (a, b) = two.mnt, (s.address for s in two.servers)
    (m / "f").write_bytes(b"z" * 100_000)
    assert (m / "f").read_bytes() == b"z" * 100_000
    r = ctl("stats", str(m), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    mount = got["mount"]
    assert mount["kernel_requests"] > 0 and mount["kernel_requests_by_op"]["WRITE"] >= 1
    assert mount["network_requests"] > 0 and mount["coherent"] is True
    assert {"in_flight", "held_bytes", "cached_files"} <= set(mount)
    assert {s["address"]: s["state"] for s in got["servers"]} == {a: "live", b: "live"}
    text = ctl("stats", str(m))
    assert text.returncode == 0 and text.stdout.startswith("mount: "), text.stdout
    assert a in text.stdout and b in text.stdout
