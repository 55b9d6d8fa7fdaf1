"""Mount benchmark: pohmelfs against SSHFS (and the local disk), on 127.0.0.1.

Sets up, in one run and all on this machine:
  * SSHFS: its own sshd (own host key, config and authorized key in a temp dir, listening
    on 127.0.0.1 only) and an ``sshfs`` mount of a local export directory;
  * pohmelfs: ``pohmelfs serve`` and ``pohmelfs mount --foreground`` as child processes;
  * the local disk: a plain directory (for the untar + sync row).
Both exports and the local directory live in one temp dir (under $TMPDIR or /var/tmp), so
on the same filesystem. Then it runs the same workloads on each and prints one table:

  1  sequential write, 1 MiB blocks, fsync at the end             MB/s
  2  sequential read, cold (sync; echo 3 > drop_caches first)     MB/s
  3  sequential read, warm (again, caches not dropped)            MB/s
  4  4 KiB random reads, 4 jobs (fio psync; without fio, threads doing preadv, whose
     figures are not comparable with fio's: less overhead per cached read)  IOPS
  5  4 KiB random writes, likewise; the final fsync counts        IOPS
  4', 5'  the same with O_DIRECT (for information; no target)
  6  create N empty files, stat them, os.listdir, os.scandir + stat, unlink them
  7  M files of 16 KiB written, then read back (cold)             seconds per phase
  8  untar of Python's standard library + sync, also on the local disk

Ratios are pohmelfs relative to SSHFS, arranged so that > 1 means pohmelfs is better
(rate / rate, or time / time inverted); row 8 also compares pohmelfs with the local disk.
Below the table: where the time of rows 1, 5 and 8 went (writes vs fsync, tar vs sync).

Before rows 1, 2, 4, 5 and 8 (untimed): sync, drop_caches, and about twice the data size
of anonymous memory touched then freed. On a VM whose RAM the host backs lazily, the
first touch of a page is slow enough to cut a 1 GiB write to a tenth of its speed,
whatever the filesystem (see prefault(); --no-prefault turns it off). --wait-idle S
waits for other work on the machine to settle; the load seen between workloads is
printed with the table either way.

Usage (as root, with the project's virtualenv):
  .venv/bin/python bench/bench_mount.py [--quick] [--only pohmelfs|sshfs] [--json FILE]
  POHMELFS_SERVE_ARGS="--no-watch" (say) adds options to the pohmelfs server's command.

Needs root (mounts, drop_caches, a private sshd). Installs openssh-server and sshfs
through apt-get when they are missing (with services kept from starting). Every process
it starts is stopped by PID when it ends, also on Ctrl-C; every workload runs under a
deadline after which the mount's daemon is killed, so a hung mount cannot hang the run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import mmap
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from benchkeys import MOUNT_OPTION, SERVE_ARGS

MiB = 1 << 20
MB = 1_000_000
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
SSHD = "/usr/sbin/sshd"


class BenchError(Exception):
    """A setup step failed; the message says which and why."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), to tell it from a reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(")", 1)[1].split()[19]


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every process below ``pid``, with start times, at this moment."""
    out: list[tuple[int, str]] = []
    todo = [pid]
    for _ in range(10_000):  # bounded walk
        if not todo:
            break
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for k in kids:
                st = _start_time(k)
                if st is not None:
                    out.append((k, st))
                    todo.append(k)
    return out


def _alive(pid: int, start: str) -> bool:
    return _start_time(pid) == start


def _stop_pids(pids: list[tuple[int, str]], grace: float) -> None:
    """SIGTERM the processes still alive (same PID and start time), then SIGKILL."""
    live = [(p, s) for p, s in pids if _alive(p, s)]
    for p, _ in live:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [(p, s) for p, s in live if _alive(p, s)]
    for p, _ in live:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


class Child:
    """A process we started: output to a log file, its own session, stopped by PID."""

    def __init__(self, name: str, argv: list[str], logpath: str) -> None:
        self.name = name
        self.argv = argv
        self.logpath = logpath
        with open(logpath, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            )
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.logpath, errors="replace") as f:
                text = f.read()
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until the log shows ``pattern``; BenchError if the process exits first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.logpath, errors="replace") as f:
                m = rx.search(f.read())
            if m:
                return m
            if not self.running():
                raise BenchError(
                    f"{self.name} exited with status {self.proc.returncode} before "
                    f"saying {pattern!r}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise BenchError(
            f"{self.name} did not say {pattern!r} within {timeout:g} s:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL now (the watchdog's last resort for a hung mount daemon)."""
        if self.running():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait ``grace`` s, SIGKILL; then the same for leftover descendants."""
        kids = descendants(self.pid) if self.running() else []
        if self.running():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"  {self.name} (pid {self.pid}) ignored SIGTERM for {grace:g} s: SIGKILL")
                self.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        _stop_pids(kids, 5.0)


def run(
    argv: list[str], timeout: float, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run to completion with a timeout; on timeout or Ctrl-C, stop it and its children."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )
    except FileNotFoundError:
        raise BenchError(f"{argv[0]}: not found") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as e:
        kids = descendants(proc.pid)
        proc.kill()
        _stop_pids(kids, 5.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)
        if isinstance(e, subprocess.TimeoutExpired):
            raise BenchError(f"{' '.join(argv)}: timed out after {timeout:g} s") from None
        raise
    res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and res.returncode != 0:
        text = (res.stderr or res.stdout).strip()[-2000:]
        raise BenchError(f"{' '.join(argv)}: exit status {res.returncode}\n{text}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running():
            raise BenchError(
                f"{child.name} exited with status {child.proc.returncode}:\n{child.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise BenchError(f"{child.name} is not listening on 127.0.0.1:{port} after {timeout:g} s")


# --------------------------------------------------------------------------- mounts


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list[str]:
    """Mount points from /proc/self/mountinfo (reading it never touches a FUSE daemon)."""
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f if line.strip()]


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mount_points()


def lazy_unmount(path: str) -> None:
    if is_mounted(path):
        log(f"  {path} still mounted: umount -l")
        with contextlib.suppress(BenchError):
            run(["umount", "-l", path], timeout=15, check=False)


class Target:
    """One place to run the workloads: a mounted filesystem or a local directory."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = root  # where the workloads create their files
        self.daemon: Child | None = None  # killed by the watchdog if a workload hangs
        self.dead: str | None = None  # why later workloads are skipped

    def health(self) -> str | None:
        if self.dead:
            return self.dead
        if self.daemon is not None and not self.daemon.running():
            self.dead = (
                f"{self.daemon.name} exited with status {self.daemon.proc.returncode}:"
                f"\n{self.daemon.log_tail()}"
            )
        return self.dead

    def stop(self) -> None:
        pass


