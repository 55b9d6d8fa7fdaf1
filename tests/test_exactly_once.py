"""Exactly once: a change whose connection is lost after the server applied it
(before its answer reached the client) is sent again on a new connection and
answered as the first time, never applied twice; one lost before the server got
it is applied then. Through a proxy that cuts the connection at that moment."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import SECRET_FILE, address_of, make_client, start_server, stopping
from cutting_proxy import CuttingProxy
from pohmelfs import Client
from pohmelfs import protocol as p
from pohmelfs.protocol import Command, Cred, Message
from pohmelfs.security.keys import load_secret
from pohmelfs.server import dispatch
from pohmelfs.server.service import Server
from rawwire import RawSession

XATTR_CREATE = 1
ROOT = Cred(0, 0, ())


@pytest.fixture
def srv(export_dir: Path) -> Iterator[Server]:
    with stopping(start_server(export_dir)) as s:
        yield s


def through_cut(srv: Server, cmd: Command, after_apply: bool = True,
                nth: int = 0) -> tuple[Client, CuttingProxy]:  # fmt: skip
    proxy = CuttingProxy(srv.address, cmd, after_apply, nth)
    return make_client([proxy.address], timeout=5, umask=0o022), proxy


def cut_once(srv: Server, cmd: Command, do: Callable[[Client], Any], after_apply: bool = True,
             nth: int = 0, before: Callable[[Client], Any] | None = None) -> Any:  # fmt: skip
    """``do`` through a connection cut at ``cmd``'s reply (or request); its result."""
    client, proxy = through_cut(srv, cmd, after_apply, nth)
    try:
        if before is not None:
            before(client)
        result = do(client)
        assert proxy.cut.is_set(), f"the {cmd.name} was never cut"
        assert proxy.connections == 2  # the resend went on a new connection of the session
        return result
    finally:
        client.close()
        proxy.close()


def test_an_exclusive_create_is_not_refused_by_its_own_first_run(
    srv: Server, export_dir: Path
) -> None:
    def create(c: Client) -> None:
        with c.open("new", "xb") as f:
            f.write(b"mine")

    cut_once(srv, Command.OPEN, create)
    assert (export_dir / "new").read_bytes() == b"mine"


@pytest.mark.parametrize("after_apply", [True, False], ids=["after-apply", "before-apply"])
def test_an_append_is_applied_once(srv: Server, export_dir: Path, after_apply: bool) -> None:
    (export_dir / "log").write_bytes(b"head:")

    def append(c: Client) -> None:
        with c.open("log", "ab", buffering=0) as f:
            f.write(b"0123456789")

    cut_once(srv, Command.WRITE, append, after_apply)
    assert (export_dir / "log").read_bytes() == b"head:0123456789"


def test_a_large_write_whose_pieces_were_partly_applied_lands_once(
    srv: Server, export_dir: Path
) -> None:
    data = os.urandom(6 << 20)  # six pieces in flight at once; the third's answer is lost

    def write(c: Client) -> None:
        with c.open("big", "ab", buffering=0) as f:
            assert f.write(data) == len(data)

    cut_once(srv, Command.WRITE, write, nth=2)
    assert (export_dir / "big").read_bytes() == data


Case = tuple[Command, Callable[[Path], Any], Callable[[Client], None], Callable[[Path], bool]]
# fmt: off
NAMESPACE: dict[str, Case] = {
    "mkdir": (Command.MKDIR, lambda e: None, lambda c: c.mkdir("d"), lambda e: (e / "d").is_dir()),
    "makedirs": (Command.MAKEDIRS, lambda e: None, lambda c: c.makedirs("a/b/c"),
                 lambda e: (e / "a/b/c").is_dir()),
    "rmdir": (Command.RMDIR, lambda e: (e / "d").mkdir(), lambda c: c.rmdir("d"),
              lambda e: not (e / "d").exists()),
    "rmtree": (Command.RMTREE, lambda e: (e / "t/u").mkdir(parents=True),
               lambda c: c.rmtree("t"), lambda e: not (e / "t").exists()),
    "unlink": (Command.UNLINK, lambda e: (e / "f").write_bytes(b"x"), lambda c: c.unlink("f"),
               lambda e: not (e / "f").exists()),
    "rename": (Command.RENAME, lambda e: (e / "f").write_bytes(b"x"),
               lambda c: c.rename("f", "g"),
               lambda e: not (e / "f").exists() and (e / "g").read_bytes() == b"x"),
    "rename-noreplace": (Command.RENAME, lambda e: (e / "f").write_bytes(b"x"),
                         lambda c: c.rename("f", "g", noreplace=True),
                         lambda e: (e / "g").read_bytes() == b"x"),
    "link": (Command.LINK, lambda e: (e / "f").write_bytes(b"x"), lambda c: c.link("f", "h"),
             lambda e: (e / "f").stat().st_nlink == 2),
    "symlink": (Command.SYMLINK, lambda e: None, lambda c: c.symlink("target", "s"),
                lambda e: os.readlink(e / "s") == "target"),
    "mknod": (Command.MKNOD, lambda e: None, lambda c: c.mknod("p", 0o600 | stat.S_IFIFO),
              lambda e: stat.S_ISFIFO((e / "p").lstat().st_mode)),
    "setxattr-create": (Command.SETXATTR, lambda e: (e / "f").write_bytes(b"x"),
                        lambda c: c.setxattr("f", "user.k", b"v", XATTR_CREATE),
                        lambda e: os.getxattr(e / "f", "user.k") == b"v"),
    "removexattr": (Command.REMOVEXATTR,
                    lambda e: ((e / "f").write_bytes(b"x"), os.setxattr(e / "f", "user.k", b"v")),
                    lambda c: c.removexattr("f", "user.k"),
                    lambda e: "user.k" not in os.listxattr(e / "f")),
}
# fmt: on


