"""What security costs: the library client against servers that differ only in it.

Prints, in one run, for a server with no authentication (``--insecure``, the
plain baseline) and one with a shared secret (every frame tagged):
  (a) sequential read of a SIZE file into one buffer (MiB/s, best of three)
  (b) sequential write of SIZE bytes in 8 MiB writes (MiB/s, best of three)
  (c) connection set-up: connect and handshake (ms, median of 50)
and one with mutual TLS (encrypted), each secure figure as a ratio of the plain one
(targets: >= 0.70 with tags, >= 0.60 with TLS).

Usage: python bench/bench_security.py [--size-mib 512]
The servers run as separate processes, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench_core import recv_all_into
from benchkeys import SECRET_FILE
from pohmelfs import Client
from pohmelfs.security.tls import make_certificates

MiB = 1 << 20
CHUNK = 8 << 20


def start_server(root: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "pohmelfs.cli", "serve", root, "--listen",
                             "127.0.0.1:0", *args], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    m = re.search(r" on ([\d.]+:\d+)", proc.stdout.readline())
    if not m:
        proc.kill()
        raise SystemExit(f"server {args} did not start")
    return proc, m.group(1)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gmac_rate() -> float:
    """Bytes/s one thread tags with AES-GMAC (the tag of large frames), 64 MiB."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    data = memoryview(os.urandom(64 * MiB))
    start = time.perf_counter()
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.GCM(bytes(12))).encryptor()
    for off in range(0, len(data), 256 << 10):
        enc.authenticate_additional_data(data[off : off + (256 << 10)])
    enc.finalize()
    return len(data) / (time.perf_counter() - start)


TLS_SENDER = r"""
import os, socket, ssl, sys
from pohmelfs.security.tls import server_context
pki, path = sys.argv[1], sys.argv[2]
ctx = server_context(f"{pki}/server.crt", f"{pki}/server.key", f"{pki}/ca.crt")
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
tls = ctx.wrap_socket(conn, server_side=True)
buf = memoryview(bytearray(8 << 20))
with open(path, "rb", buffering=0) as f:
    while n := f.readinto(buf):
        tls.sendall(buf[:n])
tls.close()
"""


def tls_ceiling(pki: str, path: str, buf: memoryview) -> float:
    """Plain Python TLS sockets moving the same file the same way: one process reads
    it in 8 MiB pieces and sends them, the other receives into one buffer."""
    from pohmelfs.security.tls import client_context

    proc = subprocess.Popen([sys.executable, "-c", TLS_SENDER, pki, path],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    ctx = client_context(f"{pki}/client-bench.crt", f"{pki}/client-bench.key", f"{pki}/ca.crt")
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                           server_hostname="localhost")  # fmt: skip
    start = time.perf_counter()
    got = recv_all_into(sock, buf)
    elapsed = time.perf_counter() - start
    sock.close()
    proc.wait(30)
    return got / elapsed


def read_rate(client: Client, buf: memoryview) -> float:
    with client.open("/big", "rb", buffering=0) as f:
        start = time.perf_counter()
        got = 0
        while got < len(buf):
            n = f.readinto(buf[got : got + CHUNK])
            if not n:
                break
            got += n
        elapsed = time.perf_counter() - start
    assert got == len(buf)
    return got / elapsed


def write_rate(client: Client, data: memoryview) -> float:
    with client.open("/written", "wb", buffering=0) as f:
        start = time.perf_counter()
        for off in range(0, len(data), CHUNK):
            f.write(data[off : off + CHUNK])
        f.fsync()  # acknowledged by the server: not merely sent
        elapsed = time.perf_counter() - start
    return len(data) / elapsed


