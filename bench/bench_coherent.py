"""Coherency benchmarks: what cached locks buy and what they cost.

Starts its own server on 127.0.0.1 and mounts of it, then measures:

- re-read: reading a file again on a mount that holds its read lock, against
  reading a local file already in the page cache (the ceiling), as a ratio; and
  against a tmpfs file, whose page cache is in 4 KiB pages as a FUSE file's is
  (this kernel gives FUSE no large folios; the pages per folio of each are shown);
- handoffs: two mounts (and, for comparison, two library clients) taking turns
  writing one 4 KiB record of a shared file, each waiting to see the other's
  write before writing its own: handoffs per second;
- sequential write (1 MiB and 4 KiB writes) and 10,000 creates on a coherent mount
  against a mount with close-to-open caching (``-o nocoherent``), to show what
  coherency costs (4 KiB writes: what holding writes back gains; the local
  filesystem's rate is the ceiling);
- the ceilings for creates: the same loop on the export's own filesystem, and
  on pohmelfs's FUSE layer serving memory (bench/memory_fuse.py: the kernel
  round trips and the Python request loop alone), as ratios.

    python bench/bench_coherent.py [--size-mib 1024] [--files 10000] [--seconds 5]

Run as root (mounting). Prints one line per figure and, with --json, all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_mount import MiB, free_port, read_file, write_file
from benchkeys import MOUNT_OPTION, SECRET_FILE, SERVE_ARGS

RECORD = 4096
POHMELFS = [sys.executable, "-m", "pohmelfs"]


def log(msg: str) -> None:
    print(msg, flush=True)


class Setup:
    """A server and named mounts of its export; stopped by PID on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.export = tmp / "export"
        self.export.mkdir()
        pidfile = tmp / "server.pid"
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        subprocess.run([*POHMELFS, "serve", str(self.export), "--listen", self.address,
                        "--daemon", "--pid-file", str(pidfile), "--log-file",
                        str(tmp / "server.log"), *SERVE_ARGS], check=True)  # fmt: skip
        self.server_pid = int(pidfile.read_text())
        self.mounts: list[Path] = []

    def mount(self, name: str, *options: str) -> Path:
        path = self.tmp / name
        path.mkdir()
        argv = [*POHMELFS, "mount", self.address, str(path), "--log-file",
                str(self.tmp / f"{name}.log")]  # fmt: skip
        for opt in (*options, MOUNT_OPTION):
            argv += ["-o", opt]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        self.mounts.append(path)
        return path

    def stop(self) -> None:
        for path in self.mounts:
            subprocess.run([*POHMELFS, "umount", str(path)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            if os.path.ismount(path):
                subprocess.run(["umount", "-l", str(path)], check=False)
        try:
            os.kill(self.server_pid, 15)
        except ProcessLookupError:
            pass


def _write_file(path: Path, size: int) -> float:
    """Seconds to write ``size`` bytes in 1 MiB blocks, fsync and close."""
    return sum(write_file(str(path), size, os.urandom(MiB)))


def _read_file(path: Path) -> float:
    return read_file(str(path))[1]


def folio_pages(path: Path, pages: int = 16384) -> float:
    """Average pages per page-cache folio of the file's first ``pages`` pages (read
    through a private mapping: /proc/self/pagemap gives each page's frame, and
    /proc/kpageflags whether it is the tail of a larger folio). Root only."""
    import ctypes
    import mmap

    with open(path, "rb") as f:
        n = min(os.fstat(f.fileno()).st_size // 4096, pages)
        m = mmap.mmap(f.fileno(), n * 4096, access=mmap.ACCESS_COPY)
    try:
        for i in range(n):
            m[i * 4096]  # fault in (a read: the page cache's own page is mapped)
        base = ctypes.addressof(ctypes.c_char.from_buffer(m)) >> 12
        tails = 0
        with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
            for i in range(n):
                pm.seek((base + i) * 8)
                frame = int.from_bytes(pm.read(8), "little") & ((1 << 55) - 1)
                kf.seek(frame * 8)
                tails += int.from_bytes(kf.read(8), "little") >> 16 & 1  # KPF_COMPOUND_TAIL
        return n / max(1, n - tails)
    finally:
        m.close()


def reread(setup: Setup, mount: Path, size: int) -> dict[str, float]:
    small_pages = setup.tmp / "tmpfs"
    small_pages.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + 16 * MiB},huge=never",
                    "tmpfs", str(small_pages)], check=True)  # fmt: skip
    try:
        files = {"local": setup.tmp / "local.dat", "tmpfs": small_pages / "reread.dat",
                 "mount": mount / "reread.dat"}  # fmt: skip
        for path in files.values():
            _write_file(path, size)
            _read_file(path)  # the first read fills the page cache
        out: dict[str, float] = {}
        for name, path in files.items():
            out[f"reread_{name}_MBps"] = size / min(_read_file(path) for _ in range(3)) / 1e6
            out[f"folio_pages_{name}"] = folio_pages(path)
        for path in files.values():
            path.unlink()
    finally:
        subprocess.run(["umount", "-l", str(small_pages)], check=False)
    out["reread_ratio"] = out["reread_mount_MBps"] / out["reread_local_MBps"]
    out["reread_ratio_tmpfs"] = out["reread_mount_MBps"] / out["reread_tmpfs_MBps"]
    return out


