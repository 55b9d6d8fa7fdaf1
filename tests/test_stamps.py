"""The change attributes of cached objects (server/stamps.py): what counts as a
change made outside pohmelfs, found when the server looks at an object."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from pohmelfs.server.cachelocks import SHARED, CacheLocks
from pohmelfs.server.stamps import Stamps, newer

pytestmark = pytest.mark.timeout(10)
KEY = (1, 2)


def st(ctime_ns: int, size: int) -> os.stat_result:
    return SimpleNamespace(st_ctime_ns=ctime_ns, st_size=size)  # type: ignore[return-value]


@pytest.fixture
def table() -> SimpleNamespace:
    cache = CacheLocks()
    stale: list[set[object]] = []
    return SimpleNamespace(cache=cache, stamps=Stamps(cache, stale.append), stale=stale)


def hold(cache: CacheLocks, owner: tuple[int, int] = (1, 1)) -> None:
    assert cache.try_acquire(KEY, owner, SHARED, 0, 100)


def test_newer() -> None:
    assert newer((2, 5), (1, 5)) and newer((1, 6), (1, 5))
    assert not newer((1, 5), (1, 5)) and not newer((0, 9), (1, 5))


def test_an_object_nobody_holds_is_not_recorded(table: SimpleNamespace) -> None:
    table.stamps.seen(KEY, st(10, 3))
    assert table.stamps.known(KEY) is None and not table.stale


def test_a_newer_ctime_or_another_size_is_a_change_made_outside(table: SimpleNamespace) -> None:
    hold(table.cache)
    table.stamps.seen(KEY, st(10, 3))  # the grant's look
    table.stamps.seen(KEY, st(10, 3))
    table.stamps.seen(KEY, st(9, 1))  # a look taken before a change, compared after
    assert not table.stale
    table.stamps.seen(KEY, st(11, 3))
    assert table.stale == [{KEY}] and table.stamps.known(KEY) == (11, 3)
    table.stamps.seen(KEY, st(11, 17))  # same ctime (a coarse clock), another size
    assert table.stale == [{KEY}, {KEY}] and table.stamps.found == 2


def test_pohmelfs_own_changes_are_recorded_not_found(table: SimpleNamespace) -> None:
    hold(table.cache)
    table.stamps.seen(KEY, st(10, 3))
    assert table.cache.try_changing([KEY], 1)  # by the holder itself
    table.stamps.seen(KEY, st(12, 8))  # while it is being changed: not compared
    table.stamps.ours(KEY, st(12, 8))
    table.cache.changed([KEY], 1)
    table.stamps.seen(KEY, st(12, 8))
    table.stamps.ours(KEY, st(11, 8))  # an older stat of a concurrent change: kept back
    assert table.stamps.known(KEY) == (12, 8) and not table.stale
    table.stamps.ours(KEY, None)  # no stat at hand: the next look records it
    table.stamps.seen(KEY, st(13, 8))
    assert table.stamps.known(KEY) == (13, 8) and not table.stale


def test_an_object_given_up_by_its_last_holder_is_forgotten(table: SimpleNamespace) -> None:
    hold(table.cache)
    table.stamps.seen(KEY, st(10, 3))
    table.cache.forget(KEY, (1, 1))
    assert table.stamps.known(KEY) is None
    hold(table.cache, (2, 1))  # a new holder, after a change nobody held it through
    table.stamps.seen(KEY, st(20, 4))
    assert table.stamps.known(KEY) == (20, 4) and not table.stale
