"""What one client can cost the server and the others: bounded waiting requests,
unanswered notifications, a socket that is not read, deep trees, wrong file ids,
oversized frames."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CLIENT_KEY, SECRET_FILE, address_of, make_client, start_server, stopping
from pohmelfs import protocol as p
from pohmelfs.client.connection import Connection
from pohmelfs.protocol import ANY_FILE, Command, Cred
from pohmelfs.security.keys import load_secret
from pohmelfs.server import waits
from pohmelfs.server.service import Server
from rawwire import RawSession

CRED = Cred(os.geteuid(), os.getegid(), ())
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2


@pytest.fixture
def lease_server(export_dir: Path) -> Iterator[Server]:
    with stopping(start_server(export_dir, lease=1.0)) as srv:
        yield srv


def open_raw(conn: Connection, path: bytes, cache: int = 2, **kw: object) -> int:
    fields = {"cred": CRED, "path": path, "flags": os.O_RDWR, "mode": 0, "cache": cache,
              "fid": ANY_FILE} | kw  # fmt: skip
    return conn.call(Command.OPEN, **fields).oid


def silent_holder(server: Server, path: bytes) -> Connection:
    """A client that takes the cache lock of ``path`` and never answers a revoke."""
    conn = Connection(address_of(server), security=CLIENT_KEY, timeout=30, connect_timeout=5,
                      on_notify=lambda c, m: None)  # fmt: skip
    open_raw(conn, path, cache=1)
    return conn


def test_waiting_requests_of_one_connection_are_bounded(
    lease_server: Server, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond MAX_WAITING requests (or MAX_WAITING_BYTES of their data) waiting for
    other clients, a connection's next one fails at once with EAGAIN; those that
    waited go through when the wait ends."""
    monkeypatch.setattr(waits, "MAX_WAITING", 4)
    monkeypatch.setattr(waits, "MAX_WAITING_BYTES", 10_000)
    (export_dir / "f").write_bytes(b"a" * 100)
    holder = silent_holder(lease_server, b"f")
    other = Connection(address_of(lease_server), security=CLIENT_KEY, timeout=30, connect_timeout=5)
    try:
        oid = open_raw(other, b"f")
        small = [other.start(Command.WRITE, oid=oid, offset=i, data=b"z") for i in range(4)]
        with pytest.raises(OSError) as e:
            other.call(Command.WRITE, oid=oid, offset=50, data=b"y")
        assert e.value.errno == errno.EAGAIN
        for tx in small:
            other.wait(tx)  # once the holder's lease ran out
        assert (export_dir / "f").read_bytes()[:5] == b"zzzza"

        holder2 = silent_holder(lease_server, b"f")
        try:
            big = [other.start(Command.WRITE, oid=oid, offset=0, data=b"b" * 4096)
                   for _ in range(2)]  # fmt: skip
            with pytest.raises(OSError) as e:
                other.call(Command.WRITE, oid=oid, offset=0, data=b"c" * 4096)
            assert e.value.errno == errno.EAGAIN
            for tx in big:
                other.wait(tx)
        finally:
            holder2.close()
    finally:
        other.close()
        holder.close()


def test_a_watcher_that_never_answers_resize_costs_one_lease_not_every_write(
    lease_server: Server, export_dir: Path
) -> None:
    (export_dir / "f").write_bytes(b"")
    heard: list[Command] = []
    watcher = Connection(
        address_of(lease_server),
        security=CLIENT_KEY,
        timeout=30,
        connect_timeout=5,
        notices=p.NOTICE_RESIZE,
        on_notify=lambda c, m: heard.append(m.cmd),
    )
    open_raw(watcher, b"f", flags=os.O_RDONLY)
    c = make_client([address_of(lease_server)], timeout=10)
    try:
        with c.open("/f", "r+b", buffering=0) as f:
            took = []
            for i in range(4):
                started = time.monotonic()
                f.pwrite(b"x" * 10, i * 10)
                took.append(time.monotonic() - started)
        assert heard == [Command.RESIZE]  # asked once; lapsed after its lease
        assert took[0] < lease_server.cache.lease + 2
        assert max(took[1:]) < 1.0, took
        (sid,) = [s.sid for s in lease_server.sessions
                  if s.sock.getpeername()[:2] == watcher.sock.getsockname()[:2]]  # fmt: skip
        assert lease_server.cache.lapsed(sid)
        assert (export_dir / "f").read_bytes() == b"x" * 40
    finally:
        c.close()
        watcher.close()


