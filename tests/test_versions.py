"""Versions of objects (server/versions.py): every change bumps them on every
replica alike, in whatever order the replicas applied the changes; a change one
server missed leaves it different there; they outlive the server; and only a
resync's root may set them."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import (
    SECRET_FILE,
    TRUSTED,
    ServerProcess,
    address_of,
    make_client,
    start_server,
    stopping,
    wait_until,
)
from pohmelfs.client.resync import Resync
from pohmelfs.protocol import Command
from pohmelfs.security.config import ServerSecurity
from pohmelfs.security.policy import ClientPolicy
from pohmelfs.server.peers import MAX_MARKS
from pohmelfs.server.service import Server
from pohmelfs.server.versionfile import VersionFile, open_versions, state_file
from pohmelfs.server.versions import MASK, Versions, change_id

pytestmark = pytest.mark.timeout(60)

KEY_A, KEY_B = (1, 10), (1, 11)


# --- the store ---------------------------------------------------------------------


def test_a_version_is_the_sum_of_the_changes_in_any_order() -> None:
    ids = [change_id(b"s" * 16, xid) for xid in range(1, 6)]
    assert all(0 < i <= MASK for i in ids) and len(set(ids)) == 5
    one, other = Versions(), Versions()
    for i in ids:
        one.end(one.begin([KEY_A]), i)
    for i in reversed(ids):
        other.end(other.begin([KEY_A]), i)
    assert one.get(KEY_A) == other.get(KEY_A) == (sum(ids) & MASK, 0)
    missed = Versions()
    for i in ids[1:]:
        missed.end(missed.begin([KEY_A]), i)
    assert missed.get(KEY_A) != one.get(KEY_A)
    assert one.get(KEY_B) == (0, 0)  # never changed: 0 everywhere


def test_busy_while_a_change_runs_and_a_failed_one_is_not_counted() -> None:
    v = Versions()
    busy = v.begin([KEY_A, KEY_A, KEY_B])
    assert v.get(KEY_A) == (0, 1) and v.get(KEY_B) == (0, 1)
    assert not v.set_if(KEY_A, 0, 5)  # refused while a change runs
    v.end(busy, None)  # it failed
    assert v.get(KEY_A) == (0, 0) and v.get(KEY_B) == (0, 0)
    assert v.set_if(KEY_A, 0, 5) and v.get(KEY_A) == (5, 0)
    assert not v.set_if(KEY_A, 0, 6) and v.get(KEY_A) == (5, 0)


def test_a_create_sets_the_new_objects_version() -> None:
    v = Versions()
    v.end(v.begin([KEY_A]), 7)
    v.end(v.begin([KEY_B]), 7)  # an old object's inode...
    v.end(v.begin([KEY_A]), 9, created=KEY_B)  # ...reused by a create
    assert v.get(KEY_B) == (9, 0) and v.get(KEY_A) == (16, 0)


def test_the_version_file_keeps_them_and_has_one_owner(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sqlite")
    v = Versions(VersionFile(path, empty_export=True))
    v.end(v.begin([KEY_A]), 41)
    v.set_if(KEY_B, 0, MASK)
    with pytest.raises(OSError) as e:
        VersionFile(path)
    assert e.value.errno == errno.EBUSY and "another server" in str(e.value)
    v.close()
    again = Versions(VersionFile(path))
    try:
        assert again.get(KEY_A) == (41, 0) and again.get(KEY_B) == (MASK, 0)
        again.end(again.begin([KEY_A]), 1)
        assert again.get(KEY_A) == (42, 0)
    finally:
        again.close()


def test_bumps_are_written_behind_without_a_close(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sqlite")
    v = Versions(VersionFile(path, empty_export=True))
    try:
        v.end(v.begin([KEY_A]), 3)
        db = sqlite3.connect(path)
        wait_until(lambda: db.execute("SELECT version FROM versions").fetchall() == [(3,)],
                   what="the bump written")  # fmt: skip
        db.close()
    finally:
        v.close()


def test_the_state_directory_is_never_inside_the_export(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    with pytest.raises(OSError, match="inside the export"):
        open_versions(str(export / ".state"), str(export))
    with pytest.raises(OSError, match="inside the export"):
        open_versions(str(export), str(export))
    name = state_file(str(tmp_path / "state"), str(export))
    assert (
        name.startswith(str(tmp_path / "state"))
        and oct(os.stat(tmp_path / "state").st_mode)[-3:] == "700"
    )
    assert state_file(str(tmp_path / "state"), str(tmp_path)) != name  # one per export


# --- through servers -------------------------------------------------------------


def versions_of(srv: Server, paths: list[str]) -> dict[str, int]:
    with make_client([address_of(srv)]) as c:
        return {path: c.version(path)[0] for path in paths}


PATHS = ["", "d", "d/f", "d/g", "d/link", "d/sub", "d/sub/x", "d/moved"]


def changes(c: object) -> None:
    c.makedirs("d/sub")  # type: ignore[attr-defined]
    with c.open("d/f", "wb") as f:  # type: ignore[attr-defined]
        f.write(b"x" * 100_000)
    with c.open("d/g", "wb") as f:  # type: ignore[attr-defined]
        f.write(b"g")
    with c.open("d/sub/x", "wb") as f:  # type: ignore[attr-defined]
        f.write(b"x")
    c.symlink("f", "d/link")  # type: ignore[attr-defined]
    c.chmod("d/f", 0o640)  # type: ignore[attr-defined]
    c.setxattr("d/g", "user.a", b"1")  # type: ignore[attr-defined]
    c.utime("d/g", ns=(1, 2))  # type: ignore[attr-defined]
    c.truncate("d/f", 10)  # type: ignore[attr-defined]
    c.rename("d/g", "d/moved")  # type: ignore[attr-defined]


def test_replicas_have_the_same_versions_after_the_same_changes(pair: list[Server]) -> None:
    with make_client([address_of(s) for s in pair]) as c:
        changes(c)
    paths = [p for p in PATHS if p != "d/g"]
    a, b = (versions_of(s, paths) for s in pair)
    assert a == b
    assert all(a[p] for p in paths), a  # every one of them was changed or made


def test_concurrent_writers_in_different_orders_leave_equal_versions(
    pair: list[Server],
) -> None:
    """Two clients write disjoint ranges of one file at once through both servers:
    the servers may apply them in different orders, and still agree."""
    addresses = [address_of(s) for s in pair]
    with make_client(addresses) as c:
        with c.open("shared", "wb") as f:
            f.truncate(64 << 10)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with make_client(addresses) as c, c.open("shared", "r+b", buffering=0) as f:
                for i in range(50):
                    f.pwrite(bytes([n]) * 512, (n * 50 + i) * 512)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    a, b = (versions_of(s, ["shared"]) for s in pair)
    assert a == b and a["shared"]


def test_a_change_one_server_missed_leaves_it_different(pair: list[Server]) -> None:
    with make_client([address_of(s) for s in pair]) as c:
        changes(c)
    with make_client([address_of(pair[1])]) as alone:  # only the second server hears it
        alone.chmod("d/f", 0o600)
    a, b = (versions_of(s, ["d/f", "d/moved", "d"]) for s in pair)
    assert a["d/f"] != b["d/f"]
    assert a["d/moved"] == b["d/moved"] and a["d"] == b["d"]


def test_a_failed_change_counts_nothing(pair: list[Server]) -> None:
    srv = pair[0]
    with make_client([address_of(srv)]) as c:
        c.mkdir("d")
        before = c.version("d")
        with pytest.raises(FileExistsError):
            c.mkdir("d")
        with pytest.raises(FileNotFoundError):
            c.unlink("d/none")
        assert c.version("d") == before
        with pytest.raises(FileNotFoundError):
            c.version("nothing")


def test_set_version_only_if_unchanged(pair: list[Server]) -> None:
    with make_client([address_of(pair[0])]) as c:
        c.mkdir("d")
        v, busy = c.version("d")
        assert busy == 0
        c.set_version("d", v, 12345)
        assert c.version("d") == (12345, 0)
        with pytest.raises(OSError) as e:
            c.set_version("d", v, 1)  # it is no longer v
        assert e.value.errno == errno.ESTALE
        assert c.version("d") == (12345, 0)


def test_an_unversioned_client_leaves_versions_alone(pair: list[Server]) -> None:
    with make_client([address_of(pair[0])]) as c:
        c.mkdir("d")
        with c.open("d/f", "wb") as f:
            f.write(b"1")
        before = {p: c.version(p) for p in ("d", "d/f")}
    with make_client([address_of(pair[0])], unversioned=True) as quiet:
        with quiet.open("d/f", "r+b") as f:
            f.write(b"2")
        quiet.chmod("d/f", 0o600)
        quiet.setxattr("d", "user.x", b"y")
        assert {p: quiet.version(p) for p in ("d", "d/f")} == before


@pytest.mark.parametrize("how", ["squashed", "read-only"])
def test_only_a_trusted_root_sets_versions(tmp_path: Path, how: str) -> None:
    policy = (ClientPolicy(squash="root_squash") if how == "squashed"
              else ClientPolicy(squash="no_root_squash", read_only=True))  # fmt: skip
    security = ServerSecurity.from_options(secret_file=SECRET_FILE, policy=policy)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "d").mkdir()
    with stopping(start_server(tmp_path / "e", security=security)) as srv:
        with make_client([address_of(srv)]) as c:
            v, _ = c.version("d")
            with pytest.raises(OSError) as e:
                c.set_version("d", v, 99)
            assert e.value.errno == (errno.EPERM if how == "squashed" else errno.EROFS)
        with make_client([address_of(srv)], unversioned=True) as quiet:
            with pytest.raises(OSError) as e:
                quiet.mkdir("d2")
            assert e.value.errno == (errno.EPERM if how == "squashed" else errno.EROFS)
    assert TRUSTED.keys  # (the trusted key is another test's: this one's is not)


# --- a server process: state directory and restarts --------------------------------


def test_versions_outlive_a_clean_stop(tmp_path: Path) -> None:
    export, state = tmp_path / "export", tmp_path / "state"
    export.mkdir()
    srv = ServerProcess(export, "--state-dir", str(state))
    try:
        with make_client([srv.address]) as c:
            assert c.version("")[0] == 0  # (a new, empty export: its history is known)
            c.mkdir("d")
            c.chmod("d", 0o700)
            kept = c.version("d")[0]
            root = c.version("")[0]
        srv.stop()
        srv = ServerProcess(export, "--state-dir", str(state))
        with make_client([srv.address]) as c:
            assert c.version("d")[0] == kept and c.version("")[0] == root
    finally:
        srv.stop()


def test_after_a_sigkill_every_version_is_unknown(tmp_path: Path) -> None:
    """Bumps are written behind: a SIGKILL may lose some while the data stayed. So
    the next start believes none of them: every object takes a new random version,
    which no other server has (a resync then copies everything), also objects the
    server never changed."""
    export, state = tmp_path / "export", tmp_path / "state"
    export.mkdir()
    srv = ServerProcess(export, "--state-dir", str(state))
    try:
        with make_client([srv.address]) as c:
            c.mkdir("d")
            with c.open("f", "wb") as f:
                f.write(b"x")
            before = {p: c.version(p)[0] for p in ("", "d", "f")}
        os.kill(srv.pid, signal.SIGKILL)
        srv.proc.wait(10)
        srv = ServerProcess(export, "--state-dir", str(state))
        with make_client([srv.address]) as c:
            after = {p: c.version(p)[0] for p in ("", "d", "f")}
        assert not set(before.values()) & set(after.values()), (before, after)
        assert len(set(after.values())) == 1  # (the new epoch)
        srv.stop()
        srv = ServerProcess(export, "--state-dir", str(state))  # a clean stop: believed
        with make_client([srv.address]) as c:
            assert {p: c.version(p)[0] for p in ("", "d", "f")} == after
    finally:
        srv.stop()


def test_a_stale_server_never_looks_current_after_the_current_one_was_killed(
    tmp_path: Path,
) -> None:
    """(Found by review.) T misses a write that S applies, and S is killed before it
    wrote the bump: S must not come back with T's version, or resync leaves T stale."""
    ex = [tmp_path / "s", tmp_path / "t"]
    st = [str(tmp_path / "state-s"), str(tmp_path / "state-t")]
    for d in ex:
        d.mkdir()
    s = ServerProcess(ex[0], "--state-dir", st[0])
    t = ServerProcess(ex[1], "--state-dir", st[1])
    try:
        with make_client([s.address, t.address], timeout=3, retry_every=0) as c:
            with c.open("f", "wb") as f:
                f.write(b"old")
        os.kill(t.pid, signal.SIGKILL)
        t.proc.wait(10)
        with make_client([s.address], timeout=3, retry_every=0) as c:
            with c.open("f", "r+b", buffering=0) as f:
                f.write(b"NEW")
        os.kill(s.pid, signal.SIGKILL)  # (at once: within the write-behind delay)
        s.proc.wait(10)
        s = ServerProcess(ex[0], "--state-dir", st[0])
        t = ServerProcess(ex[1], "--state-dir", st[1])
        with make_client([s.address]) as src, make_client([t.address], unversioned=True) as dst:
            assert src.version("f") != dst.version("f")
            assert Resync(src, dst).run().clean
        assert (ex[1] / "f").read_bytes() == b"NEW"
    finally:
        s.stop()
        t.stop()