def setup_ms(address: str, **kw: str) -> float:
    times = []
    for _ in range(50):
        start = time.perf_counter()
        c = Client([address], **kw)
        times.append(time.perf_counter() - start)
        c.close()
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    args = ap.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="pohmelfs-bench-sec-",
                                     dir=os.environ.get("TMPDIR")) as root:  # fmt: skip
        os.chmod(root, 0o777)  # the insecure server acts as nobody
        data = memoryview(os.urandom(size))
        with open(os.path.join(root, "big"), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(root, "big"), 0o644)
        buf = memoryview(bytearray(size))
        for i in range(0, size, 4096):
            buf[i] = 1
        pki = os.path.join(root, ".pki")
        make_certificates(pki, [], ["bench"])
        tls_files = {"tls_cert": f"{pki}/client-bench.crt", "tls_key": f"{pki}/client-bench.key",
                     "tls_ca": f"{pki}/ca.crt", "tls_server_name": "localhost"}  # fmt: skip
        setups = {
            "plain": ((), {}),
            "secret": (("--secret-file", SECRET_FILE), {"secret_file": SECRET_FILE}),
            "tls": (("--tls-cert", f"{pki}/server.crt", "--tls-key", f"{pki}/server.key",
                     "--tls-ca", f"{pki}/ca.crt"), tls_files),
        }  # fmt: skip
        servers = {name: start_server(root, *(a or ("--insecure",))) for name, (a, _) in
                   setups.items()}  # fmt: skip
        results: dict[str, dict[str, list[float]]] = {n: {"read": [], "write": []}
                                                      for n in setups}  # fmt: skip
        setup_times: dict[str, float] = {}
        try:
            clients = {n: Client([servers[n][1]], timeout=30, **kw)
                       for n, (_, kw) in setups.items()}  # fmt: skip
            server_cpu: dict[str, list[float]] = {n: [] for n in setups}
            client_cpu: dict[str, list[float]] = {n: [] for n in setups}
            for _ in range(3):  # interleaved: the machine's state drifts alike for all
                for name, c in clients.items():
                    before = cpu_seconds(servers[name][0].pid)
                    mine = resource.getrusage(resource.RUSAGE_SELF)
                    results[name]["read"].append(read_rate(c, buf))
                    server_cpu[name].append(cpu_seconds(servers[name][0].pid) - before)
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    client_cpu[name].append(after.ru_utime + after.ru_stime
                                            - mine.ru_utime - mine.ru_stime)  # fmt: skip
                    results[name]["write"].append(write_rate(c, data))
            for name, (_, kw) in setups.items():
                setup_times[name] = setup_ms(servers[name][1], **kw)
            tls_ceil = max(tls_ceiling(pki, os.path.join(root, "big"), buf) for _ in range(3))
            for c in clients.values():
                c.close()
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
    print(f"pohmelfs security benchmark  ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, {args.size_mib} MiB)")  # fmt: skip
    best = {n: {k: max(v) for k, v in r.items()} for n, r in results.items()}
    for kind in ("read", "write"):
        for name in setups:
            runs = ", ".join(f"{r / MiB:.0f}" for r in results[name][kind])
            ratio = best[name][kind] / best["plain"][kind]
            print(
                f"({'a' if kind == 'read' else 'b'}) sequential {kind:5} {name:7}: "
                f"{best[name][kind] / MiB:7.0f} MiB/s  ratio {ratio:4.2f}  (runs: {runs})"
            )
    for name in setups:
        print(f"(c) connection set-up  {name:7}: {setup_times[name]:7.2f} ms")
    # The ceiling of a tagged read: what a plain read costs per MiB, plus tagging and
    # checking that MiB once each, within the server's own chain (one session is served
    # by one thread: spreading its READs over two measured slower, docs/benchmarks.md)
    # and within the cores both processes share.
    gmac = gmac_rate()
    server_ms = min(server_cpu["plain"]) / args.size_mib * 1e3
    client_ms = min(client_cpu["plain"]) / args.size_mib * 1e3
    gmac_ms = MiB / gmac * 1e3
    cores = os.cpu_count() or 1
    chain = 1e3 / (server_ms + gmac_ms)
    shared = cores * 1e3 / (server_ms + client_ms + 2 * gmac_ms)
    ceiling = min(chain, shared)
    print(f"(d) AES-GMAC, one thread: {gmac / MiB:.0f} MiB/s ({gmac_ms:.2f} ms/MiB). A plain "
          f"read cost {server_ms:.2f} ms of server CPU and {client_ms:.2f} ms of client CPU "
          f"per MiB; so a tagged read can go at most {chain:.0f} MiB/s (the server's chain) "
          f"and {shared:.0f} MiB/s ({cores} cores for both): {ceiling:.0f} MiB/s = "
          f"{ceiling * MiB / best['plain']['read']:.2f} of plain; pohmelfs with tags reads "
          f"at {best['secret']['read'] / MiB / ceiling:.2f} of it")  # fmt: skip
    print(f"(e) ceiling for TLS, plain Python TLS sockets moving the file: {tls_ceil / MiB:7.0f} "
          f"MiB/s = {tls_ceil / best['plain']['read']:4.2f} of plain; pohmelfs over TLS reads at "
          f"{best['tls']['read'] / tls_ceil:4.2f} of it")  # fmt: skip
    print("targets: secret >= 0.70 and tls >= 0.60 of plain for (a) and (b)")


if __name__ == "__main__":
    main()
