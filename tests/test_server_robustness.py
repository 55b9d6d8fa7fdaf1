"""The server under load, hostile input, stalls, restarts and shutdown.

Every server here listens on 127.0.0.1 only; every loop is bounded in count
and time; every child process is stopped by PID.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import SECRET_FILE, ServerProcess, address_of, make_client, stop_process, wait_until
from pohmelfs import Client, Cred
from pohmelfs import protocol as p
from pohmelfs.protocol import Command, Flag, Header, Message
from pohmelfs.security import handshake as hs
from pohmelfs.security.keys import load_secret
from pohmelfs.server import dispatch
from pohmelfs.server.service import Server
from rawwire import RawSession, Refused, recv_exact, split_address

# --- helpers -------------------------------------------------------------------


def run_threads(fn: Callable[[int], None], n: int, timeout: float = 30.0) -> None:
    """Run fn(0..n-1) in n threads at once; re-raise the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait(timeout)
            fn(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} of {n} threads still running after {timeout} s"
    if errors:
        raise errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_connect(address: str) -> socket.socket:
    sock = socket.create_connection(split_address(address), timeout=5)
    sock.settimeout(5)
    return sock


# The sessions of raw sockets that did the handshake: their frames are tagged.
_SESSIONS: weakref.WeakKeyDictionary[socket.socket, RawSession] = weakref.WeakKeyDictionary()


def recv_raw_frame(sock: socket.socket) -> tuple[tuple[int, ...], bytes]:
    """One frame as raw header numbers plus payload (works for unknown commands);
    its tag checked if the socket did the handshake."""
    session = _SESSIONS.get(sock)
    if session is not None:
        return session.recv_frame()
    fields = p.HEADER.unpack(recv_exact(sock, p.HEADER_SIZE))
    return fields, recv_exact(sock, fields[5])


def recv_message(sock: socket.socket) -> Message:
    fields, payload = recv_raw_frame(sock)
    header = Header.unpack(p.HEADER.pack(*fields[:3], 0, *fields[4:]), p.U32_MAX)
    return p.decode_payload(header, payload)


def sealed(sock: socket.socket, frame: bytes) -> bytes:
    """A whole frame's bytes as this socket's session sends them (tagged, with keys)."""
    session = _SESSIONS.get(sock)
    return frame if session is None else session.seal(frame)


def send_frame(sock: socket.socket, frame: bytes) -> None:
    sock.sendall(sealed(sock, frame))


def send_msg(sock: socket.socket, msg: Message) -> None:
    send_frame(sock, msg.to_bytes())


def raw_frame(
    cmd: int,
    xid: int,
    payload: bytes = b"",
    *,
    magic: int = p.MAGIC,
    flags: int = 0,
    status: int = 0,
    plen: int | None = None,
    oid: int = 0,
    offset: int = 0,
    length: int = 0,
) -> bytes:
    n = len(payload) if plen is None else plen
    return p.HEADER.pack(magic, cmd, flags, 0, status, n, xid, oid, offset, length) + payload


def hello_request(xid: int = 0, version: int = p.VERSION, **fields: object) -> Message:
    base: dict[str, object] = dict(version=version, max_payload=p.DEFAULT_MAX_PAYLOAD,
                                   keepalive_ms=1000, notices=0, client=b"raw",
                                   key=b"default", nonce=hs.nonce(),
                                   session=os.urandom(p.SESSION_SIZE))  # fmt: skip
    base.update(fields)
    return p.request(Command.HELLO, xid, **base)


def hello(sock: socket.socket, version: int = p.VERSION) -> Message:
    """The handshake with the test key; returns the welcome (or the refusal)."""
    try:
        session = RawSession("", load_secret(SECRET_FILE), sock=sock, version=version)
    except Refused as e:
        return e.reply
    _SESSIONS[sock] = session
    return session.welcome


def expect_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the server closes the connection; return what it sent first."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(got)
        except TimeoutError:
            break
        if not chunk:
            return bytes(got)
        got += chunk
    raise AssertionError(f"server kept the connection open ({len(got)} bytes received)")


def ME() -> Cred:
    return Cred(os.geteuid(), os.getegid(), ())


def ping(sock: socket.socket, xid: int) -> None:
    """The connection still answers requests, in order."""
    send_msg(sock, p.request(Command.PING, xid))
    reply = recv_message(sock)
    assert (reply.cmd, reply.xid, reply.status, reply.is_reply) == (Command.PING, xid, 0, True)


