"""Fair cache locks under contention: writers on two mounts and readers on a third and
on a writer's mount, one file, page-unaligned 96 KiB slots. Before the fair queue a
writer got one write in per ~100 ms against tens of thousands of reads, and lock
waits surfaced as ETIMEDOUT."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TwoMounts, requires_fuse

pytestmark = requires_fuse
CHECKER = Path(__file__).with_name("torn_checker.py")
SLOT = 96 * 1024 + 7


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMounts]:
    m = TwoMounts(tmp_path_factory.mktemp("fair"), "coherent", count=3)
    yield m
    m.stop()


Result = dict[str, object]


def contend(m: TwoMounts, name: str, readers: list[Path], seconds: float,
            readers_first: bool) -> tuple[list[Result], list[Result]]:  # fmt: skip
    """Writers on mounts a and b, readers on the mounts given (opened before the
    writers start, or after they opened the file); their results."""
    from torn_checker import prepare

    prepare(str(m.export / name), SLOT)

    def start(role: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(CHECKER), *role, str(SLOT)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip

    def start_readers() -> list[subprocess.Popen[str]]:
        return [start(["read", str(d / name), str(seconds)]) for d in readers]

    procs: list[subprocess.Popen[str]] = []
    try:
        if readers_first:
            procs += start_readers()
            time.sleep(0.5)  # they have the file open (through the page cache) first
        writers = [start(["write", str(d / name), str(seconds), str(i)])
                   for i, d in enumerate(m.dirs[:2])]  # fmt: skip
        procs += writers
        for w in writers:
            assert w.stdout is not None and w.stdout.readline() == "open\n"
        if not readers_first:  # readers open a file being written: direct I/O
            procs += start_readers()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 60)
            assert proc.returncode == 0
            results.append(json.loads(out.splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    n = len(readers)
    reads, writes = (results[:n], results[n:]) if readers_first else (results[2:], results[:2])
    return writes, reads


def no_lease_ran_out(m: TwoMounts) -> bool:
    return "did not answer a revocation" not in m.server.log.read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("readers", [2, 4])
def test_writers_keep_up_with_readers(three: TwoMounts, readers: int) -> None:
    """For 20 s every operation succeeds, no read is torn, no wait lasts long, and a
    writer completes at least 30% as many operations as a reader."""
    dirs = [three.dirs[2], three.dirs[0], three.dirs[2], three.dirs[1]][:readers]
    writes, reads = contend(three, f"slots{readers}", dirs, 20.0, readers_first=False)
    everyone = writes + reads
    assert all(r["errors"] == {} for r in everyone), everyone
    assert all(r["torn"] == 0 for r in reads), reads
    assert max(r["worst"] for r in everyone) < 2.0, everyone
    mean_reads = statistics.mean(int(r["ops"]) for r in reads)  # type: ignore[call-overload]
    assert min(int(r["ops"]) for r in writes) >= 0.3 * mean_reads, everyone  # type: ignore[call-overload]
    assert no_lease_ran_out(three)


@pytest.mark.timeout(120)
def test_page_cache_readers_do_not_stall_writers(three: TwoMounts) -> None:
    """Readers that opened the file before anyone wrote it read through the page
    cache (they stay there: a FUSE open cannot turn to direct I/O). Each write then
    revokes their caches, each of their reads locks again: nothing fails, nobody
    waits for a lease to run out (a revocation used to wait for a read that waited
    for a lock behind the very writer that waited for the revocation), and the
    writers keep writing."""
    dirs = [three.dirs[2], three.dirs[0], three.dirs[2], three.dirs[1]]
    writes, reads = contend(three, "cached", dirs, 10.0, readers_first=True)
    everyone = writes + reads
    assert all(r["errors"] == {} for r in everyone), everyone
    assert max(r["worst"] for r in everyone) < 2.0, everyone
    assert min(r["ops"] for r in writes) >= 200, everyone
    assert no_lease_ran_out(three)
