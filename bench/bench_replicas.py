"""Several servers through the library: what replication costs, and the failover gap.

Prints, in one run, each server a separate process on 127.0.0.1 exporting its own
directory under one temporary directory (the same disk):
  (a) sequential write of SIZE MiB, 1 MiB calls, with one server and with two
      replicas, three rounds each after a warm-up, interleaved, and the ratio of the medians (the
      issue's target: at least 70%); beside it the physical ceiling on this disk: the
      same bytes written locally as one copy and as two copies at once (the two
      servers' exports share one disk and one page cache)
  (b) untar-like metadata work (create, write 4 KiB, close; 2,000 files in 20
      directories) with one server and with two replicas, and the ratio of times
      (target: at most 1.5x), with the CPU seconds the client and the servers spent:
      on two cores, a run cannot take less than their sum over two (the ceiling)
  (c) the failover gap: a writer of 256 KiB calls while the lock server is killed
      with SIGKILL; the longest stall one call saw, and whether every byte the writer
      was told was written is on the server that stayed (by checksum)

  (d) parallel reads: four reader processes, each with its own client and two files
      open at once (64 MiB each, in the servers' page cache), read 1 MiB at a time,
      with one server and with two of equal priority (each file is read from one
      of them in turn: client/readroutes.py); the ratio (target: at least 1.5x),
      beside the ceiling of the same reads made locally from the exports' files

Usage: python bench/bench_replicas.py [--size-mib 512]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import pohmelfs
from bench_core import start_server
from benchkeys import SECRET_FILE


def client(addresses: list[str]) -> pohmelfs.Client:
    return pohmelfs.Client(addresses, secret_file=SECRET_FILE, timeout=5)


def sequential_write(addresses: list[str], size: int, pids: list[int]) -> tuple[float, float]:
    """(MB/s, the CPU seconds the client and the servers spent)."""
    block = os.urandom(1 << 20)
    with client(addresses) as c:
        cpu = time.process_time() + sum(cpu_seconds(p) for p in pids)
        t = time.perf_counter()
        with c.open("seq", "wb", buffering=0) as f:
            for _ in range(size >> 20):
                f.write(block)
        dt = time.perf_counter() - t
        cpu = time.process_time() + sum(cpu_seconds(p) for p in pids) - cpu
        c.unlink("seq")
    return size / dt / 1e6, cpu


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_copies(top: str, size: int, copies: int) -> float:
    """MB/s of ``size`` bytes written (1 MiB calls, closed, not synced) to each of
    ``copies`` files at once: what the disk under the exports takes."""
    block = os.urandom(1 << 20)

    def one(n: int) -> None:
        with open(os.path.join(top, f"local{n}"), "wb") as f:
            for _ in range(size >> 20):
                f.write(block)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(copies)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    for n in range(copies):
        os.unlink(os.path.join(top, f"local{n}"))
    return size / dt / 1e6


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def untar_like(addresses: list[str], pids: list[int], files: int = 2000,
               dirs: int = 20) -> tuple[float, float, float]:  # fmt: skip
    """(seconds, the client's CPU seconds, the servers')."""
    data = os.urandom(4096)
    with client(addresses) as c:
        c.mkdir("untar")
        servers_before = sum(cpu_seconds(p) for p in pids)
        mine = time.process_time()
        t = time.perf_counter()
        for d in range(dirs):
            c.mkdir(f"untar/d{d}")
            for n in range(files // dirs):
                with c.open(f"untar/d{d}/f{n}", "wb", buffering=0) as f:
                    f.write(data)
        dt = time.perf_counter() - t
        mine = time.process_time() - mine
        servers = sum(cpu_seconds(p) for p in pids) - servers_before
        c.rmtree("untar")
    return dt, mine, servers


READERS, FILES_EACH, READ_FILE = 4, 2, 64 << 20


def _reader(addresses: list[str], names: list[str], passes: int, go: Any, out: Any) -> None:
    with client(addresses) as c:
        files = [c.open(n, "rb", buffering=0) for n in names]
        buf = bytearray(1 << 20)
        go.wait()
        total = 0
        for _ in range(passes):
            for off in range(0, READ_FILE, len(buf)):
                for f in files:
                    total += f.preadinto(buf, off)
        for f in files:
            f.close()
    out.put(total)


def _readers(one: Callable[[int, Any, Any], None]) -> float:
    """MB/s of READERS processes each running ``one(r, out, go)``: it waits on the
    barrier ``go``, reads, and puts the bytes it read on ``out``."""
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Barrier(READERS + 1), ctx.Queue()
    procs = [ctx.Process(target=one, args=(r, out, go)) for r in range(READERS)]
    for p in procs:
        p.start()
    go.wait()
    t = time.perf_counter()
    total = sum(out.get() for _ in procs)
    dt = time.perf_counter() - t
    for p in procs:
        p.join()
    return total / dt / 1e6


def parallel_read(addresses: list[str], passes: int = 2,
                  pids: tuple[int, ...] = ()) -> tuple[float, float]:  # fmt: skip
    """(MB/s, CPU seconds the readers and the servers ``pids`` spent) of READERS
    processes reading FILES_EACH files each (see (d))."""
    before = _children_cpu() + sum(cpu_seconds(p) for p in pids)

    def one(r: int, out: Any, go: Any) -> None:
        _reader(addresses, [f"par/r{r}f{n}" for n in range(FILES_EACH)], passes, go, out)

    rate = _readers(one)
    return rate, _children_cpu() + sum(cpu_seconds(p) for p in pids) - before


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def local_parallel_read(root: str, passes: int = 2) -> float:
    """The ceiling of (d): the same reads, made locally from the files of an export."""

    def one(r: int, out: Any, go: Any) -> None:
        fds = [os.open(os.path.join(root, f"par/r{r}f{n}"), os.O_RDONLY) for n in range(FILES_EACH)]
        buf = bytearray(1 << 20)
        go.wait()
        total = 0
        for _ in range(passes):
            for off in range(0, READ_FILE, len(buf)):
                for fd in fds:
                    total += os.preadv(fd, [buf], off)
        out.put(total)

    return _readers(one)


def failover_gap(roots: list[str]) -> tuple[float, bool, int]:
    procs = [start_server(r) for r in roots]
    addresses = [a for _, a in procs]
    stalls: list[float] = []
    written = hashlib.sha256()
    total = 0
    stop = threading.Event()
    with client(addresses) as c:
        with c.open("fail", "wb", buffering=0) as f:

            def killer() -> None:
                time.sleep(1.0)
                procs[0][0].send_signal(signal.SIGKILL)
                time.sleep(2.0)
                stop.set()

            threading.Thread(target=killer, daemon=True).start()
            block = os.urandom(256 << 10)
            while not stop.is_set():
                t = time.perf_counter()
                f.write(block)
                stalls.append(time.perf_counter() - t)
                written.update(block)
                total += len(block)
    with open(os.path.join(roots[1], "fail"), "rb") as got:
        same = hashlib.sha256(got.read()).hexdigest() == written.hexdigest()
    for proc, _ in procs:
        proc.kill()
        proc.wait()
    return max(stalls), same, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    args = ap.parse_args()
    size = args.size_mib << 20
    top = tempfile.mkdtemp(prefix="pohmelfs-bench-replicas-")
    roots = [os.path.join(top, n) for n in ("a", "b", "c", "d")]
    for r in roots:
        os.mkdir(r)
    procs = [start_server(r) for r in roots[:2]]
    try:
        one, two = [procs[0][1]], [procs[0][1], procs[1][1]]
        pids = [proc.pid for proc, _ in procs]
        cores = os.cpu_count() or 1
        w1s, w2s, l1s, l2s, cpu2 = [], [], [], [], []
        sequential_write(one, size, [])  # warm-up, not counted: this VM backs memory
        sequential_write(two, size, [])  # lazily, and the first large transfers are slow
        for _ in range(3):
            w1s.append(sequential_write(one, size, pids[:1])[0])
            rate, cpu = sequential_write(two, size, pids)
            w2s.append(rate)
            cpu2.append(cpu)
            l1s.append(local_copies(top, size, 1))
            l2s.append(local_copies(top, size, 2))
        w1, w2, l1, l2 = median(w1s), median(w2s), median(l1s), median(l2s)
        busy = size / (median(cpu2) / cores) / 1e6
        runs = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(w1s, w2s, strict=True))
        print(
            f"(a) sequential write, {args.size_mib} MiB: one server {w1:.0f} MB/s, two "
            f"replicas {w2:.0f} MB/s (rounds, one/two: {runs}): {w2 / w1:.0%} of one "
            f"server (target >= 70%); ceilings: the local disk, one copy {l1:.0f} MB/s, "
            f"two at once {l2:.0f} MB/s each ({l2 / l1:.0%}); {cores} cores all busy with "
            f"the CPU two replicas took ({median(cpu2):.2f} s): {busy:.0f} MB/s "
            f"({busy / w1:.0%} of one server)"
        )
        (u1, c1, s1), (u2, c2, s2) = untar_like(one, pids[:1]), untar_like(two, pids)
        floor = (c2 + s2) / cores
        print(
            f"(b) untar-like, 2,000 files: one server {u1:.2f} s (CPU: client {c1:.2f} s, "
            f"server {s1:.2f} s), two replicas {u2:.2f} s (CPU: client {c2:.2f} s, servers "
            f"{s2:.2f} s): {u2 / u1:.2f}x the time (target <= 1.5x); the {cores}-core "
            f"ceiling for two replicas, all CPU busy: {floor:.2f} s = {floor / u1:.2f}x"
        )
        with client(two) as c:  # the files, on both servers
            c.mkdir("par")
            block = os.urandom(1 << 20)
            for r in range(READERS):
                for n in range(FILES_EACH):
                    with c.open(f"par/r{r}f{n}", "wb", buffering=0) as f:
                        for _ in range(READ_FILE >> 20):
                            f.write(block)
        parallel_read(one, 1)  # warm-up: the servers' page caches
        r1s, r2s, locals_, cpus = [], [], [], []
        for _ in range(3):
            r1s.append(parallel_read(one, pids=tuple(pids[:1]))[0])
            rate, cpu = parallel_read(two, pids=tuple(pids))
            r2s.append(rate)
            cpus.append(cpu)
            locals_.append(local_parallel_read(roots[0]))
        r1, r2, rl = median(r1s), median(r2s), median(locals_)
        read_bytes = READERS * FILES_EACH * READ_FILE * 2
        busy = read_bytes / (median(cpus) / cores) / 1e6
        runs = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(r1s, r2s, strict=True))
        print(
            f"(d) parallel read, {READERS} reader processes x {FILES_EACH} files of "
            f"{READ_FILE >> 20} MiB: one server {r1:.0f} MB/s, two equal servers "
            f"{r2:.0f} MB/s (rounds, one/two: {runs}): {r2 / r1:.2f}x one server (target "
            f">= 1.5x); ceilings: {cores} cores all busy with the CPU two servers and the "
            f"readers took ({median(cpus):.2f} s): {busy:.0f} MB/s ({busy / r1:.2f}x one "
            f"server); the same reads made locally: {rl:.0f} MB/s"
        )
    finally:
        for proc, _ in procs:
            proc.kill()
            proc.wait()
    gap, same, total = failover_gap(roots[2:])
    print(
        f"(c) failover: lock server killed (SIGKILL) under a writer of 256 KiB calls: "
        f"longest stall {gap * 1000:.0f} ms; {total >> 20} MiB written, "
        f"{'all' if same else 'NOT all'} of it on the server that stayed"
    )
    shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
