"""COPY, a file copied on the server (``Client.copy_file``, ``RemoteFile.copy_from``,
server/filerequests.py): the data stays there, other clients' held writes of the
source come first, the target's holders give way, and it goes to every server."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from conftest import address_of, held_file, make_client, same_view, settle_times
from pohmelfs import Client
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(60)


def traffic(c: Client) -> int:
    return sum(s["bytes_in"] + s["bytes_out"] for s in c.server_stats())


def test_a_copy_is_made_on_the_server(client: Client, export_dir: Path) -> None:
    data = os.urandom(5 << 20) + b"tail"
    (export_dir / "src").write_bytes(data)
    (export_dir / "dst").write_bytes(b"x" * (8 << 20))  # (longer: it is truncated)
    before = traffic(client)
    assert client.copy_file("src", "dst") == len(data)
    assert (export_dir / "dst").read_bytes() == data
    assert traffic(client) - before < 64 << 10  # (the data never crossed the network)
    assert client.copy_file("src", "new") == len(data)
    assert (export_dir / "new").read_bytes() == data
    (export_dir / "empty").write_bytes(b"")
    assert client.copy_file("empty", "empty2") == 0 and (export_dir / "empty2").exists()


def test_another_clients_held_writes_of_the_source_come_first(
    server: Server, client: Client, export_dir: Path
) -> None:
    (export_dir / "src").write_bytes(b"." * 10)
    f = client.open("/src", "r+b", buffering=0)  # (its own on_revoke: it writes back)
    f.cache_lock(exclusive=True)
    assert f.hold(b"held", 3)  # (kept back in this client: not on the server yet)
    assert (export_dir / "src").read_bytes() == b"." * 10
    with make_client([address_of(server)]) as other:
        assert other.copy_file("src", "dst") == 10
    assert (export_dir / "dst").read_bytes() == b"...held..."
    f.close()


def test_without_a_lock_on_the_source_a_copy_is_refused_while_another_holds_it(
    server: Server, client: Client, export_dir: Path
) -> None:
    (export_dir / "src").write_bytes(b"." * 10)
    f, _ = held_file(client, "/src", exclusive=True)
    with make_client([address_of(server)]) as other:
        with other.open("src", "rb", buffering=0) as s, other.open("dst", "wb", buffering=0) as d:
            with pytest.raises(BlockingIOError):
                d.copy_from(s, 0, 0, 10)
    f.close()


def test_the_targets_holders_give_way(server: Server, client: Client, export_dir: Path) -> None:
    (export_dir / "src").write_bytes(b"new data")
    (export_dir / "dst").write_bytes(b"old data")
    g, revoked = held_file(client, "/dst")
    assert g.pread(8, 0) == b"old data"
    with make_client([address_of(server)]) as other:
        other.copy_file("src", "dst")
    assert revoked.wait(10) and g.pread(8, 0) == b"new data"
    g.close()


@pytest.mark.parametrize("case, why", [("same file", errno.EINVAL), ("too long", errno.EINVAL),
                                       ("not a writer", errno.EBADF)])  # fmt: skip
def test_bad_copies_are_refused(client: Client, export_dir: Path, case: str, why: int) -> None:
    (export_dir / "a").write_bytes(b"a" * 100)
    (export_dir / "b").write_bytes(b"b" * 100)
    with client.open("a", "rb", buffering=0) as a, client.open("b", "r+b", buffering=0) as b:
        a.cache_lock()
        with pytest.raises(OSError) as e:
            if case == "same file":
                with client.open("a", "r+b", buffering=0) as a2:
                    a2.copy_from(a, 0, 50, 10)
            elif case == "too long":
                b.copy_from(a, 0, 0, (16 << 20) + 1)
            else:
                with client.open("b", "rb", buffering=0) as b_ro:
                    b_ro.copy_from(a, 0, 0, 10)
        assert e.value.errno == why
    assert (export_dir / "b").read_bytes() == b"b" * 100


def test_copies_each_way_between_two_files_at_once_finish(client: Client,
                                                         export_dir: Path) -> None:  # fmt: skip
    (export_dir / "a").write_bytes(os.urandom(4 << 20))
    (export_dir / "b").write_bytes(os.urandom(4 << 20))
    errors: list[BaseException] = []

    def copies(src: str, dst: str) -> None:
        try:
            s, d = client.open(src, "rb", buffering=0), client.open(dst, "r+b", buffering=0)
            with s, d:
                s.cache_lock()
                for _ in range(20):
                    d.copy_from(s, 0, 0, 4 << 20)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=copies, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads) and not errors, errors


def test_a_copy_goes_to_every_server(pair: list[Server], tmp_path: Path) -> None:
    a, b = (address_of(s) for s in pair)
    with make_client([a, b]) as c:
        with c.open("src", "wb") as f:
            f.write(os.urandom(3 << 20))
        c.copy_file("src", "dst")
        settle_times(c, b"")
    assert same_view(tmp_path / "export0") == same_view(tmp_path / "export1")
    assert (tmp_path / "export1/dst").read_bytes() == (tmp_path / "export0/src").read_bytes()


# --- found by review -----------------------------------------------------------------


def test_a_copy_onto_itself_or_a_hard_link_of_it_is_refused(client: Client,
                                                            export_dir: Path) -> None:  # fmt: skip
    (export_dir / "a").write_bytes(b"precious" * 100)
    os.link(export_dir / "a", export_dir / "b")
    for dst in ("a", "b"):
        with pytest.raises(OSError, match="same file") as e:
            client.copy_file("a", dst)
        assert e.value.errno == errno.EINVAL
    assert (export_dir / "a").read_bytes() == b"precious" * 100


@pytest.mark.parametrize("so, off", [(1 << 63, 0), (0, 1 << 63), (0, (1 << 63) - 5),
                                     ((1 << 64) - 1, 0)])  # fmt: skip
def test_offsets_past_the_largest_are_refused(client: Client, export_dir: Path, so: int,
                                              off: int) -> None:  # fmt: skip
    (export_dir / "a").write_bytes(b"a" * 100)
    with client.open("a", "rb", buffering=0) as a, client.open("b", "wb", buffering=0) as b:
        a.cache_lock()
        with pytest.raises(OSError) as e:
            b.copy_from(a, so, off, 10)
        assert e.value.errno == errno.EINVAL
    assert client.stat("a").st_size == 100


def test_a_copy_into_a_file_open_for_appending_is_refused(client: Client,
                                                         export_dir: Path) -> None:  # fmt: skip
    (export_dir / "a").write_bytes(b"A" * 10)
    (export_dir / "b").write_bytes(b"B" * 10)
    with client.open("a", "rb", buffering=0) as a, client.open("b", "ab", buffering=0) as b:
        a.cache_lock()
        with pytest.raises(OSError) as e:
            b.copy_from(a, 0, 0, 10)
        assert e.value.errno == errno.EINVAL
    assert (export_dir / "b").read_bytes() == b"B" * 10


def test_a_copy_that_waits_keeps_its_source_open(server: Server, client: Client,
                                                 export_dir: Path) -> None:  # fmt: skip
    """The target's holder is slow to give way; meanwhile the copier closes its source
    and another file is opened (it could take the source's descriptor): the copy still
    reads the source."""
    (export_dir / "src").write_bytes(b"s" * 16)
    (export_dir / "secret").write_bytes(b"TOP SECRET DATA!")
    (export_dir / "dst").write_bytes(b"d" * 16)
    go, asked = threading.Event(), threading.Event()
    g = client.open("/dst", "r+b", buffering=0)
    g.on_revoke = lambda *_: (asked.set(), go.wait(10))
    g.cache_lock()
    with make_client([address_of(server)]) as other:
        s, d = other.open("src", "rb", buffering=0), other.open("dst", "r+b", buffering=0)
        s.cache_lock()
        out: list[object] = []
        t = threading.Thread(target=lambda: out.append(d.copy_from(s, 0, 0, 16)))
        t.start()
        assert asked.wait(10)  # (the copy waits for the target's holder)
        s.close()
        x = client.open("secret", "rb", buffering=0)
        go.set()
        t.join(20)
        x.close()
        d.close()
    g.close()
    assert out == [16] and (export_dir / "dst").read_bytes() == b"s" * 16


def test_a_copy_goes_on_when_another_client_takes_the_source_meanwhile(
    server: Server, client: Client, export_dir: Path
) -> None:
    import time

    (export_dir / "src").write_bytes(b"." * (96 << 20))
    out: list[object] = []

    def copying() -> None:
        try:
            out.append(client.copy_file("src", "dst"))
        except OSError as e:
            out.append(e)

    t = threading.Thread(target=copying)
    with make_client([address_of(server)]) as other:
        f = other.open("/src", "r+b", buffering=0)
        t.start()
        time.sleep(0.05)
        f.cache_lock(exclusive=True)  # (the copier's shared lock is taken back)
        f.hold(b"held", 3)
        t.join(60)
        f.close()
    assert out == [96 << 20], out
    assert (export_dir / "dst").stat().st_size == 96 << 20
