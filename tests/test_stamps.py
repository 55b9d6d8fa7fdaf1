"""The change attributes of cached objects (server/stamps.py): what counts as a
change made outside pohmelfs, found when the server looks at an object, and how
pohmelfs' own changes are told apart (as a seqlock would)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from pohmelfs.server.cachelocks import SHARED, CacheLocks
from pohmelfs.server.stamps import Stamps, Touch, newer

pytestmark = pytest.mark.timeout(10)
KEY = (1, 2)


def st(ctime_ns: int, size: int) -> os.stat_result:
    return SimpleNamespace(st_ctime_ns=ctime_ns, st_size=size, st_dev=KEY[0],
                           st_ino=KEY[1])  # type: ignore[return-value]  # fmt: skip


@pytest.fixture
def table() -> SimpleNamespace:
    cache = CacheLocks()
    stale: list[set[object]] = []
    return SimpleNamespace(cache=cache, stamps=Stamps(cache, stale.append), stale=stale)


def hold(cache: CacheLocks, owner: tuple[int, int] = (1, 1)) -> None:
    assert cache.try_acquire(KEY, owner, SHARED, 0, 100)


def touch(before: os.stat_result | None, after: os.stat_result | None) -> Touch:
    return Touch(KEY, lambda: before, lambda: after)


def test_newer() -> None:
    assert newer((2, 5), (1, 5)) and newer((1, 6), (1, 5))
    assert not newer((1, 5), (1, 5)) and not newer((0, 9), (1, 5))
    assert not newer((1, 6), (1, 5), exact=False)  # the same ctime: only if exact


def test_an_object_nobody_holds_is_not_recorded(table: SimpleNamespace) -> None:
    table.stamps.look(KEY, lambda: st(10, 3))
    assert table.stamps.known(KEY) is None and not table.stale


def test_a_newer_ctime_or_another_size_is_a_change_made_outside(table: SimpleNamespace) -> None:
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 3))  # the grant's look
    table.stamps.look(KEY, lambda: st(10, 3))
    table.stamps.seen(KEY, st(9, 1))  # a look taken long before, compared now
    assert not table.stale
    table.stamps.look(KEY, lambda: st(11, 3))
    assert table.stale == [{KEY}] and table.stamps.known(KEY) == (11, 3)
    table.stamps.seen(KEY, st(11, 17))  # the same ctime, another size: when read?
    assert len(table.stale) == 1
    table.stamps.look(KEY, lambda: st(11, 17))  # read now: a change (a coarse clock)
    assert table.stale == [{KEY}, {KEY}] and table.stamps.found == 2


def test_pohmelfs_own_changes_are_recorded_not_found(table: SimpleNamespace) -> None:
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 3))
    done = table.stamps.changing([touch(st(10, 3), st(12, 8))])
    table.stamps.look(KEY, lambda: st(12, 8))  # in the middle of it: not compared
    done()
    table.stamps.look(KEY, lambda: st(12, 8))
    assert table.stamps.known(KEY) == (12, 8) and not table.stale


def test_a_look_overtaken_by_a_change_of_ours_compares_nothing(table: SimpleNamespace) -> None:
    """The watcher read the attributes after one write of a burst and compares them
    after the next write was recorded: with a coarse clock, the same ctime and
    another size. The generation moved meanwhile: no change found."""
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 3))
    table.stamps.changing([touch(st(10, 3), st(20, 4))])()

    def read_then_overtaken() -> os.stat_result:
        table.stamps.changing([touch(st(20, 4), st(20, 5))])()  # the next write
        return st(20, 4)

    table.stamps.look(KEY, read_then_overtaken)
    assert table.stamps.known(KEY) == (20, 5) and not table.stale


def test_a_change_made_outside_before_one_of_ours_is_found_not_absorbed(
    table: SimpleNamespace,
) -> None:
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 3))
    done = table.stamps.changing([touch(st(15, 20), st(16, 20))])  # appended outside first
    assert table.stale == [{KEY}]
    done()
    assert table.stamps.known(KEY) == (16, 20)


def test_a_change_of_ours_with_nothing_at_hand_after_leaves_it_to_the_next_look(
    table: SimpleNamespace,
) -> None:
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 3))
    table.stamps.changing([touch(None, None)])()
    assert table.stamps.known(KEY) is None
    table.stamps.look(KEY, lambda: st(13, 8))
    assert table.stamps.known(KEY) == (13, 8) and not table.stale


def test_an_object_given_up_by_its_last_holder_is_forgotten(table: SimpleNamespace) -> None:
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 3))
    table.cache.forget(KEY, (1, 1))
    assert table.stamps.known(KEY) is None
    hold(table.cache, (2, 1))  # a new holder, after a change nobody held it through
    table.stamps.look(KEY, lambda: st(20, 4))
    assert table.stamps.known(KEY) == (20, 4) and not table.stale


def test_two_overlapping_changes_of_ours_leave_the_stamp_to_the_next_look(
    table: SimpleNamespace,
) -> None:
    """A chmod and a write of the holder at once, on one clock tick: the one that
    ends last read its stamp before the other landed."""
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 100))
    done_chmod = table.stamps.changing([touch(st(10, 100), st(20, 100))])
    done_write = table.stamps.changing([touch(st(10, 100), st(20, 150))])
    done_write()
    done_chmod()
    table.stamps.look(KEY, lambda: st(20, 150))  # the file as both left it
    assert table.stamps.found == 0 and table.stamps.known(KEY) == (20, 150)


def test_a_generation_is_never_seen_twice(table: SimpleNamespace) -> None:
    """A look reads the generation and the attributes; meanwhile a change of ours,
    the last holder goes, a new one is granted: the old look compares nothing."""
    hold(table.cache, (1, 1))
    table.stamps.look(KEY, lambda: st(20, 100))

    def overtaken() -> os.stat_result:
        table.stamps.changing([touch(st(20, 100), st(20, 200))])()
        table.cache.forget(KEY, (1, 1))
        hold(table.cache, (2, 1))
        table.stamps.look(KEY, lambda: st(20, 200))
        return st(20, 100)

    table.stamps.look(KEY, overtaken)
    assert table.stamps.found == 0


def test_a_change_that_may_touch_anything_blinds_every_look_until_done(
    table: SimpleNamespace,
) -> None:
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 3))
    done = table.stamps.changing_everything()  # a tree removed
    table.stamps.look(KEY, lambda: st(11, 3))
    done()
    assert table.stamps.known(KEY) is None and not table.stale
    table.stamps.look(KEY, lambda: st(11, 3))
    assert table.stamps.known(KEY) == (11, 3) and not table.stale


def test_a_tree_removed_records_afresh_only_what_it_took(table: SimpleNamespace) -> None:
    other = (1, 3)
    hold(table.cache)
    assert table.cache.try_acquire(other, (1, 1), SHARED, 0, 100)
    table.stamps.look(KEY, lambda: st(10, 3))
    table.stamps.look(other, lambda: SimpleNamespace(st_ctime_ns=5, st_size=1, st_dev=1,
                                                     st_ino=3))  # fmt: skip
    done = table.stamps.changing_everything()
    table.stamps.tree_removed({KEY})
    done()
    assert table.stamps.known(KEY) is None and table.stamps.known(other) == (5, 1)


def test_an_object_touched_twice_by_one_change_is_one_change(table: SimpleNamespace) -> None:
    """A rename within one directory names it as both parents."""
    hold(table.cache)
    table.stamps.look(KEY, lambda: st(10, 100))
    t = touch(st(10, 100), st(20, 100))
    table.stamps.changing([t, t])()
    assert table.stamps.known(KEY) == (20, 100)
