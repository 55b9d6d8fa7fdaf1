"""Two mounts with -o coherent: reads see the latest write that returned on the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SECRET_FILE, TwoMounts, make_client, requires_fuse, stop_process, wait_until

pytestmark = requires_fuse


@pytest.fixture(scope="module")
def cm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMounts]:
    c = TwoMounts(tmp_path_factory.mktemp("coherent"), "coherent")
    yield c
    c.stop()


def test_read_after_write_across_mounts(cm: TwoMounts) -> None:
    (cm.a / "f").write_bytes(b"start")
    wa = os.open(cm.a / "f", os.O_RDWR)
    rb = os.open(cm.b / "f", os.O_RDONLY)
    try:
        assert os.pread(rb, 100, 0) == b"start"  # now cached on b
        for i in range(30):
            value = f"version {i} ".encode() * (i + 1)
            os.pwrite(wa, value, 0)  # returns: every later read anywhere must see it
            assert os.pread(rb, len(value), 0) == value
            assert os.fstat(rb).st_size >= len(value)
            assert os.stat(cm.b / "f").st_size == os.fstat(wa).st_size
    finally:
        os.close(wa)
        os.close(rb)


def test_kept_cache_is_still_right_after_another_mount_wrote(cm: TwoMounts) -> None:
    (cm.a / "g").write_bytes(b"one")
    assert (cm.b / "g").read_bytes() == b"one"  # b caches it, and keeps it across opens
    assert (cm.b / "g").read_bytes() == b"one"
    (cm.a / "g").write_bytes(b"two, longer")
    assert (cm.b / "g").read_bytes() == b"two, longer"


A_SIDE = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"from a, before")
os.fsync(fd)  # a holds the exclusive lock now
print("ready", flush=True)
sys.stdin.readline()  # the test froze and thawed a's daemon meanwhile
try:  # refused under the lost lock: the write itself, or fsync, says so
    os.pwrite(fd, b"a again", 0)
    os.fsync(fd)
    print("synced", flush=True)
except OSError as e:
    print("EIO" if e.errno == errno.EIO else f"errno {e.errno}", flush=True)
os.close(fd)
"""