@pytest.mark.parametrize("after_apply", [True, False], ids=["after-apply", "before-apply"])
@pytest.mark.parametrize("name", sorted(NAMESPACE))
def test_a_namespace_change_is_applied_once(srv: Server, export_dir: Path, name: str,
                                            after_apply: bool) -> None:  # fmt: skip
    cmd, setup, change, done = NAMESPACE[name]
    setup(export_dir)
    cut_once(srv, cmd, change, after_apply)  # no EEXIST, ENOENT, ENODATA from a second run
    assert done(export_dir)


def test_a_lock_taken_when_its_answer_was_lost_is_held(srv: Server, export_dir: Path) -> None:
    (export_dir / "f").write_bytes(b"x")
    client, proxy = through_cut(srv, Command.LOCK)
    other = make_client([address_of(srv)], timeout=5)
    try:
        client.lock("f", exclusive=True, wait=False)
        assert proxy.cut.is_set()
        with pytest.raises(BlockingIOError):
            other.lock("f", exclusive=True, wait=False)
        client.unlock("f")
        other.lock("f", exclusive=True, wait=False)
    finally:
        other.close()
        client.close()
        proxy.close()


def test_an_error_the_first_run_gave_is_the_answer_to_the_resend(srv: Server) -> None:
    def unlink_missing(c: Client) -> None:
        with pytest.raises(FileNotFoundError):
            c.unlink("never-there")

    cut_once(srv, Command.UNLINK, unlink_missing)


def test_a_server_that_forgot_the_session_gets_no_change_twice(
    srv: Server, export_dir: Path
) -> None:
    """As after a restart: the client cannot know whether the change was applied, so
    it says so instead of applying it a second time."""
    client, proxy = through_cut(srv, Command.MKDIR)
    real = srv.shared.replies.attach

    def forgetting(key: str, session: bytes, owner: object, take_over: Any) -> Any:
        replies, _ = real(key, session + b"", owner, take_over)
        return replies, False

    srv.shared.replies.attach = forgetting  # type: ignore[method-assign]
    try:
        with pytest.raises(ConnectionError) as e:
            client.mkdir("d")
        assert e.value.errno == errno.ECONNRESET and (export_dir / "d").is_dir()
    finally:
        srv.shared.replies.attach = real  # type: ignore[method-assign]
        client.close()
        proxy.close()


def test_a_session_resumed_on_a_new_connection_ends_the_old_one_and_answers_again(
    srv: Server, export_dir: Path
) -> None:
    session = os.urandom(p.SESSION_SIZE)
    old = RawSession(address_of(srv), load_secret(SECRET_FILE), session=session)
    assert not old.welcome["resumed"]
    mkdir = Message(Command.MKDIR, 41, 0, 0, 0, 0, 0, {"cred": ROOT, "path": b"d", "mode": 0o755})
    assert old.call(mkdir).status == 0
    new = RawSession(address_of(srv), load_secret(SECRET_FILE), session=session)
    try:
        assert new.welcome["resumed"]
        with pytest.raises((ConnectionError, OSError)):  # the server ended the old one
            for _ in range(3):
                old.call(Message(Command.PING, 42, 0, 0, 0, 0, 0, {}))
        again = Message(Command.MKDIR, 41, p.FLAG_RESENT, 0, 0, 0, 0, dict(mkdir.fields))
        assert new.call(again).status == 0  # the first answer, not EEXIST
        other = Message(Command.UNLINK, 41, p.FLAG_RESENT, 0, 0, 0, 0,
                        {"cred": ROOT, "path": b"d"})  # fmt: skip
        assert new.call(other).status == errno.EINVAL  # that id was a MKDIR
        assert (export_dir / "d").is_dir()
    finally:
        old.close()
        new.close()


def test_a_change_the_old_connection_still_had_buffered_is_not_run_again(
    srv: Server, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's reader of the old connection was busy; the client gave it up and
    resent the change on a new one, which ran it: the copy the old connection reads
    afterwards is not run a second time."""
    (export_dir / "log").write_bytes(b"")
    session = os.urandom(p.SESSION_SIZE)

    def appending(xid: int) -> Message:
        return p.request(Command.OPEN, xid, cred=ROOT, path=b"log",
                         flags=os.O_WRONLY | os.O_APPEND, mode=0, cache=2,
                         fid=bytes(p.FID_SIZE))  # fmt: skip

    old = RawSession(address_of(srv), load_secret(SECRET_FILE), session=session)
    handle = old.call(appending(10)).oid
    busy = threading.Event()
    serve_one = dispatch.Dispatch.serve_one

    def slow_reader(self: dispatch.Dispatch) -> None:
        if self.replies.session == session and busy.is_set():
            busy.clear()
            time.sleep(1.0)  # the old connection's reader, busy with something slow
        serve_one(self)

    monkeypatch.setattr(dispatch.Dispatch, "serve_one", slow_reader)
    busy.set()
    old.call(Message(Command.PING, 11, 0, 0, 0, 0, 0, {}))
    old.send(Message(Command.WRITE, 100, 0, 0, handle, 0, 0, {"data": b"X"}))
    new = RawSession(address_of(srv), load_secret(SECRET_FILE), session=session)
    try:
        assert new.welcome["resumed"]
        again = new.call(appending(101)).oid
        resent = Message(Command.WRITE, 100, p.FLAG_RESENT, 0, again, 0, 0, {"data": b"X"})
        assert new.call(resent).status == 0
        time.sleep(1.5)  # the old reader wakes and reads its copy
        assert (export_dir / "log").read_bytes() == b"X"
    finally:
        old.close()
        new.close()
