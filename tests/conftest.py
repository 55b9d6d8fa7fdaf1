"""Shared fixtures: servers on 127.0.0.1 (in-process or as a child process) and clients."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from pohmelfs import Client
from pohmelfs.security.config import ClientSecurity, ServerSecurity
from pohmelfs.security.keys import write_secret
from pohmelfs.security.policy import ClientPolicy
from pohmelfs.server.export import LocalExport
from pohmelfs.server.service import Server

# Every test server requires a key, as a real one does: this one, for the whole run.
# Its key believes a claimed root (no_root_squash), like the embedded default's own
# mount, and setuid bits are kept, so tests run as root see POSIX as a local root does;
# tests/test_security.py makes servers with the defaults.
_KEYS = tempfile.mkdtemp(prefix="pohmelfs-test-keys-")
SECRET_FILE = os.path.join(_KEYS, "secret")
write_secret(SECRET_FILE)
TRUSTED = ServerSecurity.from_options(
    secret_file=SECRET_FILE, policy=ClientPolicy(squash="no_root_squash")
)
CLIENT_KEY = ClientSecurity.from_options(secret_file=SECRET_FILE)  # for raw Connections
SERVE_KEY = ("--secret-file", SECRET_FILE, "--squash", "no_root_squash", "--allow-setuid")
# Versions files of the servers the tests start (never /var/lib/pohmelfs).
os.environ.setdefault("POHMELFS_STATE_DIR", os.path.join(_KEYS, "state"))


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_process(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads has stopped."""
    os.kill(pid, signal.SIGSTOP)

    def all_stopped() -> bool:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append(task.joinpath("stat").read_text().rsplit(") ", 1)[1][0])
            except (OSError, IndexError):
                continue
        return bool(states) and all(st in "tT" for st in states)

    wait_until(all_stopped, what=f"process {pid} to stop")


def start_server(root: Path, read_only: bool = False, **kw: object) -> Server:
    """An in-process server on 127.0.0.1 that takes the test key (``security``: others)."""
    export = LocalExport(str(root), read_only=read_only)
    kw.setdefault("security", TRUSTED)
    kw.setdefault("allow_setuid", True)  # POSIX as a local root sees it; test_security: not
    return Server(export, "127.0.0.1", 0, **kw).start()  # type: ignore[arg-type]


@contextmanager
def stopping(srv: Server) -> Iterator[Server]:
    """``srv`` for a ``with`` block: stopped, its export closed, pass or fail."""
    try:
        yield srv
    finally:
        srv.stop()
        srv.export.close()


@contextmanager
def in_process_servers(top: Path, count: int) -> Iterator[list[Server]]:
    """``count`` in-process servers, each on its own export (``top/export0``...),
    stopped at the end."""
    with ExitStack() as stack:
        started = []
        for n in range(count):
            d = top / f"export{n}"
            d.mkdir()
            os.chmod(d, 0o777)
            started.append(stack.enter_context(stopping(start_server(d))))
        yield started


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[Server]]:
    """Two in-process servers, each on its own export (``export0``, ``export1``)."""
    with in_process_servers(tmp_path, 2) as started:
        yield started


def make_client(*args: Any, **kw: Any) -> Client:
    """A library client with the test key."""
    kw.setdefault("secret_file", SECRET_FILE)
    return Client(*args, **kw)


def held_file(client: Client, path: str, exclusive: bool = False,
              mode: str = "r+b") -> tuple[Any, threading.Event]:  # fmt: skip
    """A file open through ``client`` under a cache lock, and what is set when the
    lock is revoked."""
    f = client.open(path, mode, buffering=0)
    revoked = threading.Event()
    f.on_revoke = lambda *_: revoked.set()
    f.cache_lock(exclusive=exclusive)
    return f, revoked


def address_of(server: Server) -> str:
    return "%s:%d" % server.address


