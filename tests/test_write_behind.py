"""Write-behind: writes answered before the server applies them, failures reported later."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import address_of, make_client, start_server
from pohmelfs import Client
from pohmelfs.server.service import Server

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root only)")


@pytest.fixture
def small_export(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, so that writes run out of space."""
    d = tmp_path / "small"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_write_behind_data_is_there_after_drain(client: Client, export_dir: Path) -> None:
    data = os.urandom(3 << 20)
    with client.open("/f", "w+b", buffering=0) as f:
        assert f.write_behind(data, 0) == len(data)
        assert f.write_behind(b"tail", len(data)) == 4
        f.drain()
        assert (export_dir / "f").read_bytes() == data + b"tail"
        # later requests on the connection see earlier writes: a read right after
        f.write_behind(b"XY", 10)
        assert f.pread(4, 9) == data[9:10] + b"XY" + data[12:13]


@needs_root
def test_failed_write_behind_is_reported_by_drain_once(small_export: Path) -> None:
    server: Server = start_server(small_export)
    try:
        with make_client([address_of(server)]) as c:
            f = c.open("/big", "wb", buffering=0)
            f.write_behind(b"x" * (3 << 20), 0)  # more than the 1 MiB filesystem holds
            with pytest.raises(OSError) as e:
                f.drain()
            assert e.value.errno == errno.ENOSPC
            f.drain()  # reported once, like a failed page writeback
            f.close()
    finally:
        server.stop()
        server.export.close()


@needs_root
def test_failed_write_behind_fails_fsync_and_close(small_export: Path) -> None:
    server: Server = start_server(small_export)
    try:
        with make_client([address_of(server)]) as c:
            f = c.open("/big", "wb", buffering=0)
            f.write_behind(b"x" * (3 << 20), 0)
            with pytest.raises(OSError) as e:
                f.fsync()
            assert e.value.errno == errno.ENOSPC
            g = c.open("/big2", "wb", buffering=0)
            g.write_behind(b"y" * (3 << 20), 0)
            with pytest.raises(OSError):
                g.close()
            assert g.closed
            f.close()
    finally:
        server.stop()
        server.export.close()


def test_write_behind_across_files_stays_under_the_clients_limit(
    server: Server, export_dir: Path
) -> None:
    """Unanswered writes of all files together never pass the client's limit (one
    request always goes), and everything arrives."""
    limit = 2 << 20
    client = make_client([address_of(server)], write_behind_limit=limit)
    try:
        files = [client.open(f"/w{i}", "w+b", buffering=0) for i in range(4)]
        data = os.urandom(1 << 20)
        for rnd in range(6):
            for f in files:
                f.write_behind(data, rnd * len(data))
        for f in files:
            f.drain()
            f.close()
        assert 0 < client.write_budget.peak <= limit
        assert client.write_budget.used == 0
        for i in range(4):
            assert (export_dir / f"w{i}").read_bytes() == data * 6
    finally:
        client.close()