def assert_server_healthy(address: str, proc: subprocess.Popen[str] | None = None) -> None:
    if proc is not None:
        assert proc.poll() is None, f"server process died with status {proc.returncode}"
    with make_client(address, timeout=5) as c:
        c.mkdir("/health-check")
        assert c.isdir("/health-check")
        c.rmdir("/health-check")


# --- many clients at once ----------------------------------------------------


def test_32_concurrent_clients_each_with_own_files(server: Server, export_dir: Path) -> None:
    address = address_of(server)
    iterations = 6

    def worker(t: int) -> None:
        rng = random.Random(t)
        with make_client(address, timeout=10, umask=0o022) as c:
            d = f"/client{t}"
            c.mkdir(d)
            for i in range(iterations):
                path = f"{d}/file{i}"
                data = rng.randbytes(rng.choice([0, 1, 4095, 70_000, 300_000]))
                with c.open(path, "wb") as f:
                    f.write(data)
                with c.open(path, "rb") as f:
                    assert f.read() == data, f"{path}: data read back differs"
                st = c.stat(path)
                assert st.st_size == len(data)
                assert (export_dir / d[1:] / f"file{i}").read_bytes() == data
                assert c.listdir(d) == [f"file{i}"]
                c.unlink(path)
                assert not c.exists(path)
                assert c.listdir(d) == []
            c.rmdir(d)

    run_threads(worker, 32, timeout=60)
    assert os.listdir(export_dir) == []


def test_32_threads_share_one_client_pipelined_pread(client: Client, export_dir: Path) -> None:
    data = random.Random(7).randbytes(3 << 20)
    (export_dir / "big").write_bytes(data)
    sizes = [1, 100, 4096, 65_535, 65_536, 200_000, 1_500_000]
    with client.open("/big", "rb", buffering=0) as f:

        def worker(t: int) -> None:
            rng = random.Random(1000 + t)
            for k in range(12):
                size = sizes[(t + k) % len(sizes)]
                off = rng.randrange(0, len(data) - size)
                got = f.pread(size, off)
                assert got == data[off : off + size], f"thread {t}: pread({size}, {off}) wrong"
            buf = bytearray(size)
            assert f.preadinto(buf, off) == size
            assert buf == data[off : off + size]

        run_threads(worker, 32, timeout=60)


def test_pread_past_end_of_file_returns_short(client: Client, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"0123456789")
    with client.open("/f", "rb", buffering=0) as f:
        assert f.pread(100, 5) == b"56789"
        assert f.pread(100, 10) == b""
        assert f.pread(100, 50) == b""


# --- a server that stops answering --------------------------------------------


def test_stopped_server_times_out_then_recovers(server_proc: ServerProcess) -> None:
    c = make_client(server_proc.address, timeout=1.0)
    try:
        c.stat("/")
        stop_process(server_proc.pid)
        try:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                c.stat("/")
            elapsed = time.monotonic() - t0
        finally:
            os.kill(server_proc.pid, signal.SIGCONT)
        assert info.value.errno == errno.ETIMEDOUT
        assert server_proc.address in str(info.value)
        assert 0.8 <= elapsed <= 3.0, f"timed out after {elapsed:.2f} s with timeout=1.0"
        # The late reply to the abandoned request must not confuse the next call.
        assert c.listdir("/") == []
        c.mkdir("/after")
        assert c.isdir("/after")
    finally:
        c.close()


def test_stopped_server_read_times_out_promptly(
    server_proc: ServerProcess, export_dir: Path
) -> None:
    """A multi-chunk read must also give up after about ``timeout`` seconds."""
    data = os.urandom(4 << 20)
    (export_dir / "f").write_bytes(data)
    c = make_client(server_proc.address, timeout=1.0)
    try:
        with c.open("/f", "rb", buffering=0) as f:
            assert f.pread(10, 0) == data[:10]
            stop_process(server_proc.pid)
            try:
                t0 = time.monotonic()
                with pytest.raises(TimeoutError):
                    f.pread(len(data), 0)
                elapsed = time.monotonic() - t0
            finally:
                os.kill(server_proc.pid, signal.SIGCONT)
            assert elapsed <= 3.0, f"a read with timeout=1.0 gave up only after {elapsed:.2f} s"
            assert f.pread(len(data), 0) == data
    finally:
        c.close()


