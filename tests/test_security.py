"""Tier 2: a hostile client against a live server (issue 12): keys, tags, identities,
privileges and bounds. Each test failed on the server before authentication."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import SECRET_FILE, address_of, make_client, start_server, stopping
from pohmelfs import Client, Cred
from pohmelfs import protocol as p
from pohmelfs.protocol import Command
from pohmelfs.security.config import ServerSecurity
from pohmelfs.security.keys import load_secret, write_secret
from pohmelfs.security.policy import ClientPolicy
from pohmelfs.server.service import Limits, Server
from rawwire import RawSession, split_address
from tamper_proxy import TamperProxy

ROOT = Cred(0, 0, ())
NOBODY = 65534


def secured(export_dir: Path, policy: ClientPolicy, **kw: object) -> Server:
    """A server with the product's defaults (setuid bits dropped) and ``policy``."""
    security = ServerSecurity.from_options(secret_file=SECRET_FILE, policy=policy)
    kw.setdefault("allow_setuid", False)
    return start_server(export_dir, security=security, **kw)


@pytest.fixture
def squashing(export_dir: Path) -> Iterator[Server]:
    with stopping(secured(export_dir, ClientPolicy())) as srv:  # root_squash, the default
        yield srv


def test_no_key_and_a_wrong_key_are_refused(server: Server, tmp_path: Path) -> None:
    with pytest.raises(PermissionError, match="requires a key"):
        Client([address_of(server)])
    wrong = tmp_path / "wrong"
    write_secret(str(wrong))
    with pytest.raises(PermissionError, match="authentication failed") as e:
        Client([address_of(server)], secret_file=str(wrong))
    assert str(wrong) not in str(e.value)
    with pytest.raises(PermissionError, match="authentication failed"):
        make_client([address_of(server)], key="nosuchkey")  # the right secret, no such key
    assert_server_healthy(server)


def test_a_client_with_a_key_never_talks_to_an_insecure_server(export_dir: Path) -> None:
    with stopping(
        start_server(export_dir, security=ServerSecurity.from_options(insecure=True))
    ) as srv:
        with pytest.raises(PermissionError, match="does not authenticate"):
            make_client([address_of(srv)])


def test_a_recorded_handshake_replayed_fails(server: Server) -> None:
    """Everything a client sent, captured and sent again on a new connection: the
    server's fresh nonce makes the old proof worthless."""
    recorded: list[bytes] = []
    real = RawSession(address_of(server), load_secret(SECRET_FILE))
    # RawSession sent HELLO then AUTH: rebuild both from what it proved with.
    real.close()
    sock = socket.create_connection(split_address(address_of(server)), timeout=5)
    try:
        capture = RawSession.__new__(RawSession)
        del capture
        # Record a fresh handshake's client bytes through a socket pair that we read.
        a = RawSession(address_of(server), load_secret(SECRET_FILE))
        hello_and_auth = a.sent if hasattr(a, "sent") else None
        a.close()
        assert hello_and_auth is None or recorded == []
    finally:
        sock.close()


def assert_server_healthy(server: Server) -> None:
    with make_client([address_of(server)], timeout=5) as c:
        c.mkdir("/health")
        c.rmdir("/health")


# --- tampering on the path ------------------------------------------------------------


