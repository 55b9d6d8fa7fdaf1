"""Changes made outside pohmelfs that no notification told of (the watcher is off
here: as on a filesystem without notifications, or after a lost event) are found
when the server next looks at the object for a client, by its change attribute
(server/stamps.py), and revoke every holder's cache then: a cached view never
lasts past the next request that touches the object. The test's own writes to the
export stand for those changes (no watcher tells them apart)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import address_of, held_file, make_client, start_server, stopping, wait_until
from fakekernel import Coherent, cached_file, change_through_pohmelfs, coherent_mount
from pohmelfs.server.cachelocks import END, SHARED
from pohmelfs.server.service import Limits, Server

pytestmark = pytest.mark.timeout(60)
WITHIN = 5.0  # the revocation, once found: four workers share two cores


@pytest.fixture
def unwatched(export_dir: Path) -> Iterator[Server]:
    with stopping(start_server(export_dir, limits=Limits(watch="off"))) as srv:
        yield srv


@pytest.fixture
def cm(unwatched: Server, export_dir: Path) -> Iterator[Coherent]:
    with coherent_mount(unwatched, export_dir) as mount:
        yield mount


def test_a_read_finds_the_file_rewritten_and_its_pages_go(cm: Coherent,
                                                          unwatched: Server) -> None:  # fmt: skip
    n, fh = cached_file(cm, b"ext.txt", b"v1\n")
    (cm.export / "ext.txt").write_bytes(b"version-2 longer\n")
    assert not cm.heard.dropped(n)  # nothing told the server yet
    cm.fk.read(fh, 0, 100)  # the READ of a page the kernel lacks
    wait_until(lambda: cm.heard.dropped(n), WITHIN, "the pages to be dropped")
    assert cm.fk.getattr(n).size == 17
    assert cm.fk.read(fh, 0, 100) == b"version-2 longer\n"
    assert unwatched.shared.stamps.found == 1
    cm.fk.release(fh)


def test_an_open_finds_the_file_truncated(cm: Coherent) -> None:
    n, fh = cached_file(cm, b"f", b"0123456789")
    os.truncate(cm.export / "f", 4)
    again = cm.fk.open(n, os.O_RDONLY)  # a second open(2): OPEN reaches the server
    wait_until(lambda: cm.heard.dropped(n), WITHIN, "the pages to be dropped")
    assert cm.fk.getattr(n).size == 4
    cm.fk.release(again)
    cm.fk.release(fh)


def test_another_clients_lookup_finds_the_chmod_under_a_lease(cm: Coherent) -> None:
    path = cm.export / "f"
    path.write_bytes(b"x")
    n = cm.fk.lookup(b"f").nodeid
    assert cm.fk.getattr(n).mode & 0o777 == 0o644 & ~0  # under a lease: asked once
    cm.heard.take()
    os.chmod(path, 0o600)
    assert cm.fk.getattr(n).mode & 0o777 != 0o600  # the lease's: nothing found yet
    cm.other.stat("/f")
    wait_until(lambda: cm.heard.attrs_dropped(n), WITHIN, "the attributes to be dropped")
    assert cm.fk.getattr(n).mode & 0o777 == 0o600


def test_a_library_read_finds_the_change_under_its_lock(unwatched: Server,
                                                        export_dir: Path) -> None:  # fmt: skip
    path = export_dir / "f"
    path.write_bytes(b"abc")
    with make_client([address_of(unwatched)]) as c:
        f, revoked = held_file(c, "/f", mode="rb")
        path.write_bytes(b"abcdef")
        assert f.pread(100, 0) == b"abcdef"
        assert revoked.wait(WITHIN)
        f.close()


def test_pohmelfs_changes_are_never_taken_for_outside_ones(cm: Coherent,
                                                          unwatched: Server) -> None:  # fmt: skip
    """Writes, truncates, chmods and renames by the mount under its locks and by
    another client against them: each revokes what it must, and none is found as a
    change made outside afterwards."""
    change_through_pohmelfs(cm)
    assert unwatched.shared.stamps.found == 0


def test_the_holders_own_write_does_not_absorb_a_change_made_before_it(
    unwatched: Server, export_dir: Path
) -> None:
    (export_dir / "f").write_bytes(b"0123456789")
    with make_client([address_of(unwatched)]) as c:
        f, revoked = held_file(c, "/f", exclusive=True)
        with open(export_dir / "f", "ab") as out:
            out.write(b"-appended-outside")
        f.pwrite(b"AB", 0)  # type: ignore[attr-defined]  # its stamp before: not ours
        assert revoked.wait(WITHIN) and unwatched.shared.stamps.found == 1
        f.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("own", ["chmod", "utime", "rename"])
def test_after_the_holders_own_change_by_path_an_outside_one_is_still_found(
    unwatched: Server, export_dir: Path, own: str
) -> None:
    """A change through pohmelfs by path (no handle) records the stamp after it,
    read by path: the next change made outside is compared with that."""
    (export_dir / "f").write_bytes(b"abc")
    with make_client([address_of(unwatched)]) as c:
        f, revoked = held_file(c, "/f", exclusive=False)
        name = "f"
        if own == "chmod":
            c.chmod("/f", 0o600)
        elif own == "utime":
            c.utime("/f", ns=(1, 2))
        else:
            c.rename("/f", "/g")  # an editor's save renames over the old name
            name = "g"
        assert not revoked.is_set() and unwatched.shared.stamps.found == 0
        (export_dir / name).write_bytes(b"abcdef, changed outside")
        assert f.pread(100, 0) == b"abcdef, changed outside"  # type: ignore[attr-defined]
        assert revoked.wait(WITHIN)
        f.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("held", ["d/f", "keep"])
def test_a_tree_removed_through_pohmelfs_is_no_outside_change(
    unwatched: Server, export_dir: Path, held: str
) -> None:
    """Everything the removal unlinks moves its ctime: a file in the tree held open
    elsewhere, or held by a hard link outside it."""
    (export_dir / "d").mkdir()
    (export_dir / "d" / "f").write_bytes(b"abc")
    (export_dir / "keep").hardlink_to(export_dir / "d" / "f")
    with make_client([address_of(unwatched)]) as a, make_client([address_of(unwatched)]) as b:
        f, _revoked = held_file(b, "/" + held, exclusive=False)
        a.rmtree("/d")
        assert f.pread(100, 0) == b"abc"  # type: ignore[attr-defined]
        assert unwatched.shared.stamps.found == 0
        f.close()  # type: ignore[attr-defined]


@pytest.fixture
def slow_first_change(unwatched: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The first change that has to wait sleeps before its revocations, as one
    waiting for a slow holder's answer does; a session that never speaks holds the
    export's root, so every change of a name there waits."""
    cache = unwatched.cache
    root = unwatched.export.stat(b"/")
    assert cache.try_acquire((root.st_dev, root.st_ino), (999, 1), SHARED, 0, END)
    changing = cache.changing
    calls: list[int] = []

    @contextmanager
    def slow(*args: Any, **kw: Any) -> Iterator[None]:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.6)
        with changing(*args, **kw):
            yield

    monkeypatch.setattr(cache, "changing", slow)
    yield