def test_frozen_mount_loses_its_lock_and_nothing_is_lost_silently(tmp_path: Path) -> None:
    """A mount whose daemon is stopped cannot hold up another mount past the lease;
    once it runs again it keeps working, and what its application wrote either is in
    the file or is reported by fsync. (This process keeps no file open on the frozen
    mount: any close or exec would wait for its daemon.)"""
    two = TwoMounts(tmp_path, "coherent", "timeout=10", server_args=("--lease", "1"))
    export, a, b, mounts = two.export, two.a, two.b, two.mounts
    a_side: subprocess.Popen[str] | None = None
    try:
        a_side = subprocess.Popen([sys.executable, "-c", A_SIDE, str(a / "f")], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert a_side.stdout is not None and a_side.stdin is not None
        assert a_side.stdout.readline() == "ready\n"
        stop_process(mounts[0].pid)
        try:
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-c", f"open({str(b / 'f')!r}, 'r+b').write(b'FROM B')"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            took = time.monotonic() - started
        finally:
            os.kill(mounts[0].pid, signal.SIGCONT)
        assert proc.returncode == 0, proc.stderr
        assert took < 8, f"b waited {took:.1f} s for a frozen mount (lease 1 s)"
        a_side.stdin.write("go\n")
        a_side.stdin.flush()
        result = a_side.stdout.readline().strip()
        assert a_side.wait(30) == 0
        assert result in ("synced", "EIO")
        if result == "synced":  # accepted: then it is in the file, after b's write
            assert (export / "f").read_bytes()[:7] == b"a again"
        else:
            assert (export / "f").read_bytes()[:6] == b"FROM B"
        assert (b / "f").read_bytes() == (export / "f").read_bytes()
    finally:
        if a_side is not None and a_side.poll() is None:
            a_side.kill()
            a_side.wait(10)
        two.stop()


CHECKER = Path(__file__).with_name("torn_checker.py")


def run_torn_checker(mounts: TwoMounts, seconds: float) -> list[dict[str, object]]:
    """Writers on mounts a and b, then readers on mount c and on a library client."""
    import json

    from torn_checker import prepare

    prepare(str(mounts.export / "slots"))
    roles = [
        ["write", str(mounts.dirs[0] / "slots"), str(seconds), "0"],
        ["write", str(mounts.dirs[1] / "slots"), str(seconds), "1"],
        ["read", str(mounts.dirs[2] / "slots"), str(seconds)],
        ["libread", mounts.server.address, "/slots", str(seconds), SECRET_FILE],
    ]
    procs = []
    try:
        for role in roles:
            proc = subprocess.Popen([sys.executable, str(CHECKER), *role],
                                    stdout=subprocess.PIPE, text=True)  # fmt: skip
            procs.append(proc)
            if role[0] == "write":  # readers open the file while it is being written
                assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 30)
            assert proc.returncode == 0
            results.append(json.loads(out.splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_no_torn_reads_across_mounts(tmp_path: Path) -> None:
    mounts = TwoMounts(tmp_path, "coherent", count=3)
    try:
        results = run_torn_checker(mounts, 4.0)
    finally:
        mounts.stop()
    writes, reads = results[:2], results[2:]
    assert all(r["ops"] > 20 for r in writes), results
    assert all(r["ops"] > 20 for r in reads), results
    assert [r["torn"] for r in reads] == [0, 0], results


def test_torn_checker_sees_a_seam() -> None:
    from torn_checker import SLOT, _slot

    assert _slot(b"\x07" * SLOT) == (True, "")
    ok, why = _slot(b"\x07" * 4096 + b"\x09" * (SLOT - 4096))
    assert not ok and "byte 4096" in why


def test_name_missed_just_before_another_mount_created_it(cm: TwoMounts) -> None:
    assert not (cm.b / "late").exists()  # b looks the name up and misses
    fd = os.open(cm.a / "late", os.O_WRONLY | os.O_CREAT, 0o644)  # returns: created
    try:
        assert (cm.b / "late").exists()
        assert "late" in os.listdir(cm.b)
    finally:
        os.close(fd)


def test_removed_and_renamed_names_are_gone_for_the_other_mount(cm: TwoMounts) -> None:
    (cm.a / "old").write_bytes(b"old file")
    (cm.a / "keep").write_bytes(b"first")
    assert (cm.b / "old").read_bytes() == b"old file"  # b knows both names
    first = os.stat(cm.b / "keep")
    os.unlink(cm.a / "old")
    assert not (cm.b / "old").exists()
    with pytest.raises(FileNotFoundError):
        os.open(cm.b / "old", os.O_RDONLY)
    (cm.a / "new").write_bytes(b"second, renamed over")
    os.rename(cm.a / "new", cm.a / "keep")
    st = os.stat(cm.b / "keep")
    assert st.st_ino != first.st_ino and st.st_size == len(b"second, renamed over")
    assert (cm.b / "keep").read_bytes() == b"second, renamed over"
    assert not (cm.b / "new").exists()


def test_stat_by_name_sees_size_of_a_write_that_returned(cm: TwoMounts) -> None:
    fd = os.open(cm.a / "grows", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(1, 40):
            os.pwrite(fd, b"x" * 1000, i * 1000)  # written behind under a's lock
            assert os.stat(cm.b / "grows").st_size == (i + 1) * 1000
        os.ftruncate(fd, 10)
        assert os.stat(cm.b / "grows").st_size == 10
    finally:
        os.close(fd)


def test_three_clients_two_mounts_and_a_library_client(cm: TwoMounts) -> None:

    (cm.a / "shared").write_bytes(b"\0" * 64)
    with make_client([cm.server.address]) as lib, lib.open("/shared", "r+b", buffering=0) as f:
        wa = os.open(cm.a / "shared", os.O_RDWR)
        rb = os.open(cm.b / "shared", os.O_RDONLY)
        try:
            for i in range(20):
                mine = f"mount a {i:03d}".encode()
                os.pwrite(wa, mine, 0)  # a holds the exclusive lock and writes behind
                assert f.pread(len(mine), 0) == mine  # the library client holds no lock
                assert os.pread(rb, len(mine), 0) == mine
                theirs = f"library {i:03d}".encode()
                f.pwrite(theirs, 16)  # a plain write: both mounts' caches are dropped
                assert os.pread(rb, len(theirs), 16) == theirs
                assert os.pread(wa, len(theirs), 16) == theirs
        finally:
            os.close(wa)
            os.close(rb)


def test_shared_mmap_of_a_written_file_stays_coherent(cm: TwoMounts) -> None:
    import mmap

    (cm.a / "mapped").write_bytes(b"a" * 8192)
    reader = os.open(cm.a / "mapped", os.O_RDONLY)  # page-cached open
    mfd = os.open(cm.a / "mapped", os.O_RDWR)  # direct I/O, and still mappable
    writer = os.open(cm.a / "mapped", os.O_RDWR)
    try:
        assert os.pread(reader, 4, 0) == b"aaaa"
        with mmap.mmap(mfd, 8192) as mm:
            assert mm[:4] == b"aaaa"
            os.pwrite(writer, b"bbbb", 0)
            assert os.pread(reader, 4, 0) == b"bbbb" and mm[:4] == b"bbbb"
            mm[4:8] = b"cccc"
            mm.flush()  # msync returned: the other mount sees it
            assert (cm.b / "mapped").read_bytes()[:8] == b"bbbbcccc"
            other = os.open(cm.b / "mapped", os.O_RDWR)
            os.pwrite(other, b"dddd", 0)
            os.close(other)
            assert mm[:4] == b"dddd" and os.pread(reader, 4, 0) == b"dddd"
    finally:
        for fd in (reader, mfd, writer):
            os.close(fd)


@pytest.fixture(scope="module")
def unwatched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMounts]:
    """Two coherent mounts of a server that does not watch its export (--no-watch)."""
    c = TwoMounts(tmp_path_factory.mktemp("unwatched"), "coherent", server_args=("--no-watch",))
    yield c
    c.stop()


def test_names_kept_under_the_directory_lock_go_with_a_change_by_another_client(
    unwatched: TwoMounts,
) -> None:
    """The kernel keeps names while the mount holds the directory's lock; a change
    through any client revokes the lock and makes every kept name stale, also one
    created behind the server's back, straight in an export it does not watch (which
    may be found sooner, by the directory's change attribute, when something the
    kernel asks about it reaches the server)."""
    cm = unwatched
    (cm.a / "kept").mkdir()
    assert not (cm.b / "kept" / "ghost").exists()  # b keeps "not found"
    (cm.export / "kept" / "ghost").write_bytes(b"behind the server's back")
    (cm.a / "kept" / "other").write_bytes(b"through a client")  # revokes b's lock
    assert (cm.b / "kept" / "ghost").exists()
    assert (cm.b / "kept" / "other").read_bytes() == b"through a client"


def test_unwatched_the_next_open_finds_a_file_rewritten_on_the_servers_disk(
    unwatched: TwoMounts,
) -> None:
    """No notification tells the server (--no-watch, as on a filesystem without
    them): the change is found by its change attribute when the next open(2) reaches
    the server, and the mount's cache of the file goes then (tests/
    test_changes_found_on_use.py shows it found on each kind of use)."""
    on_mount = unwatched.a / "found.txt"
    on_mount.write_bytes(b"v1\n")
    assert on_mount.read_bytes() == b"v1\n"
    new = b"version-2 longer\n"
    (unwatched.export / "found.txt").write_bytes(new)
    on_mount.open("rb").close()  # (a stat the kernel asks the mount for would do too)
    wait_until(lambda: os.stat(on_mount).st_size == len(new), 1.0, "the size to be new")
    assert on_mount.read_bytes() == new


def test_directory_attributes_change_for_the_other_mount_at_once(cm: TwoMounts) -> None:
    (cm.a / "modes").mkdir(mode=0o755)
    assert not (cm.b / "modes" / "x").exists()  # b takes the directory's lock
    assert os.stat(cm.b / "modes").st_mode & 0o777 == 0o755  # kept under it
    os.chmod(cm.a / "modes", 0o700)
    assert os.stat(cm.b / "modes").st_mode & 0o777 == 0o700
    os.utime(cm.a / "modes", ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(cm.b / "modes").st_mtime_ns == 2_000_000_000


CREATOR = r"""
import os, sys
top, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(count):
    os.close(os.open(f"{top}/{tag}{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    if i % 3 == 0:
        os.unlink(f"{top}/{tag}{i}")
"""


def test_two_mounts_creating_in_one_directory_at_once(cm: TwoMounts) -> None:
    """Each create revokes the other mount's lock on the directory; neither may
    wait on the other (the server keeps taking answers to revocations while a
    change waits for them), and both end up with the same names."""
    (cm.a / "busy").mkdir()
    count = 150
    procs = [
        subprocess.Popen([sys.executable, "-c", CREATOR, str(mount / "busy"), tag, str(count)])
        for mount, tag in ((cm.a, "a"), (cm.b, "b"))
    ]
    for proc in procs:
        assert proc.wait(timeout=50) == 0
    want = {f"{tag}{i}" for tag in "ab" for i in range(count) if i % 3}
    assert set(os.listdir(cm.a / "busy")) == want
    assert set(os.listdir(cm.b / "busy")) == want
    assert set(os.listdir(cm.export / "busy")) == want
    assert all((cm.b / "busy" / name).exists() for name in sorted(want)[:20])


TAKER = r"""
import os, sys, time
path, me, turns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
deadline = time.monotonic() + 40
done = 0
while done < turns and time.monotonic() < deadline:
    record = os.pread(fd, 4096, 0)
    n = int(record[:12])
    if n % 2 != me:
        continue
    if record[12:] != bytes([65 + n % 26]) * (4096 - 12):
        sys.exit(f"turn {n}: not the record written last")
    os.pwrite(fd, b"%012d" % (n + 1) + bytes([65 + (n + 1) % 26]) * (4096 - 12), 0)
    done += 1
sys.exit(0 if done == turns else f"only {done} turns")
"""


def test_two_mounts_take_turns_writing_one_record(cm: TwoMounts) -> None:
    """Each sees the other's write as soon as it returned, whole: the turns run
    lockless (plain direct reads and writes) once the mounts contend."""
    (cm.a / "turns.rec").write_bytes(b"%012d" % 0 + b"A" * (4096 - 12))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TAKER, str(m / "turns.rec"), str(i), "300"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, m in enumerate((cm.a, cm.b))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=50)
        assert proc.returncode == 0, err
    assert (cm.export / "turns.rec").read_bytes()[:12] == b"%012d" % 600


def test_attributes_of_a_file_another_mount_keeps_change_at_once(cm: TwoMounts) -> None:
    """A mount that holds a file's lock keeps its attributes long; another mount's
    chmod, chown or utime revokes the lock first."""
    (cm.a / "attrs").write_bytes(b"x")
    fd = os.open(cm.b / "attrs", os.O_RDONLY)  # b holds the lock: attributes kept
    try:
        assert os.fstat(fd).st_mode & 0o777 == 0o644
        os.chmod(cm.a / "attrs", 0o600)
        assert os.fstat(fd).st_mode & 0o777 == 0o600
        assert os.stat(cm.b / "attrs").st_mode & 0o777 == 0o600
        os.chown(cm.a / "attrs", 1234, 5678)
        assert (os.fstat(fd).st_uid, os.fstat(fd).st_gid) == (1234, 5678)
        os.utime(cm.a / "attrs", ns=(3_000_000_000, 4_000_000_000))
        assert os.fstat(fd).st_mtime_ns == 4_000_000_000
    finally:
        os.close(fd)


def test_unlink_under_an_exclusive_directory_lock_is_sent_ahead(cm: TwoMounts) -> None:
    """Holding a directory exclusively, a mount answers an unlink before the server
    has done it (here: while the server is stopped); anyone who looks at the
    directory afterwards makes it send its changes first."""
    d = cm.a / "ahead"
    d.mkdir()
    for i in range(5):
        (d / f"f{i}").write_bytes(b"x")
    os.unlink(d / "f0")  # one removal alone waits for the server
    os.unlink(d / "f1")  # a run: the mount takes the directory exclusively
    os.stat(d)  # its attributes, kept under the lock: no request for the next walk
    stop_process(cm.server.pid)
    try:
        os.unlink(d / "f2")  # answered by the mount alone (else: ETIMEDOUT after 5 s)
    finally:
        os.kill(cm.server.pid, signal.SIGCONT)
    os.unlink(d / "f3")
    client = make_client([cm.server.address])
    try:
        assert sorted(client.listdir("/ahead")) == ["f4"]  # a library client: revokes
    finally:
        client.close()
    assert sorted(os.listdir(cm.b / "ahead")) == ["f4"]
    assert sorted(os.listdir(cm.export / "ahead")) == ["f4"]


def test_misses_answered_from_a_directory_listing_stay_true(cm: TwoMounts) -> None:
    """After two misses a mount reads a directory whole and answers later misses
    there itself (here: while the server is stopped); its own changes keep the
    listing true, and another client's change takes it away first."""
    d = cm.a / "listed"
    d.mkdir()
    for i in range(4):
        (d / f"f{i}").write_bytes(b"x")  # each create misses first
    stop_process(cm.server.pid)
    try:
        assert not (d / "absent").exists()  # answered by the mount alone
    finally:
        os.kill(cm.server.pid, signal.SIGCONT)
    os.rename(d / "f1", d / "g1")
    os.unlink(d / "f2")
    assert not (d / "f1").exists() and not (d / "f2").exists()
    assert (d / "g1").read_bytes() == b"x"
    (cm.b / "listed" / "late").write_bytes(b"b")  # revokes a's lock and listing first
    assert (d / "late").read_bytes() == b"b"
    os.unlink(cm.b / "listed" / "f0")
    assert not (d / "f0").exists()
    assert sorted(os.listdir(d)) == ["f3", "g1", "late"]
    assert sorted(os.listdir(cm.export / "listed")) == ["f3", "g1", "late"]


def test_a_directory_moved_by_another_mount_is_listed_at_its_new_place(cm: TwoMounts) -> None:
    """A mount that knows a directory's names by its path learns of its move."""
    (cm.a / "mv1").mkdir()
    for i in range(3):
        (cm.a / "mv1" / f"f{i}").write_bytes(b"")
    assert not (cm.a / "mv1" / "none").exists()
    os.rename(cm.b / "mv1", cm.b / "mv2")
    (cm.b / "mv1").mkdir()
    (cm.b / "mv1" / "fresh").write_bytes(b"")
    assert (cm.a / "mv1" / "fresh").exists()
    assert sorted(os.listdir(cm.a / "mv2")) == ["f0", "f1", "f2"]
    assert sorted(os.listdir(cm.a / "mv1")) == ["fresh"]


def test_a_file_rewritten_on_the_servers_disk_is_seen_whole_within_a_second(
    cm: TwoMounts,
) -> None:
    """This test's process is not the server's: its writes to the export directory are
    changes from outside, like an editor's on the server."""
    on_mount = cm.a / "ext.txt"
    on_mount.write_bytes(b"v1\n")
    assert on_mount.read_bytes() == b"v1\n"
    assert on_mount.read_bytes() == b"v1\n"  # cached under its lock
    new = b"version-2 longer\n"
    (cm.export / "ext.txt").write_bytes(new)
    wait_until(lambda: on_mount.read_bytes() == new and os.stat(on_mount).st_size == len(new), 1.0)
    for _ in range(20):  # and from then on only the new file, whole
        assert on_mount.read_bytes() == new
    # (Before the revocation, within about 20 ms of the change, a read may still
    # combine the old size with the new data: the kernel cuts what it reads to the
    # size it keeps under the lock; docs/design.md, "The window".)


def test_names_and_modes_changed_on_the_servers_disk_are_seen_within_a_second(
    cm: TwoMounts,
) -> None:
    d = cm.a / "outside"
    d.mkdir()
    (d / "old").write_bytes(b"x")
    assert sorted(os.listdir(d)) == ["old"] and not (d / "made").exists()
    (cm.export / "outside" / "made").write_bytes(b"new")
    wait_until(lambda: (d / "made").exists() and sorted(os.listdir(d)) == ["made", "old"], 1.0)
    os.chmod(cm.export / "outside" / "made", 0o600)
    wait_until(lambda: os.stat(d / "made").st_mode & 0o777 == 0o600, 1.0)
    os.rename(cm.export / "outside" / "old", cm.export / "outside" / "renamed")
    wait_until(lambda: not (d / "old").exists() and (d / "renamed").read_bytes() == b"x", 1.0)
    os.unlink(cm.export / "outside" / "made")
    wait_until(lambda: sorted(os.listdir(d)) == ["renamed"], 1.0)
