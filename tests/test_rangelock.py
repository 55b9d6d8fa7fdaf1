"""Server-side byte-range locking: no reader sees the middle of another client's write."""

from __future__ import annotations

import random
import threading
import time

import pytest

from conftest import address_of, make_client
from pohmelfs.server.rangelock import END, RangeLocks


def test_shared_ranges_overlap_exclusive_ones_wait() -> None:
    locks = RangeLocks()
    order: list[str] = []
    with locks.hold("f", 0, 100, False), locks.hold("f", 50, 150, False):
        assert len(locks.held("f")) == 2

        def writer() -> None:
            with locks.hold("f", 90, 95, True):
                order.append("write")

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.1)
        order.append("readers done")
    t.join(5)
    assert order == ["readers done", "write"]
    assert locks.held("f") == []


def test_disjoint_and_other_files_do_not_wait() -> None:
    locks = RangeLocks()
    done = threading.Event()
    with locks.hold("f", 0, 10, True):

        def other() -> None:
            with locks.hold("f", 10, 20, True), locks.hold("g", 0, 10, True):
                done.set()

        t = threading.Thread(target=other)
        t.start()
        assert done.wait(5)
        t.join(5)


def test_to_end_of_file_range_blocks_later_writes() -> None:
    locks = RangeLocks()
    entered = threading.Event()
    with locks.hold("f", 1000, END, True):
        t = threading.Thread(target=lambda: locks.hold("f", 1 << 40, (1 << 40) + 1, True)
                             .__enter__() or entered.set())  # fmt: skip
        t.start()
        assert not entered.wait(0.2)
    assert entered.wait(5)
    t.join(5)


def test_empty_range_holds_nothing() -> None:
    locks = RangeLocks()
    with locks.hold("f", 5, 5, True), locks.hold("f", 0, 10, True):
        pass


SLOT = 300_001  # unaligned, crosses many pages
SLOTS = 6
OFFSET = 4097  # every slot starts off a page boundary


@pytest.mark.timeout(60)
def test_no_torn_reads_between_clients(server: object) -> None:
    """Writers on two clients rewrite whole slots with one byte value each;
    readers on two other clients must only ever see uniform slots."""
    address = address_of(server)  # type: ignore[arg-type]
    setup = make_client([address])
    with setup.open("/shared", "wb") as f:
        f.write(b"\0" * (OFFSET + SLOT * SLOTS))
    setup.close()
    stop = time.monotonic() + 3.0
    torn: list[tuple[int, set[int]]] = []
    counts = {"reads": 0, "writes": 0}
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        with make_client([address]) as c, c.open("/shared", "r+b", buffering=0) as f:
            while time.monotonic() < stop:
                slot = rnd.randrange(SLOTS)
                f.pwrite(bytes([rnd.randrange(1, 256)]) * SLOT, OFFSET + slot * SLOT)
                with lock:
                    counts["writes"] += 1

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        buf = bytearray(SLOT)
        with make_client([address]) as c, c.open("/shared", "rb", buffering=0) as f:
            while time.monotonic() < stop:
                slot = rnd.randrange(SLOTS)
                assert f.preadinto(buf, OFFSET + slot * SLOT) == SLOT
                values = set(buf[::4096]) | {buf[-1]}
                if len(values) != 1 or buf.count(buf[0]) != SLOT:
                    torn.append((slot, values))
                with lock:
                    counts["reads"] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=reader, args=(10 + i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counts["writes"] > 20 and counts["reads"] > 20, counts
    assert not torn, f"{len(torn)} torn reads of {counts['reads']}, e.g. {torn[:3]}"
