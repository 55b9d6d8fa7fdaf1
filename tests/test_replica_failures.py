"""Several servers as separate processes: a server killed with SIGKILL in the middle
of creating files or of reading costs the application nothing, and two clients that
lock and write the same files across three servers never deadlock, never read a torn
write, and leave the three exports the same."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ServerProcess, make_client
from pohmelfs.client.serverset import GONE
from test_replication import replica_view

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[ServerProcess]]:
    count = getattr(request, "param", 2)
    started: list[ServerProcess] = []
    try:
        for n in range(count):
            d = tmp_path / f"export{n}"
            d.mkdir()
            started.append(ServerProcess(d))
        yield started
    finally:
        for s in started:
            s.stop()


def root(p: ServerProcess) -> Path:
    return p.log.parent / p.log.name.removeprefix("server-").removesuffix(".log")


def run_and_kill(work: Callable[[threading.Event], None], victim: ServerProcess) -> None:
    """``work`` on a thread; ``victim`` killed once it says it is under way; no error."""
    errors: list[BaseException] = []
    going = threading.Event()

    def run() -> None:
        try:
            work(going)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert going.wait(30)
    os.kill(victim.pid, signal.SIGKILL)
    t.join(90)
    assert not t.is_alive()
    assert errors == [], "".join(traceback.format_exception(errors[0]))


@pytest.mark.parametrize("killed", [0, 1], ids=["lock-server", "replica"])
def test_a_server_killed_while_files_are_created_costs_nothing(
    procs: list[ServerProcess], killed: int
) -> None:
    made: dict[str, bytes] = {}
    with make_client([p.address for p in procs], timeout=5) as c:

        def untar(going: threading.Event) -> None:
            for d in range(12):
                c.mkdir(f"d{d}")
                for n in range(25):
                    data = os.urandom(random.randint(0, 9000))
                    with c.open(f"d{d}/f{n}", "xb") as f:  # exclusive: a second run would fail
                        f.write(data)
                    made[f"d{d}/f{n}"] = data
                if d == 3:
                    going.set()

        run_and_kill(untar, procs[killed])
        assert c.server_set.members()[killed].state == GONE
    stays = root(procs[1 - killed])
    assert len(made) == 300
    assert {n: (stays / n).read_bytes() for n in made} == made


def test_reads_go_on_when_the_lock_server_is_killed(procs: list[ServerProcess]) -> None:
    data = os.urandom(8 << 20)
    digest = hashlib.sha256(data).hexdigest()
    with make_client([p.address for p in procs], timeout=5) as c:
        with c.open("big", "wb") as f:
            f.write(data)

        def reads(going: threading.Event) -> None:
            for n in range(40):
                with c.open("big", "rb") as f:
                    assert hashlib.sha256(f.read()).hexdigest() == digest
                if n == 5:
                    going.set()

        run_and_kill(reads, procs[0])
        assert c.connection().address == procs[1].address


@pytest.mark.parametrize("procs", [3], indirect=True)
def test_two_clients_locking_and_writing_across_three_servers(
    procs: list[ServerProcess],
) -> None:
    """For 30 s each client in turn takes an exclusive lock on one of four files,
    checks it holds one value all through (no torn write), and writes a value of its
    own all through; never a deadlock, and the three exports end the same."""
    size, files, seconds = 256 << 10, 4, 30.0
    addresses = [p.address for p in procs]
    clients = [make_client(addresses, timeout=10) for _ in range(2)]
    try:
        for n in range(files):
            with clients[0].open(f"f{n}", "wb") as f:
                f.write(bytes(size))
        deadline = time.monotonic() + seconds
        rounds = [0, 0]
        problems: list[Any] = []

        def worker(k: int) -> None:
            c, rng = clients[k], random.Random(k)
            try:
                while time.monotonic() < deadline:
                    name = f"f{rng.randrange(files)}"
                    c.lock(name, exclusive=True)
                    try:
                        with c.open(name, "r+b", buffering=0) as f:
                            got = f.pread(size, 0)
                            if got != got[:1] * size:
                                problems.append(("torn", name, set(got)))
                            f.pwrite(bytes([rng.randrange(256)]) * size, 0)
                    finally:
                        c.unlock(name)
                    rounds[k] += 1
            except BaseException as e:
                problems.append(("error", traceback.format_exc(), e))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        assert not any(t.is_alive() for t in threads), "deadlock"
        assert problems == []
        assert min(rounds) > 10, rounds  # both went on, all the while
    finally:
        for c in clients:
            c.close()
    views = [replica_view(root(p)) for p in procs]
    assert views[1] == views[0] and views[2] == views[0]