class LocalTarget(Target):
    pass


class PohmelfsTarget(Target):
    def __init__(self, tmp: str, extra_opts: str) -> None:
        export, mnt = os.path.join(tmp, "pohmelfs-export"), os.path.join(tmp, "pohmelfs-mnt")
        os.mkdir(export)
        os.mkdir(mnt)
        super().__init__("pohmelfs", mnt)
        self.tmp, self.export, self.mnt, self.extra_opts = tmp, export, mnt, extra_opts
        self.server: Child | None = None
        self.address = ""

    def start(self) -> None:
        tmp, export, mnt = self.tmp, self.export, self.mnt
        self.server = Child(
            "pohmelfs server",
            [
                sys.executable,
                "-m",
                "pohmelfs.cli",
                "serve",
                export,
                "--listen",
                "127.0.0.1:0",
                *SERVE_ARGS,
                *os.environ.get("POHMELFS_SERVE_ARGS", "").split(),
            ],
            os.path.join(tmp, "logs", "pohmelfs-serve.log"),
        )
        m = self.server.wait_for_line(r"serving .* on (127\.0\.0\.1:\d+)", 30)
        self.address = m.group(1)
        opts = ",".join(filter(None, ["allow_other", self.extra_opts, MOUNT_OPTION]))
        self.daemon = Child(
            "pohmelfs mount",
            [
                sys.executable,
                "-m",
                "pohmelfs.cli",
                "mount",
                self.address,
                mnt,
                "-o",
                opts,
                "--foreground",
            ],
            os.path.join(tmp, "logs", "pohmelfs-mount.log"),
        )
        self.daemon.wait_for_line(r"pohmelfs: mounted", 30)
        if not is_mounted(mnt):
            raise BenchError(f"pohmelfs said it mounted but {mnt} is not in mountinfo")

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(grace=30)  # SIGTERM: it writes back, then unmounts
        lazy_unmount(self.mnt)
        if self.server is not None:
            self.server.stop(grace=10)