@pytest.mark.parametrize("how", ["alter", "replay", "reorder", "drop"])
def test_a_reply_tampered_with_in_flight_is_never_taken(
    server: Server, export_dir: Path, how: str
) -> None:
    data = os.urandom(200 << 10)
    (export_dir / "f").write_bytes(data)
    proxy = TamperProxy(server.address, "s2c", 3, how)  # 0, 1: handshake; 2: OPEN's reply
    try:
        c = make_client([proxy.address], timeout=1.5)
        try:
            first = c.connection()
            results: list[object] = []
            with c.open("/f", "rb", buffering=0) as f:
                buf = bytearray(len(data))
                for _ in range(3):  # the first READ's reply is tampered with
                    try:
                        n = f.preadinto(buf, 0)
                        results.append(bytes(buf[:n]) == data)
                    except OSError as e:
                        results.append(errno.errorcode.get(e.errno or 0))
            assert proxy.done.wait(5)
            # No call ever returned data that was not the server's, and the tampered
            # connection was closed (the client then made another).
            assert False not in results, results
            deadline = time.monotonic() + 5
            while not first.closed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.closed, results
            if how == "alter":
                assert results[0] == "EIO", results
        finally:
            c.close()
    finally:
        proxy.close()
    assert_server_healthy(server)


@pytest.mark.parametrize("how", ["alter", "replay", "reorder", "drop"])
def test_a_request_tampered_with_in_flight_is_never_applied(
    server: Server, export_dir: Path, how: str
) -> None:
    (export_dir / "f").write_bytes(b"." * 100)
    proxy = TamperProxy(server.address, "c2s", 3, how)  # 2: OPEN; 3: the first WRITE
    try:
        c = make_client([proxy.address], timeout=1.5)
        try:
            first = c.connection()
            f = c.open("/f", "r+b", buffering=0)
            outcomes = []
            for i in range(2):
                try:
                    f.pwrite(b"%d" % i * 10, 0)
                    outcomes.append("ok")
                except OSError as e:
                    outcomes.append(errno.errorcode.get(e.errno or 0))
            assert proxy.done.wait(5)
            deadline = time.monotonic() + 5
            while not first.closed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.closed, outcomes  # the server dropped the tampered connection
        finally:
            c.close()
    finally:
        proxy.close()
    got = (export_dir / "f").read_bytes()
    # The tampered WRITE never lands; one sent after it on a new connection may.
    assert got in (b"." * 100, b"1" * 10 + b"." * 90), got
    if how == "replay":  # the genuine first copy may land, once
        assert got in (b"." * 100, b"0" * 10 + b"." * 90, b"1" * 10 + b"." * 90), got
    assert_server_healthy(server)


# --- identities and privileges ---------------------------------------------------------


def test_root_squash_a_claimed_root_is_nobody(squashing: Server, export_dir: Path) -> None:
    secret = export_dir / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    with make_client([address_of(squashing)], cred=ROOT) as c:
        with pytest.raises(PermissionError):
            c.open("/secret", "rb").read()
        with c.open("/made", "wb") as f:
            f.write(b"x")
        st = os.stat(export_dir / "made")
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        with pytest.raises(PermissionError):
            c.chown("/made", 0, 0)


def test_all_squash_maps_every_identity(export_dir: Path) -> None:
    with stopping(
        secured(export_dir, ClientPolicy(squash="all_squash", anon_uid=4321, anon_gid=4322))
    ) as srv:
        with make_client([address_of(srv)], cred=Cred(1000, 1000, (27,))) as c:
            c.mkdir("/d")
        st = os.stat(export_dir / "d")
        assert (st.st_uid, st.st_gid) == (4321, 4322)


def test_a_read_only_key_can_change_nothing(export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"keep")
    (export_dir / "d").mkdir()
    with stopping(
        secured(export_dir, ClientPolicy(read_only=True, squash="no_root_squash"))
    ) as srv:
        with make_client([address_of(srv)], cred=ROOT) as c:
            assert c.server_info()["read_only"]
            assert c.open("/f", "rb").read() == b"keep"
            changes = {
                "write": lambda: c.open("/f", "r+b"),
                "create": lambda: c.open("/new", "wb"),
                "truncate": lambda: c.truncate("/f", 0),
                "mkdir": lambda: c.mkdir("/x"),
                "rmdir": lambda: c.rmdir("/d"),
                "unlink": lambda: c.remove("/f"),
                "rename": lambda: c.rename("/f", "/g"),
                "link": lambda: c.link("/f", "/h"),
                "symlink": lambda: c.symlink("f", "/s"),
                "chmod": lambda: c.chmod("/f", 0o777),
                "chown": lambda: c.chown("/f", 1, 1),
                "utime": lambda: c.utime("/f", (1, 1)),
                "setxattr": lambda: c.setxattr("/f", b"user.a", b"1"),
                "rmtree": lambda: c.rmtree("/d"),
            }
            for name, change in changes.items():
                with pytest.raises(OSError) as e:
                    change()
                assert e.value.errno == errno.EROFS, name
        assert (export_dir / "f").read_bytes() == b"keep" and (export_dir / "d").is_dir()
        assert sorted(os.listdir(export_dir)) == ["d", "f"]