def test_serve_refuses_a_state_directory_it_cannot_use(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pohmelfs.cli", "serve", str(export),
                               "--listen", "127.0.0.1:0", "--secret-file", SECRET_FILE, *args],
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    r = serve("--state-dir", str(export / "state"))
    assert r.returncode != 0 and "inside the export" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    first = ServerProcess(export, "--state-dir", str(tmp_path / "state"))
    try:
        r = serve("--state-dir", str(tmp_path / "state"))
        assert r.returncode != 0 and "another server" in r.stderr
    finally:
        first.stop()


# --- servers behind (server/peers.py) ----------------------------------------------

T, U = b"10.0.0.2:7400", b"10.0.0.3:7400"


def test_a_server_left_out_is_marked_behind_until_cleared() -> None:
    peers = Versions().peers
    peers.missing(1, [T])
    assert peers.behind() == {}  # (nothing missed yet)
    peers.applied(1)  # a change that did not reach T
    gen = peers.behind()[T]
    peers.applied(1)
    assert peers.behind()[T] == gen + 1
    assert not peers.clear(T, gen)  # moved since the resync read it
    assert not peers.clear(T, gen + 1)  # session 1 still leaves it out
    peers.missing(1, [])  # it reaches T again (joined as resyncing)
    assert peers.clear(T, gen + 1) and T not in peers.behind()
    peers.applied(1)
    assert peers.behind() == {}
    peers.missing(2, [U], now=True)  # (it left in the middle of a change)
    peers.ended(2)  # (the mark stays: the changes it missed are still missed)
    assert U in peers.behind() and peers.clear(U, peers.behind()[U])


