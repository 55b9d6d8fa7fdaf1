"""Resync (client/resync.py, ``pohmelfs resync``): a server that missed changes is
made the same as a current one, file by file (contents, modes, owners, times,
extended attributes, symlinks, hard links), also while the current one is being
changed, and a second resync then finds nothing to do."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    SECRET_FILE,
    ServerProcess,
    address_of,
    make_client,
    root_of,
    same_view,
    server_processes,
    settle_times,
)
from pohmelfs import Client
from pohmelfs.client.resync import Progress, Resync
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(120)


def resync(source: Server | str, target: Server | str, **kw: Any) -> Progress:
    a = source if isinstance(source, str) else address_of(source)
    b = target if isinstance(target, str) else address_of(target)
    with make_client([a]) as src, make_client([b], unversioned=True) as dst:
        return Resync(src, dst, **kw).run()


def base_tree(c: Client) -> None:
    c.makedirs("a/b/c")
    c.mkdir("d")
    for n in range(20):
        with c.open(f"a/b/f{n}", "wb") as f:
            f.write(os.urandom(1000 * n))
    with c.open("d/big", "wb") as f:
        f.write(os.urandom(3 << 20))
    c.symlink("../d/big", "a/link")
    c.setxattr("d/big", "user.tag", b"v1")
    c.mkdir("gone")
    with c.open("gone/x", "wb") as f:
        f.write(b"x")
    with c.open("kind", "wb") as f:
        f.write(b"a file, to be a directory")
    settle_times(c, b"")


def missed_changes(c: Client) -> None:
    """What the stale server does not see."""
    with c.open("a/b/f3", "r+b") as f:
        f.seek(100)
        f.write(b"changed")
    with c.open("d/new", "wb") as f:
        f.write(b"new file\n")
    c.rename("a/b/f4", "d/f4-moved")
    c.unlink("a/b/f5")
    c.rmtree("gone")
    c.chmod("a/b/f6", 0o600)
    c.chown("a/b/f7", 1234, 5678)
    c.setxattr("d/big", "user.tag", b"v2")
    c.setxattr("d/big", "user.more", b"m")
    c.removexattr("d/big", "user.tag")
    c.link("d/big", "a/hard")
    c.link("d/big", "d/hard2")
    c.truncate("a/b/f8", 10)
    c.utime("a/b/f9", ns=(1_000_000_000, 2_000_000_000))
    c.unlink("a/link")
    c.symlink("elsewhere", "a/link")
    c.unlink("kind")
    c.makedirs("kind/inner")
    with c.open("d/sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    c.mknod("d/fifo", 0o640 | stat.S_IFIFO)
    c.chmod("a", 0o750)


def test_a_stale_server_is_made_the_same(pair: list[Server]) -> None:
    a, b = pair
    with make_client([address_of(a), address_of(b)]) as both:
        base_tree(both)
    with make_client([address_of(a)]) as only_a:
        missed_changes(only_a)
    (root_of(b) / "only-on-b").write_bytes(b"extra")  # (a name the source has not)
    assert same_view(root_of(a)) != same_view(root_of(b))
    done = resync(a, b)
    assert done.clean and done.passes == 2, done
    assert same_view(root_of(a)) == same_view(root_of(b))
    again = resync(a, b)  # the versions agree now: nothing to copy
    assert again.clean and again.passes == 1 and again.bytes == done.bytes - done.bytes
    assert again.seen == done.seen


def test_only_what_differs_is_copied(pair: list[Server]) -> None:
    a, b = pair
    with make_client([address_of(a), address_of(b)]) as both:
        base_tree(both)
    with make_client([address_of(a)]) as only_a, only_a.open("a/b/f2", "r+b") as f:
        f.write(b"!")
    seen: list[Progress] = []
    done = resync(a, b, progress=lambda s: seen.append(Progress(**vars(s))))
    first_pass = [s for s in seen if s.passes == 1]
    assert first_pass[-1].copied == 1 and done.bytes == 2000  # f2 alone
    assert (root_of(b) / "a/b/f2").read_bytes() == (root_of(a) / "a/b/f2").read_bytes()


def test_resync_while_the_source_is_being_changed(pair: list[Server]) -> None:
    """Writers, renames and removals on the source during the passes: the resync
    neither fails nor leaves the target different once they stop."""
    a, b = pair
    with make_client([address_of(a), address_of(b)]) as both:
        base_tree(both)
        for n in range(200):
            with both.open(f"d/many{n}", "wb") as f:
                f.write(os.urandom(2000))
        settle_times(both, b"")
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            with make_client([address_of(a)]) as c:
                n = 0
                while not stop.is_set() and n < 5000:
                    n += 1
                    with c.open(f"d/many{n % 200}", "r+b", buffering=0) as f:
                        f.pwrite(os.urandom(500), (n * 37) % 1500)
                    if n % 7 == 0:
                        with c.open(f"churn{n % 5}", "wb") as f:
                            f.write(os.urandom(n % 3000))
                    if n % 11 == 0:
                        c.rename(f"d/many{n % 200}", "d/renamed")
                        c.rename("d/renamed", f"d/many{n % 200}")
                    if n % 13 == 0 and c.exists(f"churn{n % 5}"):
                        c.unlink(f"churn{n % 5}")
        except BaseException as e:
            errors.append(e)

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        time.sleep(0.2)
        under_load = resync(a, b, max_passes=3)  # (may end not clean: it is still changing)
        assert under_load.passes >= 1
    finally:
        stop.set()
        writer.join(60)
    assert not errors, errors
    done = resync(a, b)
    assert done.clean
    assert same_view(root_of(a)) == same_view(root_of(b))


def test_pohmelfs_resync_after_a_server_was_killed(tmp_path: Path) -> None:
    """The issue's case: a server is SIGKILLed during writes, comes back stale on its
    port, and ``pohmelfs resync`` mends it."""
    a, b = server_processes(tmp_path, 2)
    try:
        with make_client([a.address, b.address]) as c:
            base_tree(c)
            os.kill(b.pid, signal.SIGKILL)
            b.proc.wait(10)
            missed_changes(c)  # (B leaves the client's set: no error here)
        b = ServerProcess(tmp_path / "e1", "--state-dir", str(tmp_path / "state1"),
                          listen=b.address, retry_for=10)  # fmt: skip
        r = subprocess.run([sys.executable, "-m", "pohmelfs.cli", "resync", a.address, b.address,
                            "--secret-file", SECRET_FILE],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "is the same as" in r.stdout and "2 passes" in r.stdout, r.stdout
        assert same_view(tmp_path / "e0") == same_view(tmp_path / "e1")
    finally:
        for s in (a, b):
            s.stop()


def test_resync_of_an_unreachable_server_is_one_line(pair: list[Server]) -> None:
    r = subprocess.run([sys.executable, "-m", "pohmelfs.cli", "resync", address_of(pair[0]),
                        "127.0.0.1:1", "--secret-file", SECRET_FILE, "--timeout", "2"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "127.0.0.1:1" in r.stderr


# --- races a pass meets (found by review) -------------------------------------------


class BusyOnce:
    """The source, where the first look at each of ``paths`` finds a change of it under
    way (as a client's write that ends a moment later would)."""

    def __init__(self, client: Client, paths: tuple[bytes, ...]) -> None:
        self._c, self._paths, self._seen = client, paths, False

    def version(self, path: bytes) -> tuple[int, int]:
        v, busy = self._c.version(path)
        if path in self._paths and not self._seen:
            self._seen = True
            return v, 1
        return v, busy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def test_hard_links_stay_one_file_when_the_first_name_was_busy(pair: list[Server]) -> None:
    a, b = pair
    with make_client([address_of(a)]) as src, make_client([address_of(b)], unversioned=True) as dst:
        src.mkdir("d")
        with src.open("d/a", "wb") as f:
            f.write(b"one")
        src.link("d/a", "d/b")
        done = Resync(BusyOnce(src, (b"d/a", b"d/b")), dst).run()  # type: ignore[arg-type]
        assert done.clean and done.passes >= 2
        ta, tb = (root_of(b) / "d" / n for n in ("a", "b"))
        assert ta.stat().st_ino == tb.stat().st_ino and ta.stat().st_nlink == 2
        assert ta.read_bytes() == b"one"


class ReplacedAfterListing:
    """The source, where a client replaces ``name`` right after the pass listed it."""

    def __init__(self, client: Client, name: str, how: str) -> None:
        self._c, self._name, self._how, self._done = client, name, how, False

    def readdir(self, path: bytes) -> list[Any]:
        out = self._c.readdir(path)
        if not self._done and any(e.name == self._name.encode() for e in out):
            self._done = True
            self._c.unlink(self._name)
            if self._how == "directory":
                self._c.mkdir(self._name)
            else:
                self._c.symlink("elsewhere", self._name)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


@pytest.mark.parametrize("how", ["directory", "symlink"])
def test_a_file_replaced_under_the_pass_goes_again(pair: list[Server], how: str) -> None:
    a, b = pair
    with make_client([address_of(a)]) as src, make_client([address_of(b)], unversioned=True) as dst:
        with src.open("f", "wb") as f:
            f.write(b"data")
        done = Resync(ReplacedAfterListing(src, "f", how), dst).run()  # type: ignore[arg-type]
        assert done.clean
    assert same_view(root_of(a)) == same_view(root_of(b))


def test_a_directory_changed_all_the_time_still_lets_a_pass_be_clean(pair: list[Server]) -> None:
    """A directory's version covers only its names and attributes: it is set before
    its tree is walked, so a name made in the root every 100 ms (by a client writing
    to both, as once the target joined) does not keep every pass unclean."""
    a, b = pair
    with make_client([address_of(a)]) as src:
        for n in range(20):
            src.makedirs(f"t{n}")
            for k in range(40):
                with src.open(f"t{n}/f{k}", "wb") as f:
                    f.write(b"x")
    stop = threading.Event()

    def churn() -> None:
        with make_client([address_of(a), address_of(b)]) as c:
            n = 0
            while not stop.is_set() and n < 2000:
                n += 1
                c.mkdir(f"spool{n}")
                time.sleep(0.1)

    t = threading.Thread(target=churn)
    t.start()
    try:
        done = resync(a, b, max_passes=6)
    finally:
        stop.set()
        t.join(30)
    assert done.clean, done