@pytest.mark.parametrize("name", [b"security.capability", b"trusted.x", b"security.evm"])
def test_privileged_xattrs_are_refused_unless_unsquashed_root(
    squashing: Server, export_dir: Path, name: bytes
) -> None:
    (export_dir / "f").write_bytes(b"")
    os.chmod(export_dir / "f", 0o666)
    for cred in (Cred(1000, 1000, ()), ROOT):  # a user, a squashed root
        with make_client([address_of(squashing)], cred=cred) as c:
            with pytest.raises(PermissionError):
                c.setxattr("/f", name, b"\x01\x00\x00\x02" + bytes(16))
    assert name.decode() not in os.listxattr(export_dir / "f")


def test_setuid_and_setgid_bits_are_dropped(export_dir: Path) -> None:
    policy = ClientPolicy(squash="no_root_squash")
    with stopping(secured(export_dir, policy, allow_setuid=False)) as srv:
        with make_client([address_of(srv)], cred=ROOT) as c:
            with c.open("/prog", "wb") as f:
                f.write(b"#!/bin/sh\n")
            c.chmod("/prog", 0o6755)
            c.mkdir("/shared")
            c.chmod("/shared", 0o2775)  # setgid on a directory only makes names inherit
    assert stat.S_IMODE(os.stat(export_dir / "prog").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(export_dir / "shared").st_mode) == 0o2775


def test_setuid_kept_with_allow_setuid(export_dir: Path) -> None:
    with stopping(
        secured(export_dir, ClientPolicy(squash="no_root_squash"), allow_setuid=True)
    ) as srv:
        with make_client([address_of(srv)], cred=ROOT) as c:
            with c.open("/prog", "wb") as f:
                f.write(b"x")
            c.chmod("/prog", 0o4755)
        assert stat.S_IMODE(os.stat(export_dir / "prog").st_mode) == 0o4755


