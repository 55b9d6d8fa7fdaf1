"""A server that fanotify cannot serve (not root, or a filesystem it cannot mark)
watches the objects its clients hold one by one, with inotify
(server/heldwatch.py): changes made outside reach every client without waiting
for a use, its own changes (which inotify does not tell apart) are told apart by
their change attributes, and its limits are kept. fanotify is refused here by
the test; the test's own writes to the export are the changes made outside."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import address_of, make_client, start_server, stopping, wait_until
from fakekernel import Coherent, cached_file, change_through_pohmelfs, coherent_mount
from pohmelfs.client.file import RemoteFile
from pohmelfs.server import heldwatch, inotify, localwatch
from pohmelfs.server.heldwatch import HeldObjects
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(60)
SEEN_WITHIN = 2.0  # as in test_outside_changes.py: four workers on two cores


def refuse_fanotify(path: str) -> int:
    raise PermissionError(1, "fanotify_init: Operation not permitted")


@pytest.fixture
def held(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setattr(localwatch.fa, "watch_filesystem", refuse_fanotify)
    with stopping(start_server(export_dir)) as srv:
        assert isinstance(srv.watched, HeldObjects)
        yield srv


@pytest.fixture
def cm(held: Server, export_dir: Path) -> Iterator[Coherent]:
    with coherent_mount(held, export_dir) as mount:
        yield mount


def until(check: object, what: str = "the change to be seen") -> None:
    wait_until(check, SEEN_WITHIN, what)  # type: ignore[arg-type]


def test_a_file_rewritten_outside_is_dropped_without_a_use(cm: Coherent, held: Server) -> None:
    n, fh = cached_file(cm, b"ext.txt", b"v1\n")
    (cm.export / "ext.txt").write_bytes(b"version-2 longer\n")
    until(lambda: cm.heard.dropped(n))
    assert cm.fk.getattr(n).size == 17
    assert cm.fk.read(fh, 0, 100) == b"version-2 longer\n"
    cm.fk.release(fh)


def test_truncate_and_chmod_outside_drop_the_attributes_under_a_lease(cm: Coherent) -> None:
    path = cm.export / "f"
    path.write_bytes(b"0123456789")
    n = cm.fk.lookup(b"f").nodeid
    assert cm.fk.getattr(n).size == 10
    cm.heard.take()
    os.truncate(path, 4)
    until(lambda: cm.heard.attrs_dropped(n))
    assert cm.fk.getattr(n).size == 4
    os.chmod(path, 0o600)
    until(lambda: cm.fk.getattr(n).mode & 0o7777 == 0o600)


def test_a_name_created_outside_in_a_held_directory_is_looked_up_again(cm: Coherent) -> None:
    missing = cm.fk.ok(0x01, names=(b"new",))  # LOOKUP: "not there", under the root's lock
    assert missing[:8] == bytes(8)
    cm.heard.take()
    (cm.export / "new").write_bytes(b"x")
    until(lambda: ("epoch",) in cm.heard.seen)
    assert cm.fk.call(0x01, names=(b"new",)).payload[:8] != bytes(8)


def test_own_changes_are_told_apart_by_their_change_attributes(cm: Coherent,
                                                               held: Server) -> None:  # fmt: skip
    """Every change through pohmelfs raises inotify events too: none is taken for
    one made outside."""
    change_through_pohmelfs(cm)
    assert held.watched is not None and held.shared.stamps.found == 0


def test_what_nobody_holds_any_more_is_not_watched(held: Server, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"abc")
    watched = held.watched
    assert isinstance(watched, HeldObjects)
    with make_client([address_of(held)]) as c:
        f = c.open("/f", "rb", buffering=0)
        f.cache_lock(exclusive=False)
        assert watched.followed() == 1
        f.close()
        until(lambda: watched.followed() == 0, "the watch to go")


def test_past_the_limit_objects_are_found_on_use_with_a_warning(
    export_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(localwatch.fa, "watch_filesystem", refuse_fanotify)
    monkeypatch.setattr(heldwatch, "FOLLOWED", 2)  # the root's names, and "one"
    for name in ("one", "two"):
        (export_dir / name).write_bytes(b"old")
    with stopping(start_server(export_dir)) as srv, coherent_mount(srv, export_dir) as m:
        nodes = [m.fk.lookup(name).nodeid for name in (b"one", b"two")]
        fhs = [m.fk.open(n, os.O_RDONLY) for n in nodes]
        for fh in fhs:
            m.fk.read(fh, 0, 10)
        assert any("found only when they are next used" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        m.heard.take()
        (export_dir / "two").write_bytes(b"new, unwatched")
        (export_dir / "one").write_bytes(b"new, watched")
        until(lambda: m.heard.dropped(nodes[0]))
        assert not m.heard.dropped(nodes[1])  # (the watched one was seen after it)
        m.fk.read(fhs[1], 0, 100)  # a use: found by its change attribute
        until(lambda: m.heard.dropped(nodes[1]))
        for fh in fhs:
            m.fk.release(fh)


def test_an_overflow_revokes_everything_held(cm: Coherent, held: Server,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for name in ("kept", "written"):
        (cm.export / name).write_bytes(b"cached")
    nodes = {name: cm.fk.lookup(name.encode()).nodeid for name in ("kept", "written")}
    fhs = [cm.fk.open(n, os.O_RDONLY) for n in nodes.values()]
    for fh in fhs:
        cm.fk.read(fh, 0, 10)
    cm.heard.take()
    parse = inotify.parse
    overflowed = inotify.Event(-1, inotify.IN_Q_OVERFLOW, False)
    monkeypatch.setattr(heldwatch.ino, "parse", lambda buf: [overflowed, *parse(buf)])
    (cm.export / "written").write_bytes(b"changed")
    until(lambda: cm.heard.dropped(nodes["kept"]) and cm.heard.dropped(nodes["written"]))
    for fh in fhs:
        cm.fk.release(fh)


def test_without_fanotify_or_inotify_it_serves_with_a_warning(
    export_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_inotify() -> int:
        raise OSError(24, "inotify_init1: Too many open files")

    monkeypatch.setattr(localwatch.fa, "watch_filesystem", refuse_fanotify)
    monkeypatch.setattr(heldwatch.ino, "new_group", no_inotify)
    caplog.set_level(logging.INFO, "pohmelfs.server")
    (export_dir / "f").write_bytes(b"served")
    with stopping(start_server(export_dir)) as srv, make_client([address_of(srv)]) as c:
        assert srv.watched is None
        with c.open("/f", "rb") as f:
            assert f.read() == b"served"
    assert any("found only when the objects changed are next used" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_a_file_opened_with_o_trunc_is_watched_too(held: Server, export_dir: Path) -> None:
    """Its lock is granted inside the truncation, a change of pohmelfs' own."""
    (export_dir / "f").write_bytes(b"old contents")
    with make_client([address_of(held)]) as c:
        f = RemoteFile(c.services, "/f", os.O_RDWR | os.O_TRUNC, 0o644, "r+b", cache=0)
        revoked = threading.Event()
        f.on_revoke = lambda *_: revoked.set()
        (export_dir / "f").write_bytes(b"changed outside, longer")
        assert revoked.wait(SEEN_WITHIN)
        f.close()


def test_an_object_that_cannot_be_watched_is_not_tried_again(
    held: Server, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(group: int, fd: int) -> int:
        raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")

    watched = held.watched
    assert isinstance(watched, HeldObjects)
    opened = []
    opath = watched._opath
    monkeypatch.setattr(heldwatch.ino, "watch", full)
    monkeypatch.setattr(watched, "_opath", lambda where: opened.append(1) or opath(where))
    (export_dir / "f").write_bytes(b"x" * 10000)
    with make_client([address_of(held)]) as c, c.open("/f", "rb", buffering=0) as f:
        f.cache_lock(exclusive=False)
        for i in range(20):
            f.pread(100, i * 100)
    assert len(opened) <= 1


def test_held_objects_only_can_be_asked_for(export_dir: Path) -> None:
    """``serve --watch held``: no fanotify mark on a busy filesystem, even as root."""
    from pohmelfs.cli import build_parser
    from pohmelfs.server.service import Limits

    assert build_parser().parse_args(["serve", "d", "--watch", "held"]).watch == "held"
    with stopping(start_server(export_dir, limits=Limits(watch="held"))) as srv:
        assert isinstance(srv.watched, HeldObjects)