def test_a_client_that_reads_nothing_does_not_silence_keepalives_to_others(
    export_dir: Path,
) -> None:
    """A client with many waiting requests that never reads its socket: the PENDING
    frames that no longer fit there must not hold up the PENDING that another
    client's long wait needs to hear (its time-out is shorter than the wait)."""
    srv = start_server(export_dir, lease=30.0)
    (export_dir / "f").write_bytes(b"a" * 4096)
    a = Connection(address_of(srv), security=CLIENT_KEY, timeout=30, connect_timeout=5)
    hostile: RawSession | None = None
    b = None
    try:
        ao = open_raw(a, b"f")
        a.call(Command.LOCK, oid=ao, offset=0, length=0, owner=1, type=F_WRLCK, flags=0, pid=1)
        hostile = RawSession(address_of(srv), load_secret(SECRET_FILE), rcvbuf=2048,
                             keepalive_ms=20, client=b"hostile")  # fmt: skip
        opened = hostile.call(p.request(Command.OPEN, 1, cred=CRED, path=b"f", flags=os.O_RDWR,
                                        mode=0, cache=2, fid=ANY_FILE))  # fmt: skip
        for xid in range(2, 2000):  # each waits for a's lock; the PENDINGs pile up
            hostile.send(p.request(Command.LOCK, xid, oid=opened.oid, offset=0, length=1,
                                   owner=2, type=F_WRLCK, flags=p.LOCK_WAIT, pid=2))  # fmt: skip

        b = Connection(address_of(srv), security=CLIENT_KEY, timeout=1.0, connect_timeout=5)
        bo = open_raw(b, b"f")
        unlock = threading.Timer(
            2.5,
            lambda: a.call(
                Command.LOCK, oid=ao, offset=0, length=0, owner=1, type=F_UNLCK, flags=0, pid=1
            ),
        )
        unlock.start()  # fmt: skip
        started = time.monotonic()
        b.call(Command.LOCK, oid=bo, offset=100, length=100, owner=3, type=F_RDLCK,
               flags=p.LOCK_WAIT, pid=3)  # fmt: skip
        assert 2.2 < time.monotonic() - started < 10
        unlock.join(10)  # (its answer may come after b's grant: a stays open for it)
    finally:
        if b is not None:
            b.close()
        if hostile is not None:
            hostile.close()
        a.close()
        srv.stop()
        srv.export.close()


DEEP_RMTREE = """
import os, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import address_of, make_client, start_server
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
srv = start_server(Path(sys.argv[1]))
c = make_client([address_of(srv)], timeout=30)
c.rmtree("/top")
print("gone" if not os.path.exists(os.path.join(sys.argv[1], "top")) else "left")
c.close(); srv.stop(); srv.export.close()
"""


def test_rmtree_of_a_tree_deeper_than_the_descriptor_limit(export_dir: Path) -> None:
    """RMTREE holds a bounded number of descriptors, whatever the depth (the server
    runs here with 256: one per level would run out at about 250)."""
    d = export_dir / "top"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(600):  # built by descriptor: the path outgrows PATH_MAX
            os.mkdir("d", dir_fd=fd)
            if i % 50 == 0:
                os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    tests = str(Path(__file__).parent)
    run = subprocess.run([sys.executable, "-c", DEEP_RMTREE, str(export_dir), tests],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "gone"


@pytest.mark.parametrize("flags", [os.O_TRUNC, os.O_CREAT, os.O_CREAT | os.O_EXCL])
def test_an_open_by_file_id_never_creates_or_truncates(
    server: Server, export_dir: Path, flags: int
) -> None:
    """A file id is for reopening the file a client had: with O_CREAT, O_EXCL or
    O_TRUNC a wrong id would have created or emptied another file first."""
    (export_dir / "f").write_bytes(b"precious data")
    conn = Connection(address_of(server), security=CLIENT_KEY, timeout=10, connect_timeout=5)
    try:
        for name in (b"f", b"new"):
            with pytest.raises(OSError) as e:
                open_raw(conn, name, flags=os.O_RDWR | flags, mode=0o644, fid=b"\x01" * 16)
            assert e.value.errno == errno.EINVAL
    finally:
        conn.close()
    assert (export_dir / "f").read_bytes() == b"precious data"
    assert not (export_dir / "new").exists()


def test_a_frame_larger_than_the_server_takes_is_refused_before_sending(
    export_dir: Path,
) -> None:
    """The server would drop the connection (and everything in flight on it)."""
    srv = start_server(export_dir, max_payload=64 << 10)
    client = make_client([address_of(srv)], timeout=10)
    try:
        conn = client.connection()
        assert conn.max_payload == 64 << 10
        with pytest.raises(OSError) as e:
            conn.call(Command.LOOKUP, cred=CRED, path=b"a/" * (40 << 10))
        assert e.value.errno == errno.ENAMETOOLONG
        (export_dir / "f").write_bytes(b"")
        oid = open_raw(conn, b"f")
        with pytest.raises(OSError) as e:
            conn.call(Command.WRITE, oid=oid, offset=0, data=b"x" * (conn.max_payload + 1))
        assert e.value.errno == errno.E2BIG
        assert not conn.closed
        assert client.listdir("/") == ["f"]
    finally:
        client.close()
        srv.stop()
        srv.export.close()
