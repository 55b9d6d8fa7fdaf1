"""inotify's event format (server/inotify.py), without a kernel."""

from __future__ import annotations

import pytest

from pohmelfs.server import inotify as ino

pytestmark = pytest.mark.timeout(10)


def event(wd: int, mask: int, name: bytes = b"") -> bytes:
    padded = name + bytes(-len(name) % 16 or (16 if name else 0)) if name else b""
    return ino.EVENT.pack(wd, mask, 0, len(padded)) + padded


def test_events_with_and_without_names() -> None:
    buf = event(1, ino.IN_MODIFY) + event(2, ino.IN_CREATE, b"made") + event(-1, ino.IN_Q_OVERFLOW)
    assert ino.parse(buf) == [ino.Event(1, ino.IN_MODIFY, False),
                              ino.Event(2, ino.IN_CREATE, True),
                              ino.Event(-1, ino.IN_Q_OVERFLOW, False)]  # fmt: skip


@pytest.mark.parametrize("cut", [1, 15, 17, 30])
def test_a_truncated_read_is_refused(cut: int) -> None:
    buf = event(1, ino.IN_ATTRIB) + event(2, ino.IN_CREATE, b"made")
    with pytest.raises(ValueError):
        ino.parse(buf[: len(buf) - cut])


def test_a_name_longer_than_any_is_refused() -> None:
    with pytest.raises(ValueError):
        ino.parse(ino.EVENT.pack(1, ino.IN_CREATE, 0, 1 << 20) + bytes(1 << 20))