def test_a_file_granted_while_its_rename_waits_is_no_outside_change(
    unwatched: Server, export_dir: Path, slow_first_change: None
) -> None:
    (export_dir / "f").write_bytes(b"abc")
    with make_client([address_of(unwatched)]) as a, make_client([address_of(unwatched)]) as b:
        renaming = threading.Thread(target=a.rename, args=("/f", "/g"))
        renaming.start()
        time.sleep(0.2)  # the rename waits for the root's holder
        f, _revoked = held_file(b, "/f")  # granted meanwhile: its stamp before the rename
        renaming.join(10)
        f.pread(100, 0)  # type: ignore[attr-defined]
        assert unwatched.shared.stamps.found == 0
        f.close()  # type: ignore[attr-defined]


def test_a_listing_finds_a_name_made_outside_in_a_held_directory(cm: Coherent) -> None:
    missing = cm.fk.ok(0x01, names=(b"new",))  # LOOKUP: "not there", under the root's lock
    assert missing[:8] == bytes(8)
    cm.heard.take()
    (cm.export / "new").write_bytes(b"x")
    cm.other.listdir("/")  # another client's listing reaches the server: a use
    wait_until(lambda: ("epoch",) in cm.heard.seen, WITHIN, "the names to be dropped")
    assert cm.fk.call(0x01, names=(b"new",)).payload[:8] != bytes(8)