class SshfsTarget(Target):
    def __init__(self, tmp: str) -> None:
        export, mnt = os.path.join(tmp, "sshfs-export"), os.path.join(tmp, "sshfs-mnt")
        sshdir = os.path.join(tmp, "ssh")
        for d in (export, mnt, sshdir):
            os.mkdir(d)
        super().__init__("sshfs", mnt)
        self.tmp, self.export, self.mnt, self.sshdir = tmp, export, mnt, sshdir
        self.sshd: Child | None = None
        self.created_run_sshd = False
        self.port = 0

    def start(self, install: bool) -> None:
        tmp, export, mnt, sshdir = self.tmp, self.export, self.mnt, self.sshdir
        if install:
            ensure_packages()
        sftp = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), "internal-sftp")
        hostkey = os.path.join(sshdir, "ssh_host_ed25519_key")
        userkey = os.path.join(sshdir, "id_ed25519")
        for key in (hostkey, userkey):
            run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pohmelfs-bench", "-f", key],
                timeout=30,
            )
        authorized = os.path.join(sshdir, "authorized_keys")
        shutil.copyfile(userkey + ".pub", authorized)
        os.chmod(authorized, 0o600)
        port = free_port()
        conf = os.path.join(sshdir, "sshd_config")
        with open(conf, "w") as f:
            f.write(
                # Port and ListenAddress come from the command line (-p, -o)
                f"HostKey {hostkey}\n"
                f"PidFile {os.path.join(sshdir, 'sshd.pid')}\n"
                f"AuthorizedKeysFile {authorized}\n"
                "PermitRootLogin yes\n"
                "StrictModes no\n"
                "UsePAM no\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UseDNS no\n"
                "PrintMotd no\n"
                "LogLevel INFO\n"
                f"Subsystem sftp {sftp}\n"
            )
        if not os.path.isdir("/run/sshd"):  # privilege separation directory
            os.makedirs("/run/sshd", mode=0o755)
            self.created_run_sshd = True
        sshd_argv = [SSHD, "-D", "-e", "-f", conf, "-o", "ListenAddress=127.0.0.1", "-p", str(port)]
        run([*sshd_argv[:1], "-t", *sshd_argv[3:]], timeout=15)  # check the config
        self.sshd = Child("sshd", sshd_argv, os.path.join(tmp, "logs", "sshd.log"))
        self.port = port
        wait_port(port, self.sshd, 15)
        opts = ",".join(
            [
                "Ciphers=aes128-gcm@openssh.com",
                "max_conns=2",
                f"IdentityFile={userkey}",
                "StrictHostKeyChecking=no",
                "UserKnownHostsFile=/dev/null",
                f"port={port}",
                "BatchMode=yes",  # never prompt
                "LogLevel=ERROR",
            ]
        )
        self.daemon = Child(
            "sshfs",
            ["sshfs", "-f", "-o", opts, f"root@127.0.0.1:{export}", mnt],
            os.path.join(tmp, "logs", "sshfs.log"),
        )
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if not self.daemon.running():
                raise BenchError(
                    f"sshfs could not mount root@127.0.0.1:{export} on {mnt} (exit status "
                    f"{self.daemon.proc.returncode}):\n{self.daemon.log_tail()}\n"
                    f"--- sshd log:\n{self.sshd.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"sshfs did not mount {mnt} within 30 s:\n"
                    f"{self.daemon.log_tail()}\n--- sshd log:\n"
                    f"{self.sshd.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(grace=15)  # SIGTERM: libfuse unmounts on its way out
        lazy_unmount(self.mnt)
        if self.sshd is not None:
            self.sshd.stop(grace=10)
        if self.created_run_sshd:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")


def ensure_packages() -> None:
    """apt-get install openssh-server and sshfs if missing; apt-get update only on failure."""
    if shutil.which("sshfs") and os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen"):
        return
    log("installing openssh-server and sshfs with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep the packages' services (a system sshd on 0.0.0.0:22) from being started.
    policy = "/usr/sbin/policy-rc.d"
    made_policy = False
    if not os.path.exists(policy):
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        made_policy = True
    try:
        cmd = ["apt-get", "install", "-y", "openssh-server", "sshfs"]
        if run(cmd, timeout=900, check=False, env=env).returncode != 0:
            run(["apt-get", "update"], timeout=900, env=env)
            run(cmd, timeout=900, env=env)
    finally:
        if made_policy:
            with contextlib.suppress(OSError):
                os.unlink(policy)
    if not (shutil.which("sshfs") and os.access(SSHD, os.X_OK)):
        raise BenchError("apt-get install finished but sshfs or /usr/sbin/sshd is missing")


# --------------------------------------------------------------------------- watchdog


class Deadline:
    """Kill the target's daemon if the block runs past ``seconds`` (a hung mount then
    fails its pending calls with ENOTCONN instead of hanging the benchmark)."""

    def __init__(self, target: Target, seconds: float) -> None:
        self.target = target
        self.seconds = seconds
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        if not self._done.wait(self.seconds):
            self.fired = True
            if self.target.daemon is not None:
                log(
                    f"  !! {self.target.name}: over {self.seconds:g} s, killing "
                    f"{self.target.daemon.name} (pid {self.target.daemon.pid})"
                )
                self.target.daemon.kill()

    def __enter__(self) -> Deadline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)


# --------------------------------------------------------------------------- workloads


def cpu_busy(seconds: float) -> float:
    """CPUs busy (all processes, not idle or iowait) over ``seconds``, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    if total1 == total0:
        return 0.0
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / (total1 - total0))


def wait_idle(limit: float, timeout: float) -> float:
    """Wait (at most ``timeout`` s) until fewer than ``limit`` CPUs are busy."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy(2.0)
    while busy >= limit and time.monotonic() < deadline:
        log(f"  {busy:.2f} CPUs busy with other work; waiting for < {limit:g}")
        time.sleep(8)
        busy = cpu_busy(2.0)
    return busy


def prefault(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh anonymous memory, then free it.

    On a VM whose RAM the host backs lazily (Firecracker, for one), the first touch of a
    guest page costs a host fault: writing 1 GiB into never-touched memory then runs at a
    tenth of the speed, on the local disk as much as on any mount, and whichever
    filesystem happens to allocate fresh pages pays. Freed pages are reused before the
    host takes them back, so touching what the next step allocates, just before it,
    puts every filesystem on the same footing. Capped at half of MemAvailable.
    """
    with open("/proc/meminfo") as f:
        avail = next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:")), 0)
    nbytes = min(nbytes, avail // 2) & ~(MiB - 1)
    if nbytes <= 0:
        return
    chunk = bytes(64 * MiB)
    with mmap.mmap(-1, nbytes) as m:
        for off in range(0, nbytes, len(chunk)):
            n = min(len(chunk), nbytes - off)
            m[off : off + n] = chunk[:n]


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


class Progress:
    """What a workload got through, for the message when it fails or times out."""

    done = 0
    what = ""


PROGRESS = Progress()


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def write_file(path: str, size: int, block: bytes) -> tuple[float, float, float]:
    """Write ``size`` bytes in ``len(block)`` blocks, fsync, close.

    Returns the seconds for the writes, the fsync and the close (which, on FUSE, waits
    for the daemon's FLUSH).
    """
    view = memoryview(block)
    PROGRESS.what, PROGRESS.done = "MiB written", 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // len(block)):
            _write_all(fd, view)
            PROGRESS.done += len(block) // MiB
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def fsync_file(path: str) -> float:
    """Seconds to open, fsync and close ``path`` (what fio's end_fsync does)."""
    t = time.perf_counter()
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t


def read_file(path: str, bufsize: int = MiB) -> tuple[int, float]:
    buf = bytearray(bufsize)
    total = 0
    PROGRESS.what, PROGRESS.done = "MiB read", 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
            PROGRESS.done = total // MiB
    return total, time.perf_counter() - t


def fio_ios(
    path: str, size: int, rw: str, seconds: int, jobs: int, direct: bool, out: str
) -> tuple[int, float]:
    """fio, ``jobs`` psync jobs of 4 KiB ``rw``: returns (I/Os done, seconds)."""
    argv = [
        "fio",
        f"--name={rw}",
        f"--filename={path}",
        f"--size={size}",
        "--ioengine=psync",
        "--bs=4k",
        f"--rw={rw}",
        f"--numjobs={jobs}",
        f"--runtime={seconds}",
        "--time_based",
        "--group_reporting",
        "--invalidate=1",
        f"--direct={int(direct)}",
        "--output-format=json",
        f"--output={out}",
    ]
    run(argv, timeout=seconds + 120)
    with open(out) as f:
        data = json.load(f)
    job = data["jobs"][0]
    side = job["read" if rw == "randread" else "write"]
    if job.get("error"):
        raise OSError(job["error"], f"fio {rw} failed")
    return int(side["total_ios"]), side["runtime"] / 1000


def python_ios(
    path: str, size: int, rw: str, seconds: int, jobs: int, direct: bool
) -> tuple[int, float]:
    """Fallback without fio: ``jobs`` threads of os.preadv/os.pwritev on one fd each."""
    blocks = size // 4096
    counts = [0] * jobs
    errors: list[BaseException] = []
    stop = time.perf_counter() + seconds
    write = rw == "randwrite"

    def worker(i: int) -> None:
        rnd = random.Random(i)
        fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | (os.O_DIRECT * direct))
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead, as fio does
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
        buf.write(os.urandom(4096))
        try:
            while time.perf_counter() < stop:
                for _ in range(32):
                    off = rnd.randrange(blocks) * 4096
                    if write:
                        os.pwritev(fd, [buf], off)
                    else:
                        os.preadv(fd, [buf], off)
                counts[i] += 32
        except BaseException as e:
            errors.append(e)
        finally:
            os.close(fd)
            buf.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(jobs)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    dt = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), dt


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args = args
        self.tmp = tmp
        self.block = os.urandom(MiB)
        self.use_fio = shutil.which("fio") is not None and not args.no_fio
        self.results: dict[str, dict[str, float]] = {}  # row key -> target -> value
        self.errors: dict[str, dict[str, str]] = {}
        self.details: dict[str, dict[str, float]] = {}  # breakdowns, in the log and JSON
        self.tar_info = ""
        self.loads: list[float] = []  # CPUs busy between workloads (i.e. not us)

    def prepare(self, nbytes: int) -> None:
        """Untimed: start from dropped caches and pre-touched memory (see prefault)."""
        drop_caches()
        if not self.args.no_prefault:
            prefault(nbytes)

    def sample_load(self) -> None:
        """Before each group of workloads: how busy is the machine without us?"""
        if self.args.wait_idle > 0:
            busy = wait_idle(0.25, min(self.args.wait_idle, 120))
        else:
            busy = cpu_busy(1.0)
        self.loads.append(busy)
        if busy > 0.25:
            log(f"  (warning: {busy:.2f} CPUs busy with other work while this is idle)")

    # one measurement on one target, under a deadline; failures are recorded, not raised
    def measure(
        self, key: str, target: Target, seconds: float, fn: Callable[[], dict[str, float]]
    ) -> None:
        why = target.health()
        if why:
            for k in values_keys(key):
                self.errors.setdefault(k, {})[target.name] = "skipped (mount is down)"
            return
        PROGRESS.what, PROGRESS.done = "", 0
        seconds *= self.args.timeout_scale
        dl = Deadline(target, seconds)
        try:
            with dl:
                values = fn()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            done = f" after {PROGRESS.done} {PROGRESS.what}" if PROGRESS.what else ""
            if dl.fired:
                msg = f"timed out (> {seconds:g} s){done}; {type(e).__name__}: {e}"
                target.dead = f"killed after timing out in {key}"
            else:
                msg = f"{type(e).__name__}: {e}{done}"
            if target.health():
                msg += f" [{target.daemon.name if target.daemon else target.name} died]"
            for k in values_keys(key):
                self.errors.setdefault(k, {})[target.name] = msg
            log(f"  {target.name:9} {key}: FAILED: {msg}")
            return
        extra = {k: v for k, v in values.items() if k not in ROWS_BY_KEY}
        for k, v in extra.items():
            self.details.setdefault(k, {})[target.name] = v
        for k, v in values.items():
            if k not in ROWS_BY_KEY:
                continue
            self.results.setdefault(k, {})[target.name] = v
            row = ROWS_BY_KEY[k]
            more = ", ".join(
                f"{e.split('.', 1)[1]} {fmt(x)}" for e, x in extra.items() if e.startswith(k + ".")
            )
            more = f"  ({more})" if more else ""
            log(f"  {target.name:9} {row.label(self.args)}: {fmt(v)} {row.unit}{more}")

    def run_all(self, targets: list[Target], local: LocalTarget) -> None:
        a = self.args
        seq, rsize, nfiles, nsmall = a.seq_mib * MiB, a.rand_mib * MiB, a.files, a.small_files
        slow = 2 * MiB  # the slowest rate we wait for before declaring a mount hung
        for t in targets:
            os.makedirs(os.path.join(t.root, "bench"), exist_ok=True)

        def p(t: Target, *names: str) -> str:
            return os.path.join(t.root, "bench", *names)

        self.sample_load()
        log("\n[1-3] sequential write / read")
        for t in targets:

            def seq_write(t: Target = t) -> dict[str, float]:
                self.prepare(2 * seq + 256 * MiB)  # FUSE page cache + the export's
                w, f, c = write_file(p(t, "seq.dat"), seq, self.block)
                return {
                    "seq_write": seq / (w + f + c) / MB,
                    "seq_write.write_s": w,
                    "seq_write.fsync_s": f,
                    "seq_write.close_s": c,
                }

            self.measure("seq_write", t, 120 + seq / slow, seq_write)
        for t in targets:

            def seq_read(t: Target = t) -> dict[str, float]:
                self.prepare(2 * seq + 256 * MiB)
                n, cold = read_file(p(t, "seq.dat"))
                if n != seq:
                    raise OSError(f"cold read returned {n} bytes, expected {seq}")
                n, warm = read_file(p(t, "seq.dat"))
                if n != seq:
                    raise OSError(f"warm read returned {n} bytes, expected {seq}")
                return {"seq_read_cold": seq / cold / MB, "seq_read_warm": seq / warm / MB}

            self.measure("seq_read_cold", t, 120 + 2 * seq / slow, seq_read)
        for t in targets:  # free the space; the random rows use their own file

            def rm_seq(t: Target = t) -> dict[str, float]:
                os.unlink(p(t, "seq.dat"))
                return {}

            self.measure("seq_write", t, 120, rm_seq)

        self.sample_load()
        engine = "fio psync" if self.use_fio else "python threads"
        log(f"\n[4-5] 4 KiB random read / write ({engine}, {a.jobs} jobs, {a.rand_seconds} s)")
        kinds = [("randread", "rand_read", False), ("randwrite", "rand_write", False)]
        if not a.no_direct:
            kinds += [
                ("randread", "rand_read_direct", True),
                ("randwrite", "rand_write_direct", True),
            ]
        for rw, key, direct in kinds:
            for t in targets:

                def rand(
                    t: Target = t, rw: str = rw, key: str = key, direct: bool = direct
                ) -> dict[str, float]:
                    path = p(t, "rand.dat")
                    if not os.path.exists(path) or os.path.getsize(path) != rsize:
                        write_file(path, rsize, self.block)
                    self.prepare(2 * rsize + 256 * MiB)
                    if self.use_fio:
                        out = os.path.join(self.tmp, "logs", f"fio-{key}-{t.name}.json")
                        ios, dt = fio_ios(path, rsize, rw, a.rand_seconds, a.jobs, direct, out)
                    else:
                        ios, dt = python_ios(path, rsize, rw, a.rand_seconds, a.jobs, direct)
                    if rw == "randread":
                        return {key: ios / dt}
                    # Written data must reach the server's disk: the final fsync counts.
                    fs = fsync_file(path)
                    return {
                        key: ios / (dt + fs),
                        f"{key}.writes_only_iops": ios / dt,
                        f"{key}.fsync_s": fs,
                    }

                self.measure(key, t, 300 + a.rand_seconds + rsize / slow, rand)
        for t in targets:

            def rm_rand(t: Target = t) -> dict[str, float]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p(t, "rand.dat"))
                return {}

            self.measure("rand_write", t, 120, rm_rand)

        self.sample_load()
        log(f"\n[6] metadata: {nfiles} empty files")
        names = [f"f{i:05d}" for i in range(nfiles)]
        meta_budget = 120 + nfiles / 20  # 20 ops/s at the very least
        for t in targets:

            def create(t: Target = t) -> dict[str, float]:
                d = p(t, "meta")
                os.mkdir(d)
                PROGRESS.what, PROGRESS.done = "files created", 0
                flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
                start = time.perf_counter()
                for name in names:
                    os.close(os.open(os.path.join(d, name), flags, 0o644))
                    PROGRESS.done += 1
                return {"create": nfiles / (time.perf_counter() - start)}

            self.measure("create", t, meta_budget, create)
        for t in targets:

            def stat_all(t: Target = t) -> dict[str, float]:
                d = p(t, "meta")
                drop_caches()
                PROGRESS.what, PROGRESS.done = "files stat'ed", 0
                start = time.perf_counter()
                for name in names:
                    os.stat(os.path.join(d, name))
                    PROGRESS.done += 1
                cold = nfiles / (time.perf_counter() - start)
                start = time.perf_counter()
                for name in names:  # again: what the client keeps
                    os.stat(os.path.join(d, name))
                return {"stat": cold, "stat_again": nfiles / (time.perf_counter() - start)}

            self.measure("stat", t, meta_budget, stat_all)
        for t in targets:

            def listing(t: Target = t) -> dict[str, float]:
                d = p(t, "meta")
                drop_caches()
                start = time.perf_counter()
                n = len(os.listdir(d))
                t_list = time.perf_counter() - start
                if n != nfiles:
                    raise OSError(f"os.listdir found {n} entries, expected {nfiles}")
                drop_caches()
                start = time.perf_counter()
                n = 0
                with os.scandir(d) as it:
                    for entry in it:
                        entry.stat()
                        n += 1
                t_scan = time.perf_counter() - start
                if n != nfiles:
                    raise OSError(f"os.scandir found {n} entries, expected {nfiles}")
                return {"listdir": t_list, "scandir": t_scan}

            self.measure("listdir", t, meta_budget, listing)
        for t in targets:

            def unlink_all(t: Target = t) -> dict[str, float]:
                d = p(t, "meta")
                PROGRESS.what, PROGRESS.done = "files unlinked", 0
                start = time.perf_counter()
                for name in names:
                    os.unlink(os.path.join(d, name))
                    PROGRESS.done += 1
                rate = nfiles / (time.perf_counter() - start)
                os.rmdir(d)
                return {"unlink": rate}

            self.measure("unlink", t, meta_budget, unlink_all)

        self.sample_load()
        log(f"\n[7] {nsmall} files of 16 KiB: write, then read back cold")
        small = os.urandom(16 * 1024)
        snames = [f"s{i:05d}" for i in range(nsmall)]
        for t in targets:

            def small_files(t: Target = t) -> dict[str, float]:
                d = p(t, "small")
                os.mkdir(d)
                PROGRESS.what, PROGRESS.done = "small files written", 0
                flags = os.O_CREAT | os.O_TRUNC | os.O_WRONLY
                start = time.perf_counter()
                for name in snames:
                    fd = os.open(os.path.join(d, name), flags, 0o644)
                    try:
                        _write_all(fd, memoryview(small))
                    finally:
                        os.close(fd)
                    PROGRESS.done += 1
                t_write = time.perf_counter() - start
                drop_caches()
                PROGRESS.what, PROGRESS.done = "small files read", 0
                start = time.perf_counter()
                for name in snames:
                    with open(os.path.join(d, name), "rb", buffering=0) as f:
                        data = f.read()
                    if len(data) != len(small):
                        raise OSError(f"{name}: read {len(data)} bytes, expected {len(small)}")
                    PROGRESS.done += 1
                t_read = time.perf_counter() - start
                shutil.rmtree(d)
                return {"small_write": t_write, "small_read": t_read}

            self.measure("small_write", t, 2 * meta_budget + nsmall / 10, small_files)

        self.sample_load()
        log(f"\n[8] untar {self.tar_info} + sync")
        for t in [local, *targets]:

            def untar(t: Target = t) -> dict[str, float]:
                d = p(t, "untar")
                os.makedirs(d)
                self.prepare(4 * os.path.getsize(self.tarball))  # also: nothing left to sync
                start = time.perf_counter()
                run(["tar", "-xf", self.tarball, "-C", d], timeout=900)
                mid = time.perf_counter()
                os.sync()
                end = time.perf_counter()
                return {"untar": end - start, "untar.tar_s": mid - start, "untar.sync_s": end - mid}

            self.measure("untar", t, 960, untar)

    def make_tarball(self) -> None:
        """A tar of the standard library (no __pycache__, site-packages or config-*)."""
        stdlib = sysconfig.get_paths()["stdlib"]
        skip = re.compile(r"(^|/)(__pycache__|site-packages|dist-packages|config-[^/]*)(/|$)")
        self.tarball = os.path.join(self.tmp, "stdlib.tar")
        files = size = 0

        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            nonlocal files, size
            if skip.search(info.name):
                return None
            if info.isfile():
                files += 1
                size += info.size
            return info

        with tarfile.open(self.tarball, "w") as tar:
            tar.add(stdlib, arcname="stdlib", filter=keep)
        self.tar_info = f"{stdlib} ({files:,} files, {size / MB:.0f} MB)"
        self.tar_files = files


def values_keys(key: str) -> list[str]:
    """The rows one measurement fills (a failure marks them all)."""
    return {
        "seq_read_cold": ["seq_read_cold", "seq_read_warm"],
        "listdir": ["listdir", "scandir"],
        "small_write": ["small_write", "small_read"],
    }.get(key, [key])


# --------------------------------------------------------------------------- report


class Row:
    def __init__(
        self,
        key: str,
        label: str,
        unit: str,
        higher_is_better: bool,
        target: float | None,
        vs: str = "sshfs",
    ) -> None:
        self.key, self._label, self.unit = key, label, unit
        self.higher_is_better, self.target, self.vs = higher_is_better, target, vs

    def label(self, a: argparse.Namespace) -> str:
        return self._label.format(
            seq=size_str(a.seq_mib),
            rand=size_str(a.rand_mib),
            files=f"{a.files:,}",
            small=f"{a.small_files:,}",
            jobs=a.jobs,
            secs=a.rand_seconds,
        )


def size_str(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


ROWS = [
    Row("seq_write", "1 seq write {seq}, 1 MiB blocks + fsync", "MB/s", True, 2.0),
    Row("seq_read_cold", "2 seq read cold (drop_caches), 1 MiB", "MB/s", True, 2.5),
    Row("seq_read_warm", "3 seq read warm, 1 MiB", "MB/s", True, None),
    Row("rand_read", "4 4K rand read, {rand} file, {jobs} jobs, {secs} s", "IOPS", True, 2.0),
    Row("rand_write", "5 4K rand write, likewise (+ end fsync)", "IOPS", True, None),
    Row("rand_read_direct", "4' 4K rand read, O_DIRECT", "IOPS", True, None),
    Row("rand_write_direct", "5' 4K rand write, O_DIRECT (+ end fsync)", "IOPS", True, None),
    Row("create", "6 create {files} empty files", "files/s", True, 5.0),
    Row("stat", "6 stat them (after drop_caches)", "stats/s", True, None),
    Row("stat_again", "6 stat them again", "stats/s", True, None),
    Row("listdir", "6 os.listdir of the {files} (cold)", "s", False, 5.0),
    Row("scandir", "6 os.scandir + stat each (cold)", "s", False, 5.0),
    Row("unlink", "6 unlink the {files}", "files/s", True, 5.0),
    Row("small_write", "7 write {small} x 16 KiB files", "s", False, None),
    Row("small_read", "7 read them back (cold)", "s", False, None),
    Row("untar", "8 untar stdlib + sync", "s", False, 0.5, vs="local"),
]
ROWS_BY_KEY = {r.key: r for r in ROWS}


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(row: Row, mine: float | None, other: float | None) -> float | None:
    if mine is None or other is None or mine <= 0 or other <= 0:
        return None
    return mine / other if row.higher_is_better else other / mine


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    try:
        import pohmelfs

        pversion = pohmelfs.__version__
    except Exception:
        pversion = "?"
    rev = ""
    with contextlib.suppress(BenchError):
        here = os.path.dirname(os.path.abspath(__file__))
        rev = run(
            ["git", "-C", here, "describe", "--always", "--dirty"], timeout=10, check=False
        ).stdout.strip()

    def version(argv: list[str]) -> str:
        try:
            res = run(argv, timeout=10, check=False)
        except BenchError:
            return "not installed"
        out = (res.stdout + res.stderr).strip().splitlines()
        return next(
            (ln for ln in out if "SSHFS" in ln or "fio" in ln or "OpenSSH" in ln),
            out[0] if out else "?",
        )

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pohmelfs": f"{pversion} ({rev})" if rev else pversion,
        "sshfs": version(["sshfs", "--version"]),
        "openssh": version(["ssh", "-V"]),
        "fio": version(["fio", "--version"]),
    }


def report(bench: Bench, info: dict[str, Any]) -> list[dict[str, Any]]:
    a = bench.args
    out: list[dict[str, Any]] = []
    head = (
        f"{'workload':44} {'unit':>7} {'SSHFS':>9} {'pohmelfs':>9} {'local':>7} "
        f"{'p/SSHFS':>8} {'p/local':>8} {'target':>14}  met"
    )
    print()
    print(f"pohmelfs mount benchmark{' (--quick)' if a.quick else ''}, {info['date']}")
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['mem_mib']:,} MiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}"
    )
    print(
        f"pohmelfs {info['pohmelfs']}; {info['sshfs']}; {info['openssh']}; "
        f"random I/O: {info['fio'] if bench.use_fio else 'python threads'}"
    )
    popts = ",".join(filter(None, ["allow_other", a.mount_opts]))
    print(
        "SSHFS: -o Ciphers=aes128-gcm@openssh.com,max_conns=2 to a private sshd on "
        f"127.0.0.1; pohmelfs: serve + mount -o {popts} on 127.0.0.1"
    )
    print(f"untar: {bench.tar_info}")
    if not a.no_prefault:
        print(
            "before rows 1, 2, 4, 5, 8: sync, drop_caches, and 2x the data size of anonymous "
            "memory touched then freed\n(on a lazily backed VM the first touch of a page is "
            "slow; --no-prefault turns this off)"
        )
    if bench.loads:
        print(
            "other work on the machine (CPUs busy, sampled between workloads): "
            + " ".join(f"{x:.2f}" for x in bench.loads)
            + ("  <- figures disturbed" if max(bench.loads) > 0.25 else "")
        )
    print()
    print(head)
    print("-" * len(head))
    for row in ROWS:
        vals = bench.results.get(row.key, {})
        s, p, loc = vals.get("sshfs"), vals.get("pohmelfs"), vals.get("local")
        r_s = ratio(row, p, s)
        r_l = ratio(row, p, loc) if row.key == "untar" else None
        met = "-"
        if row.target is not None:
            r = r_l if row.vs == "local" else r_s
            if r is not None:
                met = "yes" if r >= row.target else "NO"
            tgt = f">= {row.target:g}" + (" vs local" if row.vs == "local" else "")
        else:
            tgt = "-"
        errs = bench.errors.get(row.key, {})

        def cell(name: str, v: float | None, width: int, errs: dict[str, str] = errs) -> str:
            if v is not None:
                return f"{fmt(v):>{width}}"
            if name in errs:
                return f"{'FAILED':>{width}}"
            return f"{'-':>{width}}"

        print(
            f"{row.label(a):44} {row.unit:>7} {cell('sshfs', s, 9)} {cell('pohmelfs', p, 9)} "
            f"{cell('local', loc, 7)} {fmt(r_s):>8} {fmt(r_l):>8} {tgt:>14}  {met}"
        )
        out.append(
            {
                "key": row.key,
                "workload": row.label(a),
                "unit": row.unit,
                "higher_is_better": row.higher_is_better,
                "sshfs": s,
                "pohmelfs": p,
                "local": loc,
                "pohmelfs_vs_sshfs": r_s,
                "pohmelfs_vs_local": r_l,
                "target": row.target,
                "target_vs": row.vs if row.target is not None else None,
                "met": None if met == "-" else met == "yes",
                "errors": errs,
            }
        )
    print()
    print(
        "Ratios: > 1 means pohmelfs is better (rates divided, times inverted). p/local on "
        "row 8 is local time / pohmelfs time:\n>= 0.5 means within 2x of the local disk. "
        "'cold' = sync; echo 3 > /proc/sys/vm/drop_caches before the step."
    )
    if bench.details:
        print("\nBreakdowns (seconds unless named):")
        for k in sorted({k.split(".", 1)[0] for k in bench.details}, key=list(ROWS_BY_KEY).index):
            parts = []
            for name in ("sshfs", "pohmelfs", "local"):
                items = [
                    f"{e.split('.', 1)[1]} {fmt(v[name])}"
                    for e, v in bench.details.items()
                    if e.startswith(k + ".") and name in v
                ]
                if items:
                    parts.append(f"{name}: {', '.join(items)}")
            print(f"  {k:18} " + "; ".join(parts))
    failures = [(k, n, m) for k, d in bench.errors.items() for n, m in d.items()]
    if failures:
        print("\nFailures:")
        for k, n, m in failures:
            print(f"  {n} / {k}: {m}")
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a fast smoke run")
    ap.add_argument("--only", choices=["pohmelfs", "sshfs"], help="run one network filesystem")
    ap.add_argument("--json", metavar="FILE", help="also save the results as JSON here")
    ap.add_argument("--chart", metavar="FILE", default="bench-mount.svg",
                    help="the comparison as a chart (.svg, .png)")  # fmt: skip
    ap.add_argument("--seq-mib", type=int, help="sequential file size (default 1024; quick 256)")
    ap.add_argument("--rand-mib", type=int, help="random I/O file size (default 256; quick 64)")
    ap.add_argument("--rand-seconds", type=int, help="random I/O run time (default 10; quick 4)")
    ap.add_argument("--jobs", type=int, default=4, help="random I/O jobs (default 4)")
    ap.add_argument("--files", type=int, help="empty files for row 6 (default 5000; quick 1000)")
    ap.add_argument("--small-files", type=int, help="16 KiB files (default 2000; quick 500)")
    ap.add_argument(
        "--no-prefault",
        action="store_true",
        help="do not pre-touch memory before the large workloads (see prefault())",
    )
    ap.add_argument("--no-direct", action="store_true", help="skip the O_DIRECT random rows")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="wait up to S seconds (at most 120 between workloads) for other work to leave "
        "the CPUs idle",
    )
    ap.add_argument("--no-fio", action="store_true", help="random I/O with Python threads")
    ap.add_argument("--mount-opts", default="", help="extra -o options for pohmelfs mount")
    ap.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply every workload's deadline by F (default 1)",
    )
    ap.add_argument("--no-install", action="store_true", help="never run apt-get")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, exports)")
    a = ap.parse_args(argv)
    defaults = {
        "seq_mib": (1024, 256),
        "rand_mib": (256, 64),
        "rand_seconds": (10, 4),
        "files": (5000, 1000),
        "small_files": (2000, 500),
    }
    for k, (full, quick) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    for k in ("seq_mib", "rand_mib", "rand_seconds", "jobs", "files", "small_files"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1")
    return a


def unexpected_log_lines(targets: list[Target]) -> dict[str, list[str]]:
    """What the daemons logged beyond their ready line (warnings, errors), shown on stderr."""
    out: dict[str, list[str]] = {}
    for t in targets:
        for child in (getattr(t, "server", None), t.daemon):
            if child is None:
                continue
            with open(child.logpath, errors="replace") as f:
                lines = [
                    ln.rstrip()
                    for ln in f
                    if ln.strip() and not re.match(r"pohmelfs: (serving|mounted) ", ln)
                ]
            if lines:
                out[child.name] = lines[-200:]
                log(f"\n{child.name} logged {len(lines)} line(s); the last ones:")
                for ln in lines[-15:]:
                    log(f"  | {ln}")
    return out


class Cleanup:
    """Stops everything we started, once, whatever way the run ends."""

    def __init__(self) -> None:
        self.targets: list[Target] = []
        self.tmp: str | None = None
        self.keep = False
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        # A second Ctrl-C must not cut the cleanup short (every step is bounded).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, signal.SIG_IGN)
        if self.targets:
            log("\nstopping mounts and servers")
        for t in reversed(self.targets):
            try:
                t.stop()
            except Exception as e:
                log(f"  stopping {t.name}: {type(e).__name__}: {e}")
        if self.tmp is None:
            return
        inside = [m for m in mount_points() if m == self.tmp or m.startswith(self.tmp + "/")]
        if inside:
            log(f"  still mounted, so {self.tmp} is left in place: {', '.join(inside)}")
        elif self.keep:
            log(f"  kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        log("bench_mount.py needs root (FUSE mounts, drop_caches, a private sshd)")
        return 2
    try:
        import pohmelfs  # noqa: F401
    except ImportError:
        log(f"{sys.executable} cannot import pohmelfs: run it with the project's .venv python")
        return 2
    cleanup = Cleanup()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    base = os.environ.get("TMPDIR") or "/var/tmp"
    tmp = cleanup.tmp = os.path.realpath(tempfile.mkdtemp(prefix="pohmelfs-bench-", dir=base))
    cleanup.keep = a.keep
    os.mkdir(os.path.join(tmp, "logs"))
    local = LocalTarget("local", os.path.join(tmp, "local"))
    os.mkdir(local.root)
    bench = Bench(a, tmp)
    status = 0
    try:
        log(f"work dir {tmp}")
        bench.make_tarball()
        targets: list[Target] = []
        if a.only != "pohmelfs":
            log("starting sshd on 127.0.0.1 and mounting SSHFS")
            sshfs = SshfsTarget(tmp)
            cleanup.targets.append(sshfs)  # before start: whatever starts gets stopped
            try:
                sshfs.start(install=not a.no_install)
            except BenchError as e:
                raise BenchError(f"SSHFS setup failed: {e}\n(--only pohmelfs skips SSHFS)") from e
            targets.append(sshfs)
            log(
                f"  SSHFS mounted on {sshfs.mnt} (sshd pid {sshfs.sshd.pid if sshfs.sshd else '?'}"
                f", port {sshfs.port}; sshfs pid {sshfs.daemon.pid if sshfs.daemon else '?'})"
            )
        if a.only != "sshfs":
            log("starting pohmelfs serve and mount")
            pohm = PohmelfsTarget(tmp, a.mount_opts)
            cleanup.targets.append(pohm)
            pohm.start()
            targets.append(pohm)
            log(
                f"  pohmelfs mounted on {pohm.mnt} (server {pohm.address}; mount pid "
                f"{pohm.daemon.pid if pohm.daemon else '?'})"
            )
        info = machine_info()
        if a.wait_idle > 0:
            wait_idle(0.25, a.wait_idle)
        bench.run_all(targets, local)
        rows = report(bench, info)
        if a.chart:
            from chart import write_chart

            try:
                write_chart(rows, a.chart, f"pohmelfs mount benchmark, {info['date']}, "
                            f"{info['nproc']} CPUs")  # fmt: skip
                log(f"chart saved to {a.chart}")
            except (ValueError, ImportError) as e:
                log(f"no chart: {e}")
        daemon_logs = unexpected_log_lines(targets)
        if bench.errors:
            status = 1
        if a.json:
            with open(a.json, "w") as f:
                json.dump(
                    {
                        "machine": info,
                        "params": vars(a),
                        "untar": bench.tar_info,
                        "random_io": "fio" if bench.use_fio else "python",
                        "background_cpus_busy": bench.loads,
                        "details": bench.details,
                        "daemon_log_lines": daemon_logs,
                        "rows": rows,
                    },
                    f,
                    indent=2,
                )
                f.write("\n")
            log(f"results saved to {a.json}")
    except KeyboardInterrupt:
        log("\ninterrupted")
        status = 130
    except BenchError as e:
        log(f"\nerror: {e}")
        status = 2
    finally:
        cleanup()
    return status


if __name__ == "__main__":
    sys.exit(main())