# --- a lost connection is re-established ----------------------------------------


@pytest.fixture
def port_server(export_dir: Path) -> Iterator[Callable[[], ServerProcess]]:
    """Start servers on one fixed port, one after the other."""
    port = free_port()
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        sp = ServerProcess(export_dir, listen=f"127.0.0.1:{port}", retry_for=2)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        sp.stop()


def test_client_reconnects_after_server_restart(
    port_server: Callable[[], ServerProcess], export_dir: Path
) -> None:
    first = port_server()
    c = make_client(first.address, timeout=5)
    try:
        with c.open("/kept", "wb") as f:
            f.write(b"0123456789")
        raw = c.open("/kept", "r+b", buffering=0)
        assert raw.pread(4, 2) == b"2345"
        assert first.stop() == 0
        with pytest.raises(ConnectionError):
            c.stat("/kept")  # nobody listens: refused
        second = port_server()
        assert second.address == first.address
        try:
            c.stat("/kept")
        except ConnectionError as e:  # allowed once, but only as ECONNRESET-style loss
            assert e.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE)
        st = c.stat("/kept")
        assert st.st_size == 10
        assert c.listdir("/") == ["kept"]
        # The open file reopens itself by path on the new connection.
        assert raw.pread(3, 7) == b"789"
        assert raw.pwrite(b"AB", 0) == 2
        assert (export_dir / "kept").read_bytes() == b"AB23456789"
        raw.close()
    finally:
        c.close()


def test_open_file_survives_restart_without_other_calls(
    port_server: Callable[[], ServerProcess], export_dir: Path
) -> None:
    first = port_server()
    (export_dir / "f").write_bytes(b"hello world")
    c = make_client(first.address, timeout=5)
    try:
        with c.open("/f", "rb", buffering=0) as raw:
            assert raw.read(5) == b"hello"
            first.stop()
            port_server()
            assert raw.read() == b" world"
    finally:
        c.close()


# --- malformed input ----------------------------------------------------------------


def _garbage_before_hello(sock: socket.socket) -> None:
    sock.sendall(random.Random(1).randbytes(300))
    expect_closed(sock)


def _garbage_after_hello(sock: socket.socket) -> None:
    assert hello(sock).status == 0
    sock.sendall(b"\xde\xad\xbe\xef" * 40)
    expect_closed(sock)


def _bad_magic(sock: socket.socket) -> None:
    assert hello(sock).status == 0
    sock.sendall(raw_frame(Command.PING, 5, magic=0x1234))
    expect_closed(sock)


def _oversized_payload(sock: socket.socket) -> None:
    assert hello(sock).status == 0
    # Only the header is sent: the server must refuse it without waiting for 1 GiB.
    sock.sendall(raw_frame(Command.WRITE, 5, plen=1 << 30))
    expect_closed(sock)


def _oversized_hello(sock: socket.socket) -> None:
    sock.sendall(raw_frame(Command.HELLO, 0, plen=p.DEFAULT_MAX_PAYLOAD + 1))
    expect_closed(sock)


def _half_frame_then_close(sock: socket.socket) -> None:
    assert hello(sock).status == 0
    frame = p.request(Command.LOOKUP, 9, cred=ME(), path=b"x").to_bytes()
    sock.sendall(frame[: p.HEADER_SIZE + 3])
    sock.close()


def _half_header_then_close(sock: socket.socket) -> None:
    assert hello(sock).status == 0
    sock.sendall(raw_frame(Command.PING, 9)[:20])
    sock.close()


def _first_frame_not_hello(sock: socket.socket) -> None:
    sock.sendall(p.request(Command.PING, 1).to_bytes())
    got = expect_closed(sock)
    # The server may explain itself, but it must not serve the request.
    if got:
        fields = p.HEADER.unpack_from(got)
        assert fields[4] != 0, "the server answered a request sent before HELLO"


def _first_frame_lookup(sock: socket.socket) -> None:
    sock.sendall(p.request(Command.LOOKUP, 1, cred=ME(), path=b"").to_bytes())
    got = expect_closed(sock)
    if got:
        assert p.HEADER.unpack_from(got)[4] != 0, "the server answered before HELLO"