def test_marks_outlive_any_stop(tmp_path: Path) -> None:
    path = str(tmp_path / "v.sqlite")
    killed = (  # a server that marks, then dies without closing its versions file
        "import os, sys\n"
        "from pohmelfs.server.versionfile import VersionFile\n"
        "from pohmelfs.server.versions import Versions\n"
        "v = Versions(VersionFile(sys.argv[1], empty_export=True))\n"
        f"v.peers.missing(1, [{T!r}, {U!r}], now=True)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", killed, path], check=True, timeout=30)
    again = Versions(VersionFile(path))
    try:
        assert set(again.peers.behind()) == {T, U}
    finally:
        again.close()


@pytest.mark.parametrize("now", [True, False])
def test_marks_are_bounded(now: bool) -> None:
    """Also those a session only names, to be made by its next change (found by review)."""
    peers = Versions().peers
    with pytest.raises(OSError) as e:
        for n in range(300):
            peers.missing(n, [b"10.1.%d.%d:7400" % (n // 250, n % 250)], now=now)
    assert e.value.errno == errno.ENOSPC
    for n in range(300):
        peers.applied(n)
    assert len(peers.behind()) <= MAX_MARKS


def test_only_a_key_that_believes_root_marks_servers_behind(tmp_path: Path) -> None:
    security = ServerSecurity.from_options(secret_file=SECRET_FILE,
                                           policy=ClientPolicy(squash="root_squash"))  # fmt: skip
    (tmp_path / "e").mkdir()
    with stopping(start_server(tmp_path / "e", security=security)) as srv:
        with make_client([address_of(srv)]) as c:
            conn = c.connection().lock_server  # type: ignore[attr-defined]
            with pytest.raises(PermissionError):
                conn.call(Command.MISSING, names=[T], now=1)
        assert srv.shared.versions.peers.behind() == {}
