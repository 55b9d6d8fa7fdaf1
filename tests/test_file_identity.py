"""A file reopened after a lost connection is the very file it was: never another
one that took its name meanwhile (ESTALE instead, and nothing written)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

from conftest import ServerProcess, make_client
from pohmelfs import Client


def lose_connection(c: Client) -> None:
    """Cut the client's connection as a network failure would."""
    conn = c.connection().lock_server  # type: ignore[attr-defined]
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn._receiver.join(5)
    assert conn.closed


def test_a_replaced_file_is_not_written_after_a_reconnect(
    ab: tuple[Client, Client], export_dir: Path
) -> None:
    a, b = ab
    (export_dir / "a").write_bytes(b"first file")
    f = a.open("/a", "r+b", buffering=0)
    b.rename("/a", "/b")
    with b.open("/a", "wb") as new:
        new.write(b"another client's data")
    lose_connection(a)
    with pytest.raises(OSError) as e:
        f.pwrite(b"XXXX", 0)
    assert e.value.errno == errno.ESTALE
    assert (export_dir / "a").read_bytes() == b"another client's data"
    assert (export_dir / "b").read_bytes() == b"first file"
    with pytest.raises(OSError) as e:
        f.pread(4, 0)  # reads too: it is not that file
    assert e.value.errno == errno.ESTALE
    f.close()


def test_a_removed_file_is_stale_after_a_reconnect(
    ab: tuple[Client, Client], export_dir: Path
) -> None:
    a, b = ab
    (export_dir / "r").write_bytes(b"doomed")
    f = a.open("/r", "r+b", buffering=0)
    b.unlink("/r")
    lose_connection(a)
    with pytest.raises(OSError) as e:
        f.pwrite(b"resurrected", 0)
    assert e.value.errno == errno.ESTALE
    assert not (export_dir / "r").exists()
    f.close()


def test_renames_made_through_the_client_move_what_it_reopens(
    client: Client, export_dir: Path
) -> None:
    (export_dir / "d").mkdir()
    (export_dir / "d" / "x").write_bytes(b"x-data")
    (export_dir / "y").write_bytes(b"y-data")
    fx = client.open("/d/x", "r+b", buffering=0)
    fy = client.open("y", "r+b", buffering=0)
    client.rename("/d", "/e")  # a directory above the open file
    client.rename("/e/x", "e/../e/z")  # the file itself, by another spelling
    client.rename("/y", "/w")
    (export_dir / "y").write_bytes(b"not this one")  # the old name, reused
    lose_connection(client)
    fx.pwrite(b"X", 0)
    fy.pwrite(b"Y", 0)
    assert (export_dir / "e" / "z").read_bytes() == b"X-data"
    assert (export_dir / "w").read_bytes() == b"Y-data"
    assert (export_dir / "y").read_bytes() == b"not this one"
    fx.close()
    fy.close()


def test_exchanged_names_are_followed(client: Client, export_dir: Path) -> None:
    (export_dir / "p").write_bytes(b"p")
    (export_dir / "q").write_bytes(b"q")
    fp = client.open("/p", "r+b", buffering=0)
    client.rename("/p", "/q", exchange=True)
    lose_connection(client)
    fp.pwrite(b"P!", 0)
    assert (export_dir / "q").read_bytes() == b"P!"
    assert (export_dir / "p").read_bytes() == b"q"
    fp.close()


def test_the_same_file_reopens_after_a_server_restart(export_dir: Path) -> None:
    """The identity is the file system's (inode and generation): a restarted server
    still recognises the file, and still refuses a replacement."""
    first = ServerProcess(export_dir)
    address = first.address
    (export_dir / "kept").write_bytes(b"kept")
    (export_dir / "swapped").write_bytes(b"old")
    c = make_client([address], timeout=5)
    try:
        kept = c.open("/kept", "r+b", buffering=0)
        swapped = c.open("/swapped", "r+b", buffering=0)
        assert first.stop() == 0
        os.rename(export_dir / "swapped", export_dir / "moved-away")
        (export_dir / "swapped").write_bytes(b"new")
        second = ServerProcess(export_dir, listen=address, retry_for=10)
        try:
            kept.pwrite(b"KEPT", 0)
            assert (export_dir / "kept").read_bytes() == b"KEPT"
            with pytest.raises(OSError) as e:
                swapped.pwrite(b"XXX", 0)
            assert e.value.errno == errno.ESTALE
            assert (export_dir / "swapped").read_bytes() == b"new"
            kept.close()
            swapped.close()
        finally:
            second.stop()
    finally:
        c.close()
