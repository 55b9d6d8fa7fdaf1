"""Directory cache locks of the mount (fuse/names.py), against a real server."""

from __future__ import annotations

import os
import time

from pohmelfs import Client
from pohmelfs.fuse.names import HELD, NameLocks
from pohmelfs.fuse.nodes import Node, NodeTable
from pohmelfs.protocol import Command
from pohmelfs.server.service import Server


class Recorder:
    def __init__(self) -> None:
        self.epochs = 0
        self.dropped: list[int] = []

    def bump(self) -> None:
        self.epochs += 1

    def drop(self, nodeid: int) -> None:
        self.dropped.append(nodeid)


def nodes_for(client: Client, *names: str) -> tuple[NodeTable, list]:  # type: ignore[type-arg]
    table = NodeTable(client.stat("/").st_ino)
    found = []
    for name in names:
        st = client.stat("/" + name)
        found.append(table.remember(table.root, name.encode(), st.st_ino, 1))
    return table, found


def key_of(client: Client, path: str) -> tuple[int, int]:
    st = client.stat(path)
    return st.st_dev, st.st_ino


def test_a_name_lock_is_held_until_another_client_changes_the_directory(
    server: Server, ab: tuple[Client, Client]
) -> None:
    a, b = ab
    b.mkdir("/d")
    _, (d,) = nodes_for(a, "d")
    rec = Recorder()
    names = NameLocks(a, rec.bump, rec.drop)
    assert names.held(d.nodeid) == 0.0
    assert names.take(d) == HELD and names.held(d.nodeid) == HELD
    assert names.take(d) == HELD  # held: no second request
    b.open("/d/new", "wb").close()  # revokes a's lock before it returns
    assert names.held(d.nodeid) == 0.0
    assert rec.epochs == 1 and rec.dropped == [d.nodeid]
    assert names.take(d) == HELD  # taken again through the same handle
    names.forget(d.nodeid)  # the kernel forgot the directory: its handle closes
    assert names.held(d.nodeid) == 0.0
    deadline = time.monotonic() + 5
    while server.cache.held(key_of(b, "/d")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not server.cache.held(key_of(b, "/d"))
    names.close()


def test_name_locks_are_bounded_and_fail_soft(ab: tuple[Client, Client]) -> None:
    a, b = ab
    b.mkdir("/one")
    b.mkdir("/two")
    b.mkdir("/locked")
    b.chmod("/locked", 0)
    _, (one, two) = nodes_for(a, "one", "two")
    rec = Recorder()
    names = NameLocks(a, rec.bump, rec.drop, limit=1)
    assert names.take(one) == HELD
    assert names.take(two) == 0.0  # over the limit: names of /two are not kept
    names.close()
    assert rec.epochs == 1  # closing drops every lock: the kernel's names go stale
    if os.geteuid() != 0:  # root may open a mode-0 directory; others may not
        nobody = NameLocks(a, rec.bump, rec.drop)
        _, (locked,) = nodes_for(a, "locked")
        assert nobody.take(locked) == 0.0


def test_changes_sent_ahead_go_out_before_a_revocation_is_answered(
    ab: tuple[Client, Client],
) -> None:
    """Only a run of changes goes ahead, under the exclusive lock; a revocation
    waits until every change sent ahead was answered."""
    a, b = ab
    b.mkdir("/run")
    for i in range(3):
        b.open(f"/run/f{i}", "wb").close()
    _, (run,) = nodes_for(a, "run")
    rec = Recorder()
    names = NameLocks(a, rec.bump, rec.drop)
    finished: list[str] = []

    def unlink(name: str):  # type: ignore[no-untyped-def]
        def send(done) -> None:  # type: ignore[no-untyped-def]
            def answered(_tx: object) -> None:
                time.sleep(0.2)  # a slow answer: the revocation must wait for it
                finished.append(name)
                done()

            a.connection().start(
                Command.UNLINK,
                callback=answered,
                cred=a.cred,
                path=f"/run/{name}".encode(),
            )

        return send

    assert not names.send_ahead(run, unlink("f0"))  # alone: the caller does it itself
    a.unlink("/run/f0")
    assert names.send_ahead(run, unlink("f1"))  # a run: sent ahead
    assert b.listdir("/run") == ["f2"]  # b's listing revoked a's lock: f1 went first
    assert finished == ["f1"]
    names.close()


def locked_dir(ab: tuple[Client, Client], name: str,
               *files: str) -> tuple[NameLocks, Node]:  # fmt: skip
    """``b`` makes directory ``name`` with empty ``files``; ``a`` takes its lock."""
    a, b = ab
    b.mkdir("/" + name)
    for file in files:
        b.open(f"/{name}/{file}", "wb").close()
    _, (d,) = nodes_for(a, name)
    rec = Recorder()
    names = NameLocks(a, rec.bump, rec.drop)
    assert names.take(d) == HELD
    return names, d


def test_a_directory_read_whole_after_two_misses_answers_misses_until_revoked(
    ab: tuple[Client, Client],
) -> None:
    b = ab[1]
    names, d = locked_dir(ab, "l", "there")
    assert not names.missing(d.nodeid, b"nope")  # nothing known yet
    names.missed(d.nodeid, b"/l")
    assert not names.missing(d.nodeid, b"nope")  # one miss reads nothing
    names.missed(d.nodeid, b"/l")  # the second reads the directory
    assert names.missing(d.nodeid, b"nope") and not names.missing(d.nodeid, b"there")
    names.note(d.nodeid, b"nope", True)  # this mount made it
    assert not names.missing(d.nodeid, b"nope")
    names.note(d.nodeid, b"there", False)  # ... and removed this one
    assert names.missing(d.nodeid, b"there")
    b.open("/l/other", "wb").close()  # another client: the lock and listing go
    assert not names.missing(d.nodeid, b"other") and not names.missing(d.nodeid, b"x")
    names.close()


def test_a_listing_read_across_a_change_is_not_kept(ab: tuple[Client, Client]) -> None:
    a = ab[0]
    names, d = locked_dir(ab, "m")
    names.missed(d.nodeid, b"/m")
    real = a.readdir

    def readdir_racing_a_change(path, cred=None):  # type: ignore[no-untyped-def]
        listing = real(path, cred)
        names.note(d.nodeid, b"made-meanwhile", True)  # this mount's create, answered
        return listing

    a.readdir = readdir_racing_a_change  # type: ignore[method-assign]
    names.missed(d.nodeid, b"/m")
    assert not names.missing(d.nodeid, b"made-meanwhile")  # nothing kept
    a.readdir = real  # type: ignore[method-assign]
    names.note(d.nodeid, b"x", None)  # a failed change: no listing either way
    names.missed(d.nodeid, b"/m")
    names.missed(d.nodeid, b"/m")
    assert names.missing(d.nodeid, b"y")
    names.note(d.nodeid, b"y", None)
    assert not names.missing(d.nodeid, b"y")
    names.close()


def test_a_directory_moved_by_another_client_is_given_up(
    ab: tuple[Client, Client],
) -> None:
    """Its holders know it by its old path: the rename revokes their lock."""
    b = ab[1]
    names, d = locked_dir(ab, "old")
    b.rename("/old", "/new")
    assert names.held(d.nodeid) == 0.0
    names.close()