def root_of(srv: Server) -> Path:
    """An in-process server's export directory."""
    return Path(srv.export.root)  # type: ignore[attr-defined]


def routed(c: Client, f: object) -> str | None:
    """The server ``f``'s reads go to, if not the lock server (``client/readroutes.py``)."""
    conn, oid = f.handle()  # type: ignore[attr-defined]
    route = conn._reads.route(oid)
    return None if route is None else route[0].address


def bytes_from(c: Client) -> dict[str, int]:
    """Payload bytes ``c`` received from each of its servers."""
    return {s["address"]: s["bytes_in"] for s in c.server_stats()}


@pytest.fixture
def server(export_dir: Path) -> Iterator[Server]:
    with stopping(start_server(export_dir)) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = make_client([address_of(server)], timeout=10, umask=0o022)
    yield c
    c.close()


@pytest.fixture
def ab(server: Server) -> Iterator[tuple[Client, Client]]:
    """Two library clients of one server, as two machines would be."""
    a, b = make_client([address_of(server)]), make_client([address_of(server)])
    yield a, b
    a.close()
    b.close()


class ServerProcess:
    """``pohmelfs serve`` as a child process, stopped by PID.

    ``listen`` defaults to a free port; given a fixed address (a restart on the
    old port), starting is retried for ``retry_for`` seconds while the port is busy.
    """

    def __init__(self, root: Path, *extra: str, listen: str = "127.0.0.1:0",
                 retry_for: float = 0.0) -> None:  # fmt: skip
        deadline = time.monotonic() + retry_for
        # The log goes to a file beside the export (a pipe nobody reads would fill up
        # and stop the server); a test may read it.
        self.log = root.parent / f"server-{root.name}.log"
        while True:
            with open(self.log, "a") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pohmelfs.cli", "--log-level", "info", "serve",
                     str(root), "--listen", listen, *_with_key(extra)],
                    stdout=subprocess.PIPE, stderr=log, text=True,
                )  # fmt: skip
            self.pid = self.proc.pid
            line = _read_line(self.proc, 20)
            m = re.search(r" on ([\d.]+:\d+)", line)
            if m:
                self.address = m.group(1)
                return
            self.stop()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"server did not start: {line!r} {self.log.read_text()!r}")
            time.sleep(0.2)  # the old port may take a moment to be free

    def stop(self) -> int:
        return terminate(self.proc, 10)


def server_processes(top: Path, count: int) -> list[ServerProcess]:
    """``count`` servers as processes, each on its own export (``top/e0``...) and state
    directory (``top/state0``...); the caller stops them (those started are, if one
    cannot start)."""
    started: list[ServerProcess] = []
    try:
        for n in range(count):
            d = top / f"e{n}"
            d.mkdir()
            started.append(ServerProcess(d, "--state-dir", str(top / f"state{n}")))
    except BaseException:
        for s in started:
            s.stop()
        raise
    return started


def _with_key(extra: tuple[str, ...]) -> tuple[str, ...]:
    """Server arguments: the test key unless they name their own security."""
    own = {"--secret-file", "--exports", "--insecure"}
    return extra if own & set(extra) else (*SERVE_KEY, *extra)


@pytest.fixture
def server_proc(export_dir: Path) -> Iterator[ServerProcess]:
    sp = ServerProcess(export_dir)
    yield sp
    sp.stop()


