"""Fuzz a live server with random and mutated frames, before and after a handshake.

    python tools/fuzz_server.py [--frames 100000] [--seed 1]

Starts ``pohmelfs serve`` (a root-squashing key) on a scratch export holding a
root-only directory, then sends FRAMES frames: a quarter on fresh connections
before any handshake, the rest on authenticated sessions, each one random bytes,
a random header with a random payload, or a valid request with bytes changed;
tagged when the session has keys (so the server decodes them) or not (so it must
drop the connection). Every 1,000 frames a well-behaved client must still work.
At the end it prints the frames sent, the connections the server dropped, the
server's peak and final RSS, and checks that the root-only directory is intact.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pohmelfs import Client, Cred
from pohmelfs import protocol as p
from pohmelfs.protocol import Command
from pohmelfs.security.keys import load_secret, write_secret
from rawwire import RawSession

ME = Cred(1000, 1000, ())


def valid_request(rng: random.Random, xid: int) -> p.Message:
    path = rng.choice([b"", b"f", b"d/x", b"guarded/secret", b"../up", b"a" * 300])
    choices = [
        lambda: p.request(Command.LOOKUP, xid, cred=ME, path=path),
        lambda: p.request(Command.READDIR, xid, cred=ME, path=path),
        lambda: p.request(
            Command.OPEN,
            xid,
            cred=Cred(0, 0, ()),
            path=path,
            flags=rng.choice([0, 2, 0o102, 0o1102]),
            mode=0o4777,
            cache=2,
            fid=bytes(16),
        ),
        lambda: p.request(
            Command.READ,
            xid,
            oid=rng.randrange(8),
            offset=rng.randrange(1 << 40),
            length=rng.randrange(1 << 24),
        ),
        lambda: p.request(
            Command.WRITE,
            xid,
            oid=rng.randrange(8),
            offset=rng.randrange(1 << 20),
            data=rng.randbytes(rng.randrange(64)),
        ),
        lambda: p.request(Command.MKDIR, xid, cred=ME, path=path, mode=0o777),
        lambda: p.request(
            Command.SETXATTR, xid, cred=ME, path=path, name=b"security.x", value=b"v", flags=0
        ),
        lambda: p.request(
            Command.LOCK, xid, oid=rng.randrange(8), owner=1, type=rng.randrange(4), flags=0, pid=1
        ),
        lambda: p.request(Command.CHMOD, xid, cred=ME, path=path, mode=0o6777),
        lambda: p.request(Command.RMTREE, xid, cred=ME, path=path),
    ]
    return rng.choice(choices)()


def fuzz_frame(rng: random.Random, xid: int) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 120))
    if kind == 1:
        payload = rng.randbytes(rng.randrange(0, 200))
        return p.HEADER.pack(p.MAGIC, rng.randrange(45), rng.choice([0, 1, 2, 4, 8, 16, 255]), 0,
                             rng.choice([0, 0, 5]), len(payload), xid, rng.randrange(10),
                             rng.randrange(1 << 63), rng.randrange(1 << 63)) + payload  # fmt: skip
    frame = bytearray(valid_request(rng, xid).to_bytes())
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(p.HEADER_SIZE if rng.random() < 0.7 else 0, max(len(frame), 49))
        if pos < len(frame):
            frame[pos] = rng.randrange(256)
    return bytes(frame)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="pohmelfs-fuzz-"))
    export = work / "export"
    export.mkdir(mode=0o777)
    os.chmod(export, 0o777)
    guarded = export / "guarded"
    guarded.mkdir(mode=0o700)
    (guarded / "secret").write_bytes(b"root only")
    secret_file = str(work / "secret")
    write_secret(secret_file)
    secret = load_secret(secret_file)
    proc = subprocess.Popen([sys.executable, "-m", "pohmelfs.cli", "serve", str(export),
                             "--listen", "127.0.0.1:0", "--secret-file", secret_file],
                            stdout=subprocess.PIPE, stderr=open(work / "server.log", "w"),
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    address = re.search(r" on ([\d.]+:\d+)", proc.stdout.readline()).group(1)  # type: ignore[union-attr]
    host, port = address.rsplit(":", 1)
    start_rss, peak, dropped, sent = rss_kib(proc.pid), 0, 0, 0
    started = time.monotonic()
    session: RawSession | None = None
    try:
        for i in range(args.frames):
            xid = i + 10
            frame = fuzz_frame(rng, xid)
            try:
                if i % 4 == 0:  # before any handshake
                    with socket.create_connection((host, int(port)), timeout=2) as s:
                        s.sendall(frame)
                    sent += 1
                    continue
                if session is None:
                    session = RawSession(address, secret, timeout=2)
                tagged = rng.random() < 0.9
                session.send_raw(session.seal(frame) if tagged else frame)
                sent += 1
                if i % 50 == 0:  # drain what came back, so the server never blocks on us
                    session.sock.settimeout(0.01)
                    try:
                        while session.sock.recv(1 << 20):
                            pass
                    except OSError:
                        pass
                    session.sock.settimeout(2)
            except OSError:
                dropped += 1
                if session is not None:
                    session.close()
                session = None
            if i % 1000 == 999:
                peak = max(peak, rss_kib(proc.pid))
                assert proc.poll() is None, "the server died"
                with Client([address], secret_file=secret_file, timeout=10) as c:
                    with c.open(f"/health-{i}", "wb") as f:
                        f.write(b"ok")
                    c.remove(f"/health-{i}")
        if session is not None:
            session.close()
        time.sleep(2)
        final = rss_kib(proc.pid)
        intact = sorted(os.listdir(guarded)) == ["secret"] and (
            (guarded / "secret").read_bytes() == b"root only"
        )
        err = (work / "server.log").read_text()
        print(f"pohmelfs fuzz ({time.strftime('%Y-%m-%d')}): {sent} frames in "
              f"{time.monotonic() - started:.0f} s, seed {args.seed}; connections dropped by the "
              f"server: {dropped}")  # fmt: skip
        print(f"server RSS: {start_rss / 1024:.1f} MiB at start, {peak / 1024:.1f} MiB peak, "
              f"{final / 1024:.1f} MiB after; alive: {proc.poll() is None}; root-only directory "
              f"intact: {intact}; tracebacks in its log: {err.count('Traceback')}")  # fmt: skip
        return 0 if intact and proc.poll() is None and "Traceback" not in err else 1
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
