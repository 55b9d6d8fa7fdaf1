"""Two mounts with -o coherent: reads see the latest write that returned on the other."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import MountProcess, ServerProcess, requires_fuse

pytestmark = requires_fuse


class CoherentMounts:
    def __init__(self, root: Path) -> None:
        self.export, self.a, self.b = root / "export", root / "a", root / "b"
        for d in (self.export, self.a, self.b):
            d.mkdir()
        self.server = ServerProcess(self.export)
        self.mounts: list[MountProcess] = []
        try:
            for d in (self.a, self.b):
                self.mounts.append(MountProcess(self.server.address, d, "coherent"))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for m in self.mounts:
            m.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def cm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoherentMounts]:
    c = CoherentMounts(tmp_path_factory.mktemp("coherent"))
    yield c
    c.stop()


def test_read_after_write_across_mounts(cm: CoherentMounts) -> None:
    (cm.a / "f").write_bytes(b"start")
    wa = os.open(cm.a / "f", os.O_RDWR)
    rb = os.open(cm.b / "f", os.O_RDONLY)
    try:
        assert os.pread(rb, 100, 0) == b"start"  # now cached on b
        for i in range(30):
            value = f"version {i} ".encode() * (i + 1)
            os.pwrite(wa, value, 0)  # returns: every later read anywhere must see it
            assert os.pread(rb, len(value), 0) == value
            assert os.fstat(rb).st_size >= len(value)
            assert os.stat(cm.b / "f").st_size == os.fstat(wa).st_size
    finally:
        os.close(wa)
        os.close(rb)


def test_kept_cache_is_still_right_after_another_mount_wrote(cm: CoherentMounts) -> None:
    (cm.a / "g").write_bytes(b"one")
    assert (cm.b / "g").read_bytes() == b"one"  # b caches it, and keeps it across opens
    assert (cm.b / "g").read_bytes() == b"one"
    (cm.a / "g").write_bytes(b"two, longer")
    assert (cm.b / "g").read_bytes() == b"two, longer"
