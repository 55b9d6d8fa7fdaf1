"""What security costs: the library client against servers that differ only in it.

Prints, in one run, for a server with no authentication (``--insecure``, the
plain baseline) and one with a shared secret (every frame tagged):
  (a) sequential read of a SIZE file into one buffer (MiB/s, best of three)
  (b) sequential write of SIZE bytes in 8 MiB writes (MiB/s, best of three)
  (c) connection set-up: connect and handshake (ms, median of 50)
and each secure figure as a ratio of the plain one (targets: >= 0.70 with tags).

Usage: python bench/bench_security.py [--size-mib 512]
The servers run as separate processes, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchkeys import SECRET_FILE
from pohmelfs import Client

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
        setups = {"plain": ((), {}), "secret": (("--secret-file", SECRET_FILE),
                                                {"secret_file": SECRET_FILE})}  # fmt: skip
        servers = {name: start_server(root, *(a or ("--insecure",))) for name, (a, _) in
                   setups.items()}  # fmt: skip
        results: dict[str, dict[str, list[float]]] = {n: {"read": [], "write": []}
                                                      for n in setups}  # fmt: skip
        setup_times: dict[str, float] = {}
        try:
            clients = {n: Client([servers[n][1]], timeout=30, **kw)
                       for n, (_, kw) in setups.items()}  # fmt: skip
            server_cpu: dict[str, list[float]] = {n: [] for n in setups}
            for _ in range(3):  # interleaved: the machine's state drifts alike for all
                for name, c in clients.items():
                    before = cpu_seconds(servers[name][0].pid)
                    results[name]["read"].append(read_rate(c, buf))
                    server_cpu[name].append(cpu_seconds(servers[name][0].pid) - before)
                    results[name]["write"].append(write_rate(c, data))
            for name, (_, kw) in setups.items():
                setup_times[name] = setup_ms(servers[name][1], **kw)
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
    # The ceiling of a tagged read: the server's own work per MiB in a plain read,
    # plus tagging that MiB once (GMAC holds the GIL: it cannot overlap the rest).
    gmac = gmac_rate()
    plain_s_per_mib = min(server_cpu["plain"]) / args.size_mib
    ceiling = 1 / (plain_s_per_mib + MiB / gmac)
    print(
        f"(d) AES-GMAC, one thread: {gmac / MiB:7.0f} MiB/s; the plain server spent "
        f"{plain_s_per_mib * 1e3:.2f} ms of CPU per MiB read; a tagged read can go at most "
        f"{ceiling:7.0f} MiB/s = {ceiling * MiB / best['plain']['read']:4.2f} of plain"
    )
    print("targets: secret >= 0.70 of plain for (a) and (b)")


if __name__ == "__main__":
    main()