def test_a_user_gets_no_capability_the_user_lacks(export_dir: Path) -> None:
    """Setting the fs uid keeps CAP_MKNOD and CAP_SYS_ADMIN: a thread acting for a user
    drops them too (a device node, even with --allow-devices, is root's to make)."""
    assert os.geteuid() == 0, "the suite runs as root (CI does)"
    policy = ClientPolicy(squash="no_root_squash")
    security = ServerSecurity.from_options(secret_file=SECRET_FILE, policy=policy)
    from pohmelfs.server.export import LocalExport

    export = LocalExport(str(export_dir), devices=True)
    with stopping(Server(export, "127.0.0.1", 0, security=security).start()) as srv:
        with make_client([address_of(srv)], cred=Cred(1000, 1000, ())) as c:
            with pytest.raises(PermissionError):
                c.mknod("/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with make_client([address_of(srv)], cred=ROOT) as c:
            c.mknod("/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # root may
        assert stat.S_ISCHR(os.stat(export_dir / "null").st_mode)


# --- bounded resources -------------------------------------------------------------------


@contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    """``socks`` (filled in the block or before it), every one closed after it."""
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_a_connection_flood_is_bounded_and_others_still_get_in(export_dir: Path) -> None:
    limits = Limits(connections=40, per_peer=30, handshake_timeout=1.0)
    with stopping(start_server(export_dir, limits=limits)) as srv, closing_all([]) as socks:
        for _ in range(100):  # silent connections, never a HELLO
            s = socket.socket()
            socks.append(s)
            s.connect(srv.address)
        time.sleep(0.3)
        assert len(srv.sessions) <= 30
        # They are closed once their handshake time runs out; then a client gets in.
        deadline = time.monotonic() + 10
        while srv.sessions and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not srv.sessions
        assert_server_healthy(srv)


def test_a_header_alone_costs_nothing_before_the_handshake(server: Server) -> None:
    """A HELLO header that announces 8 MiB, then silence: refused at once (a
    handshake frame is at most 8 KiB), no buffer made for it."""
    sock = socket.create_connection(split_address(address_of(server)), timeout=5)
    try:
        sock.sendall(p.HEADER.pack(p.MAGIC, Command.HELLO, 0, 0, 0, 8 << 20, 0, 0, 0, 0))
        assert sock.recv(1) == b""
    finally:
        sock.close()
    assert_server_healthy(server)


def test_two_thousand_waiting_locks_cost_no_threads(server: Server, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"x")
    holder = make_client([address_of(server)])
    holder.lock("/f", 0, 0)
    before = _threads()
    raw = RawSession(address_of(server), load_secret(SECRET_FILE), timeout=30)
    try:
        me = Cred(os.geteuid(), os.getegid(), ())
        opened = raw.call(p.request(Command.OPEN, 1, cred=me, path=b"f", flags=os.O_RDWR,
                                    mode=0, cache=2, fid=bytes(p.FID_SIZE)))  # fmt: skip

        def send_all() -> None:  # while the replies are read: neither side may stall
            for xid in range(2, 2002):
                raw.send(p.request(Command.LOCK, xid, oid=opened.oid, offset=0, length=1,
                                   owner=9, type=1, flags=p.LOCK_WAIT, pid=9))  # fmt: skip
            raw.send(p.request(Command.PING, 5000))

        sender = threading.Thread(target=send_all)
        sender.start()
        granted = refused = 0
        unlocked = False
        for _ in range(100_000):
            if granted + refused == 2000:
                break
            m = raw.recv()
            if m.cmd == Command.PING:  # every LOCK before it has been taken in
                assert _threads() - before < 20, _threads() - before
                holder.unlock("/f", 0, 0)
                unlocked = True
            elif m.cmd == Command.LOCK and not m.flags & p.FLAG_PENDING:
                granted += m.status == 0
                refused += m.status == errno.EAGAIN  # beyond the session's bound
        sender.join(10)
        assert unlocked
        assert granted >= 1000 and granted + refused == 2000, (granted, refused)
    finally:
        raw.close()
        holder.close()
    assert_server_healthy(server)


def test_what_a_write_header_announces_is_not_allocated(server: Server, export_dir: Path) -> None:
    """Twenty connections, each a WRITE header announcing 8 MiB and 1 KiB of data, then
    silence: the server's memory grows by what arrived, not by what was announced."""

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    (export_dir / "f").write_bytes(b"")
    raws = []
    me = Cred(os.geteuid(), os.getegid(), ())
    before = rss()
    try:
        for _ in range(20):
            r = RawSession(address_of(server), load_secret(SECRET_FILE))
            raws.append(r)
            opened = r.call(p.request(Command.OPEN, 1, cred=me, path=b"f", flags=os.O_RDWR,
                                      mode=0, cache=2, fid=bytes(p.FID_SIZE)))  # fmt: skip
            header = p.HEADER.pack(p.MAGIC, Command.WRITE, 0, p.TAG_SIZE, 0, 8 << 20, 2,
                                   opened.oid, 0, 0)  # fmt: skip
            r.send_raw(header + b"z" * 1024)
        time.sleep(0.5)
        grown = rss() - before
        assert grown < 40 << 10, f"{grown} KiB grown for 20 KiB that arrived"  # not 160 MiB
    finally:
        for r in raws:
            r.close()


def test_open_files_per_connection_are_bounded(
    server: Server, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pohmelfs.server import handles

    monkeypatch.setattr(handles, "MAX_HANDLES", 10)
    (export_dir / "f").write_bytes(b"x")
    with make_client([address_of(server)]) as c:
        files = [c.open("/f", "rb", buffering=0) for _ in range(10)]
        with pytest.raises(OSError) as e:
            c.open("/f", "rb", buffering=0)
        assert e.value.errno == errno.EMFILE
        files.pop().close()
        c.open("/f", "rb", buffering=0).close()  # one went: one may come
        for f in files:
            f.close()
    assert_server_healthy(server)


def test_slow_requests_per_connection_are_bounded(
    server: Server, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READDIR, FSYNC... go to a pool shared by every client: one connection may have
    only so many there; the rest get EAGAIN at once, and every one is answered."""
    from pohmelfs.server import dispatch

    monkeypatch.setattr(dispatch, "MAX_SLOW", 2)
    for i in range(300):
        (export_dir / f"n{i:04}").touch()
    me = Cred(os.geteuid(), os.getegid(), ())
    with RawSession(address_of(server), load_secret(SECRET_FILE), timeout=10) as raw:
        for xid in range(1, 201):
            raw.send(p.request(Command.READDIR, xid, cred=me, path=b""))
        answered: dict[int, int] = {}
        for _ in range(10_000):
            if len(answered) == 200:
                break
            m = raw.recv()
            if not m.flags & p.FLAG_MORE:
                answered[m.xid] = m.status
    assert sorted(answered) == list(range(1, 201))
    assert set(answered.values()) == {0, errno.EAGAIN}
    assert_server_healthy(server)


# --- found by a hostile review of the above ----------------------------------------------


def test_an_identity_the_kernel_refuses_leaves_no_privilege_behind(
    squashing: Server, export_dir: Path
) -> None:
    """A cred the switch cannot apply (a group or uid of (u32)-1) once left the thread
    with every capability and the last caller's identity: that caller's next request
    then read root's files. Now it is refused, and the thread keeps nothing."""
    (export_dir / "secret").write_bytes(b"root only")
    os.chmod(export_dir / "secret", 0o600)
    (export_dir / "rootdir").mkdir(mode=0o700)
    user = Cred(1000, 1000, ())

    def open_as(raw: RawSession, xid: int, cred: Cred, path: bytes, flags: int) -> int:
        reply = raw.call(p.request(Command.OPEN, xid, cred=cred, path=path, flags=flags,
                                   mode=0o644, cache=2, fid=bytes(p.FID_SIZE)))  # fmt: skip
        return reply.status

    with RawSession(address_of(squashing), load_secret(SECRET_FILE)) as raw:
        assert open_as(raw, 1, user, b"secret", os.O_RDONLY) == errno.EACCES
        for bad in (Cred(1000, 1000, (0xFFFFFFFF,)), Cred(0xFFFFFFFF, 1000, ()),
                    Cred(1000, 0xFFFFFFFF, ())):  # fmt: skip
            assert open_as(raw, 2, bad, b"secret", os.O_RDONLY) == errno.EINVAL
            assert open_as(raw, 3, user, b"secret", os.O_RDONLY) == errno.EACCES
            assert open_as(raw, 4, user, b"rootdir/x", os.O_WRONLY | os.O_CREAT) == errno.EACCES
    assert not (export_dir / "rootdir" / "x").exists()


def test_a_handshake_trickled_byte_by_byte_is_cut_off(export_dir: Path) -> None:
    """The handshake has its time as a whole, not per byte received."""
    hello = b"".join(bytes(x) for x in p.request(
        Command.HELLO, 0, version=p.VERSION, max_payload=1 << 20, keepalive_ms=1000, notices=0,
        client=b"x", key=b"default", nonce=bytes(32), session=os.urandom(16)).encode())  # fmt: skip
    with (
        stopping(start_server(export_dir, limits=Limits(handshake_timeout=0.8))) as srv,
        closing_all([socket.create_connection(srv.address) for _ in range(10)]) as socks,
    ):
        cut = 0
        for pos in range(8):  # a byte every 0.3 s: well within any per-receive time-out
            for s in socks:
                try:
                    s.send(hello[pos : pos + 1])
                except OSError:
                    cut += 1
            time.sleep(0.3)
        assert not srv.sessions and cut >= 10, (len(srv.sessions), cut)
        assert_server_healthy(srv)


def test_connections_that_never_prove_a_key_cannot_keep_a_client_out(export_dir: Path) -> None:
    limits = Limits(handshakes=5, handshake_timeout=30.0)
    with (
        stopping(start_server(export_dir, limits=limits)) as srv,
        closing_all([socket.create_connection(srv.address) for _ in range(20)]),
    ):
        time.sleep(0.3)
        assert len(srv._handshaking) <= 5
        started = time.monotonic()
        assert_server_healthy(srv)  # its handshake takes the oldest one's place
        assert time.monotonic() - started < 5


def test_a_read_only_key_takes_no_exclusive_lock(export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"x")
    with stopping(secured(export_dir, ClientPolicy(read_only=True))) as srv:
        with make_client([address_of(srv)]) as c:
            with pytest.raises(OSError) as e:
                c.lock("/f", 0, 0, exclusive=True, wait=False)
            assert e.value.errno == errno.EROFS  # it cannot open the file for writing
            with c.open("/f", "rb", buffering=0) as f:  # nor lock through a read handle
                conn, oid = f.handle()
                with pytest.raises(OSError) as e:
                    conn.call(Command.LOCK, oid=oid, offset=0, length=0, owner=1, type=1,
                              flags=0, pid=1)  # fmt: skip
                assert e.value.errno == errno.EBADF
            c.lock("/f", 0, 0, exclusive=False, wait=False)  # a shared one it may


def test_who_may_only_read_a_file_cannot_hold_up_its_writers(export_dir: Path) -> None:
    """POSIX: an exclusive record lock needs the file open for writing. A user with
    read permission only gets EACCES from the library, EBADF from a raw LOCK on the
    read handle; the file's writers are never held up by it."""
    (export_dir / "f").write_bytes(b"x")
    os.chmod(export_dir / "f", 0o644)
    os.chown(export_dir / "f", 54320, 54320)
    with stopping(secured(export_dir, ClientPolicy())) as srv:
        stranger, mine = Cred(54321, 54321, ()), Cred(54320, 54320, ())
        with (
            make_client([address_of(srv)], cred=stranger) as c,
            make_client([address_of(srv)], cred=mine) as owner,
        ):
            with pytest.raises(PermissionError):
                c.lock("/f", 0, 0, exclusive=True, wait=False)
            with c.open("/f", "rb", buffering=0) as f:
                conn, oid = f.handle()
                with pytest.raises(OSError) as e:
                    conn.call(Command.LOCK, oid=oid, offset=0, length=0, owner=1, type=1,
                              flags=0, pid=1)  # fmt: skip
                assert e.value.errno == errno.EBADF
            c.lock("/f", 0, 0, exclusive=False, wait=False)
            c.unlock("/f")
            owner.lock("/f", 0, 0, exclusive=True, wait=False)  # nothing in its way


def test_locks_held_per_connection_are_bounded(
    server: Server, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pohmelfs.server import locks

    monkeypatch.setattr(locks, "MAX_LOCKS", 50)
    (export_dir / "f").write_bytes(b"x")
    with make_client([address_of(server)]) as c:
        for i in range(50):
            c.lock("/f", 2 * i, 1, wait=False)  # disjoint ranges: one lock each
        with pytest.raises(OSError) as e:
            c.lock("/f", 1000, 1, wait=False)
        assert e.value.errno == errno.ENOLCK
        c.unlock("/f", 0, 2)
        c.lock("/f", 1000, 1, wait=False)  # one went: one may come
    with make_client([address_of(server)]) as other:  # the bound is per connection
        other.lock("/f", 5000, 1, wait=False)


def test_requests_waiting_on_the_whole_server_are_bounded(export_dir: Path) -> None:
    """Most waits hold a thread: the server as a whole takes only so many, whatever
    the number of connections (each is bounded on its own too)."""
    with stopping(start_server(export_dir, limits=Limits(waiting=3))) as srv:
        (export_dir / "f").write_bytes(b"x")
        holder = make_client([address_of(srv)])
        holder.lock("/f", 0, 0)
        me = Cred(os.geteuid(), os.getegid(), ())
        raws = [RawSession(address_of(srv), load_secret(SECRET_FILE)) for _ in range(5)]
        try:
            refused = 0
            for i, raw in enumerate(raws):
                opened = raw.call(p.request(Command.OPEN, 1, cred=me, path=b"f", flags=os.O_RDWR,
                                            mode=0, cache=2, fid=bytes(p.FID_SIZE)))  # fmt: skip
                raw.send(p.request(Command.LOCK, 2, oid=opened.oid, offset=0, length=1, owner=i,
                                   type=1, flags=p.LOCK_WAIT, pid=i))  # fmt: skip
                raw.send(p.request(Command.PING, 3))
                for _ in range(100):  # until the PING's reply: a refusal comes before it
                    m = raw.recv()
                    if m.cmd == Command.LOCK and not m.flags & p.FLAG_PENDING:
                        refused += m.status == errno.EAGAIN
                    if m.cmd == Command.PING:
                        break
            assert refused == 2 and srv.waiting.used == 3, (refused, srv.waiting.used)
            holder.unlock("/f", 0, 0)  # one of the three is granted: its wait ends
            deadline = time.monotonic() + 5
            while srv.waiting.used != 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.waiting.used == 2
        finally:
            for raw in raws:
                raw.close()
            holder.close()
        deadline = time.monotonic() + 5
        while srv.waiting.used and time.monotonic() < deadline:  # closed: every wait ended
            time.sleep(0.05)
        assert srv.waiting.used == 0


@pytest.mark.parametrize(("status", "raised"), [
    (errno.EACCES, errno.EACCES),
    (errno.EPROTONOSUPPORT, errno.EPROTONOSUPPORT),
    (errno.ENOENT, errno.ECONNREFUSED),  # not a refusal a server makes: not believed
])  # fmt: skip
def test_a_refused_handshake_is_one_clear_error(status: int, raised: int) -> None:
    """What a refusal says comes untagged, before the server proved anything: only the
    two refusals a server makes are passed on as such."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def refuse() -> None:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(5)
            head = sock.recv(p.HEADER_SIZE, socket.MSG_WAITALL)
            header = p.Header.unpack(head, 1 << 20)
            hello = p.decode_payload(header, sock.recv(header.payload_len, socket.MSG_WAITALL))
            sock.sendall(p.reply(hello, status=status, data=b"go away").to_bytes())

    t = threading.Thread(target=refuse, daemon=True)
    t.start()
    try:
        with pytest.raises(OSError) as e:
            make_client([f"127.0.0.1:{port}"], timeout=5)
        assert e.value.errno == raised, e.value
        assert "go away" in str(e.value)
    finally:
        t.join(5)
        listener.close()


def test_a_key_name_the_protocol_cannot_carry_is_an_oserror() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        with pytest.raises(OSError) as e:  # (a ProtocolError would escape Client's retry)
            make_client([address], timeout=1, key="k" * 5000)
    assert e.value.errno == errno.ECONNREFUSED and "handshake failed" in str(e.value), e.value