def small_writes(path: Path, size: int) -> float:
    """MB/s of sequential 4 KiB writes, with the fsync and close at the end."""
    block = os.urandom(4096)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(0, size, 4096):
            os.pwrite(fd, block, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    took = time.perf_counter() - start
    path.unlink()
    return size / took / 1e6


# One side of the handoff: TARGET is a path through a mount, or HOST:PORT for a
# library client (which opens /handoff.rec).
HANDOFF = r"""
import os, sys, time
target, me, seconds, secret = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
if target.startswith("/"):
    fd = os.open(target, os.O_RDWR)
    pread, pwrite = (lambda: os.pread(fd, 4096, 0)), (lambda d: os.pwrite(fd, d, 0))
else:
    from pohmelfs import Client
    f = Client([target], secret_file=secret).open("/handoff.rec", "r+b", buffering=0)
    pread, pwrite = (lambda: f.pread(4096, 0)), (lambda d: f.pwrite(d, 0))
turns = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    record = pread()
    n = int(record[:12])
    if n % 2 != me:
        continue
    if record.count(record[12:13]) < 4096 - 12:
        sys.exit(f"torn record at turn {n}")
    pwrite(b"%012d" % (n + 1) + bytes([65 + (n + 1) % 26]) * (4096 - 12))
    turns += 1
print(turns)
"""


def handoffs(setup: Setup, a: Path | None, b: Path | None, seconds: float) -> float:
    """Turns per second of two clients writing one record in turn (mounts a and b,
    or two library clients when they are None)."""
    (setup.export / "handoff.rec").write_bytes(b"%012d" % 0 + b"A" * (RECORD - 12))
    if a is None or b is None:
        targets = [setup.address] * 2
    else:
        targets = [str(a / "handoff.rec"), str(b / "handoff.rec")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HANDOFF, target, str(i), str(seconds), SECRET_FILE],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, target in enumerate(targets)
    ]
    turns = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"handoff worker failed: {out}")
        turns += int(out)
    (setup.export / "handoff.rec").unlink()
    return turns / seconds


def creates(mount: Path, files: int, name: str = "creates") -> float:
    """Files are left in place: ext4 allocates inodes slowly for minutes after many
    were freed (it skips recently deleted ones), which would slow the next run."""
    d = mount / name
    d.mkdir()
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    start = time.perf_counter()
    for i in range(files):
        os.close(os.open(d / f"f{i:05d}", flags, 0o644))
    return files / (time.perf_counter() - start)


def memory_creates(tmp: Path, files: int) -> float:
    """Creates on bench/memory_fuse.py: the ceiling of any pohmelfs mount."""
    mnt = tmp / "memory"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "memory_fuse.py"),
                             str(mnt)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("memory_fuse.py did not mount")
        return creates(mnt, files)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="re-read and write size")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per handoff run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = args.size_mib * MiB
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pohmelfs-bench-") as tmpdir:
        setup = Setup(Path(tmpdir))
        try:
            a = setup.mount("a", "coherent")
            b = setup.mount("b", "coherent")
            plain = setup.mount("plain", "nocoherent")
            # First: the local filesystem's figure is the one the others compete with.
            results["creates_local"] = creates(setup.tmp, args.files)
            results["creates_memory_fuse"] = memory_creates(setup.tmp, args.files)
            results.update(reread(setup, a, size))
            r = results
            log(f"re-read {args.size_mib} MiB under a read lock: "
                f"{r['reread_mount_MBps']:,.0f} MB/s; local page cache "
                f"{r['reread_local_MBps']:,.0f} MB/s (ratio {r['reread_ratio']:.2f}); tmpfs "
                f"{r['reread_tmpfs_MBps']:,.0f} MB/s (ratio {r['reread_ratio_tmpfs']:.2f}); "
                f"pages per folio: local {r['folio_pages_local']:.1f}, tmpfs "
                f"{r['folio_pages_tmpfs']:.1f}, mount {r['folio_pages_mount']:.1f}")  # fmt: skip
            results["handoffs_mounts"] = handoffs(setup, a, b, args.seconds)
            results["handoffs_library"] = handoffs(setup, None, None, args.seconds)
            log(f"4 KiB record handoffs/s: two mounts {results['handoffs_mounts']:,.0f}, "
                f"two library clients {results['handoffs_library']:,.0f}")  # fmt: skip
            small = min(size, 64 * MiB)
            results["small_writes_local_MBps"] = small_writes(setup.tmp / "small.dat", small)
            for name, m in (("coherent", a), ("nocoherent", plain)):
                w = _write_file(m / "seq.dat", size)
                (m / "seq.dat").unlink()
                results[f"seq_write_{name}_MBps"] = size / w / 1e6
                results[f"small_writes_{name}_MBps"] = small_writes(m / "small.dat", small)
                results[f"creates_{name}"] = creates(m, args.files, f"creates-{name}")
                log(f"{name}: sequential write {results[f'seq_write_{name}_MBps']:,.0f} MB/s "
                    f"(with fsync), {args.files} creates "
                    f"{results[f'creates_{name}']:,.0f}/s")  # fmt: skip
            r = results
            r["small_writes_ratio"] = r["small_writes_coherent_MBps"] / r["small_writes_local_MBps"]
            log(f"{small // MiB} MiB in 4 KiB writes (with fsync): coherent "
                f"{r['small_writes_coherent_MBps']:,.0f} MB/s, nocoherent "
                f"{r['small_writes_nocoherent_MBps']:,.0f} MB/s; ceiling: the local "
                f"filesystem {r['small_writes_local_MBps']:,.0f} MB/s (ratio "
                f"{r['small_writes_ratio']:.2f})")  # fmt: skip
            log(f"{args.files} creates: coherent mount {r['creates_coherent']:,.0f}/s; ceilings: "
                f"the export's filesystem {r['creates_local']:,.0f}/s (ratio "
                f"{r['creates_coherent'] / r['creates_local']:.2f}), pohmelfs's FUSE layer on "
                f"memory {r['creates_memory_fuse']:,.0f}/s (ratio "
                f"{r['creates_coherent'] / r['creates_memory_fuse']:.2f})")  # fmt: skip
        finally:
            setup.stop()
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