def _bad_tag(sock: socket.socket) -> None:
    assert hello(sock).status == 0
    hdr = bytearray(raw_frame(Command.PING, 3))
    struct.pack_into("!H", hdr, 6, p.TAG_SIZE)
    sock.sendall(bytes(hdr) + b"\0" * p.TAG_SIZE)  # a tag, but not the frame's
    expect_closed(sock)


def _untagged_after_hello(sock: socket.socket) -> None:
    assert hello(sock).status == 0
    sock.sendall(raw_frame(Command.PING, 3))
    expect_closed(sock)


MALFORMED = {
    "garbage-before-hello": _garbage_before_hello,
    "garbage-after-hello": _garbage_after_hello,
    "bad-magic": _bad_magic,
    "oversized-payload": _oversized_payload,
    "oversized-hello": _oversized_hello,
    "half-frame-then-close": _half_frame_then_close,
    "half-header-then-close": _half_header_then_close,
    "first-frame-not-hello": _first_frame_not_hello,
    "first-frame-lookup": _first_frame_lookup,
    "bad-tag": _bad_tag,
    "untagged-after-hello": _untagged_after_hello,
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_connection_is_dropped_server_survives(
    server_proc: ServerProcess, case: str
) -> None:
    with raw_connect(server_proc.address) as sock:
        MALFORMED[case](sock)
    assert_server_healthy(server_proc.address, server_proc.proc)
    # A second round on the same server: nothing was left broken by the first.
    with raw_connect(server_proc.address) as sock:
        MALFORMED[case](sock)
    assert_server_healthy(server_proc.address, server_proc.proc)
    assert server_proc.stop() == 0
    err = server_proc.log.read_text()
    assert "Traceback" not in err, err


BAD_FRAMES = {
    "unknown-command": raw_frame(999, 77, b"hello"),
    "unknown-command-empty": raw_frame(0, 77),
    "unknown-flags": raw_frame(Command.PING, 77, flags=0x80),
    "status-on-request": raw_frame(Command.PING, 77, status=5),
    "more-on-request": raw_frame(Command.PING, 77, flags=int(Flag.MORE)),
    "reply-and-notify": raw_frame(
        Command.PING, 77, flags=int(Flag.REPLY | Flag.NOTIFY), payload=b"xyz"
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frame_gets_eproto_for_its_xid(server_proc: ServerProcess, case: str) -> None:
    with raw_connect(server_proc.address) as sock:
        assert hello(sock).status == 0
        send_frame(sock, BAD_FRAMES[case])
        fields, payload = recv_raw_frame(sock)
        magic, cmd, flags, _tag, status, _plen, xid = fields[:7]
        sent = p.HEADER.unpack_from(BAD_FRAMES[case])
        assert magic == p.MAGIC
        assert flags & Flag.REPLY
        assert xid == 77
        assert cmd == sent[1]
        assert status == errno.EPROTO
        assert payload, "the error reply should say what was wrong"
        ping(sock, 78)
        ping(sock, 79)
    assert_server_healthy(server_proc.address, server_proc.proc)


def _lookup_payload(path: bytes) -> bytes:
    return p.request(Command.LOOKUP, 1, cred=ME(), path=path).to_bytes()[p.HEADER_SIZE :]


UNDECODABLE = {
    "truncated-cred": (Command.LOOKUP, b"\x00\x00"),
    "empty-lookup": (Command.LOOKUP, b""),
    "trailing-bytes": (Command.LOOKUP, _lookup_payload(b"a") + b"junk"),
    "name-length-past-end": (
        Command.LOOKUP,
        struct.pack("!IIH", 0, 0, 0) + struct.pack("!I", 500) + b"ab",
    ),
    "nul-in-name": (Command.LOOKUP, struct.pack("!IIH", 0, 0, 0) + struct.pack("!I", 3) + b"a\0b"),
    "too-many-groups": (Command.STATFS, struct.pack("!IIH", 0, 0, 5000)),
    "ping-with-payload": (Command.PING, b"x"),
    "open-missing-mode": (
        Command.OPEN,
        struct.pack("!IIH", 0, 0, 0) + struct.pack("!I", 1) + b"a" + struct.pack("!I", 0),
    ),
}


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_undecodable_payload_gets_eproto_and_connection_stays(
    server_proc: ServerProcess, case: str
) -> None:
    cmd, payload = UNDECODABLE[case]
    with raw_connect(server_proc.address) as sock:
        assert hello(sock).status == 0
        send_frame(sock, raw_frame(cmd, 4242, payload))
        reply = recv_message(sock)
        assert reply.is_reply
        assert (reply.cmd, reply.xid) == (cmd, 4242)
        assert reply.status == errno.EPROTO
        ping(sock, 4243)
        # A well-formed request on the same connection is served normally.
        send_msg(sock, p.request(Command.LOOKUP, 4244, cred=ME(), path=b""))
        ok = recv_message(sock)
        assert (ok.xid, ok.status) == (4244, 0)
    assert_server_healthy(server_proc.address, server_proc.proc)


def test_requests_that_are_not_requests_here_get_eproto_or_einval(
    server_proc: ServerProcess, export_dir: Path
) -> None:
    """A second HELLO, a REVOKE sent as a request (it is only ever an answer), and
    SETXATTR flags a local setxattr would choke on: each one error reply naming its
    xid, no internal error, and the connection goes on."""
    (export_dir / "f").write_bytes(b"")
    with raw_connect(server_proc.address) as sock:
        assert hello(sock).status == 0
        again = hello_request(61, client=b"again")
        send_msg(sock, again)
        send_msg(sock, p.request(Command.REVOKE, 62, oid=1))
        for flags in (1 << 31, 4, 0xFFFFFFFF):
            send_msg(sock, p.request(Command.SETXATTR, 63, cred=ME(), path=b"f",
                                     name=b"user.x", value=b"v", flags=flags))  # fmt: skip
        got = [recv_message(sock) for _ in range(5)]
        assert [(r.xid, errno.errorcode[r.status]) for r in got] == [
            (61, "EPROTO"), (62, "EPROTO"), (63, "EINVAL"), (63, "EINVAL"), (63, "EINVAL")
        ]  # fmt: skip
        assert not any(b"internal" in bytes(r["data"]) for r in got)
        ping(sock, 64)
    assert "Traceback" not in server_proc.log.read_text()
    assert os.listxattr(export_dir / "f") == []


def test_reply_frame_from_client_is_ignored(server_proc: ServerProcess) -> None:
    with raw_connect(server_proc.address) as sock:
        assert hello(sock).status == 0
        send_frame(sock, raw_frame(Command.PING, 50, flags=int(Flag.REPLY), payload=b""))
        send_frame(sock, raw_frame(Command.LOOKUP, 51, flags=int(Flag.REPLY), payload=b"12345"))
        ping(sock, 52)  # the next frame back answers the PING: nothing was sent for 50/51
    assert_server_healthy(server_proc.address, server_proc.proc)


def test_hello_with_wrong_version_gets_eprotonosupport(server_proc: ServerProcess) -> None:
    for version in (0, 1, p.VERSION + 1, 0xFFFFFFFF):
        with raw_connect(server_proc.address) as sock:
            reply = hello(sock, version=version)
            assert reply.is_reply
            assert reply.cmd == Command.HELLO
            assert reply.xid == 0
            assert reply.status == errno.EPROTONOSUPPORT
            assert str(version).encode() in bytes(reply["data"])
            expect_closed(sock)
    assert_server_healthy(server_proc.address, server_proc.proc)


def test_hello_xid_is_echoed(server_proc: ServerProcess) -> None:
    with raw_connect(server_proc.address) as sock:
        send_msg(sock, hello_request(31337))
        reply = recv_message(sock)
        assert (reply.cmd, reply.xid, reply.status) == (Command.HELLO, 31337, 0)
        assert reply["version"] == p.VERSION and reply["auth"] == p.AUTH_SECRET
        assert reply["nonce"] != bytes(p.NONCE_SIZE)


# --- a WRITE cut in half is never applied ------------------------------------------


def _open_raw(sock: socket.socket, path: bytes, xid: int = 1) -> int:
    send_msg(
        sock,
        p.request(
            Command.OPEN,
            xid,
            cred=ME(),
            path=path,
            flags=os.O_RDWR,
            mode=0,
            cache=2,
            fid=bytes(p.FID_SIZE),
        ),
    )
    reply = recv_message(sock)
    assert reply.status == 0, bytes(reply["data"])
    return reply.oid


@pytest.mark.parametrize("size", [1000, 2 << 20], ids=["small", "large"])
def test_half_write_frame_is_not_applied(server: Server, export_dir: Path, size: int) -> None:
    original = b"A" * size
    target = export_dir / "f"
    target.write_bytes(original)
    address = address_of(server)
    with raw_connect(address) as sock:
        assert hello(sock).status == 0
        oid = _open_raw(sock, b"f")
        # A whole WRITE is applied (the raw path works) ...
        send_msg(sock, p.request(Command.WRITE, 2, oid=oid, offset=0, data=b"Z"))
        reply = recv_message(sock)
        assert (reply.status, reply.length) == (0, 1)
        original = b"Z" + original[1:]
        assert target.read_bytes() == original
        # ... but one whose payload never fully arrives is not.
        frame = p.request(Command.WRITE, 3, oid=oid, offset=0, data=b"B" * size).to_bytes()
        sock.sendall(sealed(sock, frame)[: p.HEADER_SIZE + size // 2])
        time.sleep(0.05)
    wait_until(lambda: not server.sessions, what="the server to end the session")
    assert target.read_bytes() == original
    assert_server_healthy(address)


def test_half_write_then_close_in_child_server(
    server_proc: ServerProcess, export_dir: Path
) -> None:
    target = export_dir / "g"
    target.write_bytes(b"x" * 4096)
    with raw_connect(server_proc.address) as sock:
        assert hello(sock).status == 0
        oid = _open_raw(sock, b"g")
        frame = p.request(Command.WRITE, 2, oid=oid, offset=100, data=b"Y" * 3000).to_bytes()
        sock.sendall(sealed(sock, frame)[: len(frame) - 1])  # all but the last byte
    # Once the server closed its handle on g, the session is over.
    fd_dir = Path(f"/proc/{server_proc.pid}/fd")

    def g_closed() -> bool:
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) == str(target):
                    return False
            except OSError:
                continue
        return True

    wait_until(g_closed, what="the server to close the file")
    assert target.read_bytes() == b"x" * 4096
    assert_server_healthy(server_proc.address, server_proc.proc)


# --- shutdown ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shutdown_with_idle_clients(
    server_proc: ServerProcess, export_dir: Path, sig: signal.Signals
) -> None:
    (export_dir / "f").write_bytes(b"data")
    clients = [make_client(server_proc.address, timeout=5) for _ in range(4)]
    raw = socket.create_connection(split_address(server_proc.address), timeout=5)
    half = socket.create_connection(split_address(server_proc.address), timeout=5)
    try:
        for c in clients:
            assert c.listdir("/") == ["f"]
        f = clients[0].open("/f", "rb", buffering=0)  # a handle open on the server
        assert hello(half).status == 0
        half.sendall(b"PO\x00")  # a connection stuck in the middle of a header
        # Idle means settled: every connection has its own running server thread
        # (main + accept + 6 sessions + the pool worker that ran READDIR).
        # Signals racing new connections are tested separately below.
        tasks = Path(f"/proc/{server_proc.pid}/task")
        wait_until(lambda: len(list(tasks.iterdir())) >= 9, what="all sessions to start")
        t0 = time.monotonic()
        os.kill(server_proc.pid, sig)
        try:
            status = server_proc.proc.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running 5 s after {sig.name}")
        elapsed = time.monotonic() - t0
        assert status == 0, server_proc.log.read_text()
        assert elapsed < 5
        with pytest.raises(ConnectionError):
            clients[1].stat("/f")
        f.close()
    finally:
        raw.close()
        half.close()
        for c in clients:
            c.close()
    err = server_proc.log.read_text()
    assert "Traceback" not in err, err


def test_sigterm_right_after_a_burst_of_connections(export_dir: Path) -> None:
    """SIGTERM while connections are still being accepted: exit 0, promptly, no traceback."""
    for _ in range(3):
        sp = ServerProcess(export_dir)
        socks: list[socket.socket] = []
        try:
            socks = [
                socket.create_connection(split_address(sp.address), timeout=5) for _ in range(64)
            ]
            os.kill(sp.pid, signal.SIGTERM)
            try:
                status = sp.proc.wait(5)
            except subprocess.TimeoutExpired:
                pytest.fail("server ignored SIGTERM: still running 5 s later")
            err = sp.log.read_text()
            assert status == 0, err
            assert "Traceback" not in err, err
        finally:
            for s in socks:
                s.close()
            sp.stop()


def test_sigterm_while_requests_in_flight(server_proc: ServerProcess, export_dir: Path) -> None:
    """Shutdown lets requests already running finish; the process still exits 0."""
    (export_dir / "f").write_bytes(os.urandom(1 << 20))
    c = make_client(server_proc.address, timeout=5)
    stop = threading.Event()
    outcomes: list[str] = []

    def reader(_: int) -> None:
        for _ in range(500):
            if stop.is_set():
                return
            try:
                c.stat("/f")
                outcomes.append("ok")
            except ConnectionError:
                outcomes.append("lost")
                return

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(outcomes) > 20, what="requests to flow")
        os.kill(server_proc.pid, signal.SIGTERM)
        status = server_proc.proc.wait(5)
        assert status == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        c.close()
    assert not any(t.is_alive() for t in threads)


# --- pipelining -------------------------------------------------------------------------


def test_pipelined_requests_from_many_threads_match_by_xid(
    client: Client, export_dir: Path
) -> None:
    names = [f"s{n}" for n in range(40)]
    for n, name in enumerate(names):
        (export_dir / name).write_bytes(b"x" * n)
        (export_dir / f"d{n}").mkdir()
        for k in range(n % 5):
            (export_dir / f"d{n}" / f"e{k}").touch()
    conn = client.connection()
    peak = 0
    lock = threading.Lock()

    def worker(t: int) -> None:
        nonlocal peak
        txs = []
        for k in range(30):
            n = (t * 7 + k) % len(names)
            if k % 10 == 9:
                tx = conn.start(Command.READDIR, cred=client.cred, path=f"d{n}".encode())
            else:
                tx = conn.start(Command.LOOKUP, cred=client.cred, path=names[n].encode())
            txs.append((k, n, tx))
        with lock:
            peak = max(peak, conn.in_flight())
        for k, n, tx in reversed(txs):  # wait in the opposite order of sending
            if k % 10 == 9:
                frames = conn.stream(tx)
                got = sorted(e.name for fr in frames for e in fr["entries"])
                assert got == [b"e%d" % i for i in range(n % 5)]
            else:
                reply = conn.wait(tx)
                assert reply.xid == tx.xid
                assert reply["attr"].size == n

    # 20 threads with 3 listings each: within the server's bound on one connection's
    # slow requests at once (dispatch.MAX_SLOW, 64), which it refuses beyond.
    assert 20 * 3 <= dispatch.MAX_SLOW
    run_threads(worker, 20, timeout=30)
    assert peak > 1, "requests were never in flight together"
    assert not conn.in_flight()


def test_raw_pipelined_burst_replies_match_xids(
    server_proc: ServerProcess, export_dir: Path
) -> None:
    for n in range(50):
        (export_dir / f"f{n}").write_bytes(b"y" * n)
    (export_dir / "dir").mkdir()
    for k in range(1200):  # more than one READDIR batch: a streamed reply
        (export_dir / "dir" / f"{k:05}").touch()
    msgs: list[Message] = []
    expect: dict[int, tuple[Command, int]] = {}
    for xid in range(1, 301):
        n = xid % 50
        if xid % 25 == 0:
            msgs.append(p.request(Command.READDIR, xid, cred=ME(), path=b"dir"))
            expect[xid] = (Command.READDIR, 1200)
        elif xid % 7 == 0:
            msgs.append(p.request(Command.PING, xid))
            expect[xid] = (Command.PING, 0)
        else:
            msgs.append(p.request(Command.LOOKUP, xid, cred=ME(), path=b"f%d" % n))
            expect[xid] = (Command.LOOKUP, n)
    with raw_connect(server_proc.address) as sock:
        assert hello(sock).status == 0
        sock.sendall(b"".join(sealed(sock, m.to_bytes()) for m in msgs))  # all in flight at once
        entries: dict[int, int] = {}
        done: set[int] = set()
        for _ in range(10_000):
            if len(done) == len(expect):
                break
            r = recv_message(sock)
            assert r.is_reply and r.status == 0
            assert r.xid in expect and r.xid not in done, f"unexpected reply xid {r.xid}"
            cmd, value = expect[r.xid]
            assert r.cmd == cmd
            if cmd == Command.READDIR:
                entries[r.xid] = entries.get(r.xid, 0) + len(r["entries"])
                if r.flags & Flag.MORE:
                    continue
                assert entries[r.xid] == value
            elif cmd == Command.LOOKUP:
                assert r["attr"].size == value
            done.add(r.xid)
        assert done == set(expect)