def terminate(proc: subprocess.Popen[str], grace: float) -> int:
    """Stop a child by PID: wake it if frozen, SIGTERM, then SIGKILL after ``grace``."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first line of output, or "" if it says nothing within ``timeout``."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()


class MountProcess:
    """``pohmelfs mount --foreground`` as a child process.

    Stopping it is bounded and unconditional: SIGTERM (the daemon unmounts),
    then SIGKILL, then a lazy unmount if the mount is still there.
    """

    def __init__(self, servers: str, mountpoint: Path, *options: str) -> None:
        self.mountpoint = Path(mountpoint)
        if not any(o.startswith(("secret_file=", "tls_")) for o in options):
            options = (*options, f"secret_file={SECRET_FILE}")
        opts = [a for o in options for a in ("-o", o)]
        self.log = self.mountpoint.parent / f"mount-{self.mountpoint.name}.log"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pohmelfs.cli", "mount", servers, str(mountpoint),
                 "--foreground", *opts],
                stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip
        self.pid = self.proc.pid
        line = _read_line(self.proc, 20)
        if "mounted" not in line:
            self.stop()
            raise RuntimeError(f"mount did not come up: {line!r} {self.log.read_text()!r}")

    def stop(self) -> int | None:
        from pohmelfs.fuse import device

        try:
            terminate(self.proc, 15)
        except subprocess.TimeoutExpired:
            # Not even SIGKILL ends it: a thread is stuck in the kernel waiting on its
            # own mount. Aborting the FUSE connection fails every request of it.
            abort_fuse_connection(str(self.mountpoint))
            self.proc.wait(10)
        if device.is_mounted(str(self.mountpoint)):
            try:
                device.unmount(str(self.mountpoint), lazy=True)
            except OSError:
                pass
        self._remove_pid_file()
        return self.proc.returncode

    def _remove_pid_file(self) -> None:
        """A daemon that was killed leaves its pid file: removed if it names it."""
        from pohmelfs.fuse.mount import pid_file

        path = pid_file(str(self.mountpoint))
        try:
            with open(path) as f:
                if f.read().strip() == str(self.pid):
                    os.unlink(path)
        except OSError:
            pass


def abort_fuse_connection(mountpoint: str) -> None:
    """Abort a FUSE mount's connection (/sys/fs/fuse/connections/N/abort), found by
    its device in /proc/self/mountinfo (a stat of a dead mount would hang)."""
    from pohmelfs.fuse import device

    bdi = device.bdi_of(mountpoint)
    if bdi is None:
        return
    abort = Path("/sys/fs/fuse/connections", bdi.split(":")[1], "abort")
    if not abort.exists():  # fusectl is not mounted here yet
        subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"],
                       check=False, capture_output=True)  # fmt: skip
    try:
        abort.write_text("1")
    except OSError:
        pass


def _fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


NEEDS_FUSE = "needs /dev/fuse and root (never skipped in CI)"
requires_fuse = pytest.mark.skipif(
    not _fuse_available() and not os.environ.get("CI"), reason=NEEDS_FUSE
)

# The tiers (pyproject.toml's markers): ``pytest -m unit``, ``-m integration``,
# ``-m "not mount"``. Unit tests need no server; integration tests run servers
# in-process or as child processes on 127.0.0.1 (and the FUSE layer against a fake
# kernel); mount tests need a kernel mount (the ``requires_fuse`` ones).
UNIT_FILES = {"test_protocol.py", "test_exchange.py", "test_tags.py", "test_fuse_kernel.py",
              "test_coherent_state.py", "test_layers.py", "test_hello.py",
              "test_fanotify.py", "test_stamps.py", "test_inotify.py",
              "test_serverset.py", "test_replycache.py", "test_resend.py"}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        mounts = any(m.name == "skipif" and m.kwargs.get("reason") == NEEDS_FUSE
                     for m in item.iter_markers())  # fmt: skip
        if mounts:
            item.add_marker(pytest.mark.mount)
        elif item.path.name in UNIT_FILES:
            item.add_marker(pytest.mark.unit)
        else:
            item.add_marker(pytest.mark.integration)


class Mounted:
    """A server process exporting ``export`` and a mount of it at ``mnt``;
    ``server_args`` go to ``pohmelfs serve``."""

    def __init__(self, root: Path, *options: str, server_args: tuple[str, ...] = ()) -> None:
        self.export = root / "export"
        self.mnt = root / "mnt"
        self.export.mkdir(exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        os.chmod(self.export, 0o777)
        self.server = ServerProcess(self.export, *server_args)
        try:
            self.mount = MountProcess(self.server.address, self.mnt, *options)
        except BaseException:
            self.server.stop()
            raise

    def stop(self) -> None:
        try:
            self.mount.stop()
        finally:
            self.server.stop()


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    """One server and mount shared by a test module (allow_other, default_permissions)."""
    extra = os.environ.get("POHMELFS_TEST_MOUNT_OPTIONS", "").split()  # to try other modes
    m = Mounted(tmp_path_factory.mktemp("mounted"), "allow_other", *extra)
    yield m
    m.stop()


@pytest.fixture
def mnt(mounted: Mounted, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    """A fresh directory for one test: (path through the mount, same path in the export)."""
    name = re.sub(r"[^\w.-]", "_", request.node.name)[:100]
    (mounted.export / name).mkdir(mode=0o777)
    os.chmod(mounted.export / name, 0o777)
    yield mounted.mnt / name, mounted.export / name


class TwoMounts:
    """One server process and ``count`` mounts of its export (``a``, ``b``, ``c``...
    in ``dirs``), as that many client machines would have; ``server_args`` go to
    ``pohmelfs serve``."""

    def __init__(self, root: Path, *options: str, server_args: tuple[str, ...] = (),
                 count: int = 2) -> None:  # fmt: skip
        self.export = root / "export"
        self.dirs = [root / "abcdefgh"[i] for i in range(count)]
        self.a, self.b = self.dirs[0], self.dirs[1]
        for d in (self.export, *self.dirs):
            d.mkdir()
        self.server = ServerProcess(self.export, *server_args)
        self.mounts: list[MountProcess] = []
        try:
            for d in self.dirs:
                self.mounts.append(MountProcess(self.server.address, d, *options))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for m in self.mounts:
            m.stop()
        self.server.stop()


def tree_snapshot(top: Path, skip: Path | None = None) -> dict[str, Any]:
    """Everything observable about a tree, keyed by relative path."""
    out: dict[str, Any] = {}

    def record(p: Path) -> None:
        st = os.lstat(p)
        entry: dict[str, Any] = {
            "mode": st.st_mode,
            "ino": st.st_ino,
            "nlink": st.st_nlink,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "size": st.st_size,
            "mtime": st.st_mtime_ns,
            "ctime": st.st_ctime_ns,
        }
        if stat.S_ISREG(st.st_mode):
            entry["sha"] = hashlib.sha256(p.read_bytes()).hexdigest()
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(p)
        else:
            entry["xattrs"] = {n: os.getxattr(p, n) for n in sorted(os.listxattr(p))}
        out[str(p.relative_to(top))] = entry

    record(top)
    for dirpath, dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        if skip is not None and d == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            if skip is not None and d / name == skip:
                continue
            record(d / name)
    return out


def same_view(top: Path) -> dict[str, Any]:
    """All but what each filesystem gives by itself (inode numbers, ctimes, the
    size of a directory), with the names that share an inode."""
    view = tree_snapshot(top)
    inodes: dict[int, list[str]] = defaultdict(list)
    for name, entry in view.items():
        inodes[entry.pop("ino")].append(name)
        entry.pop("ctime")
        if stat.S_ISDIR(entry["mode"]):
            entry.pop("size")
    for names in inodes.values():
        for name in names:
            view[name]["names"] = sorted(names)
    view.pop(".")["mode"]  # (the export's own directory: the fixture made it)
    return view


def settle_times(c: Client, path: bytes) -> None:
    """The same times on every server (each gives a change its own clock's time)."""
    for e in c.readdir(path):
        child = path + b"/" + e.name if path else e.name
        if stat.S_ISDIR(e.attr.mode):
            settle_times(c, child)
        c.utime(child, ns=(10**18, 10**18 + len(child)))
