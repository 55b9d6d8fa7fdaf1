"""A write request is applied all or nothing: one the file system cannot hold fails
before a byte of it is written, so no reader ever sees part of it."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import address_of, make_client, start_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="mounts a tmpfs (never skipped in CI)"
)
MiB = 1 << 20


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system to export."""
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0777", "tmpfs", str(root)],
                   check=True)  # fmt: skip
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def fill(path: Path, leave: int) -> None:
    """Fill the file system but for about ``leave`` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * (64 << 10))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(path, os.path.getsize(path) - leave)


def test_a_write_that_does_not_fit_changes_nothing(small: Path) -> None:
    server = start_server(small)
    try:
        with make_client([address_of(server)]) as c:
            with c.open("/f", "wb") as f:
                f.write(b"old" * 1000)
            fill(small / "filler", 300 << 10)
            before = (small / "f").read_bytes()
            with c.open("/f", "r+b", buffering=0) as f:
                for offset in (len(before), 1000, 5 * MiB):  # grow it, straddle its end, a hole
                    with pytest.raises(OSError) as e:
                        f.pwrite(b"N" * MiB, offset)
                    assert e.value.errno == errno.ENOSPC
                    assert (small / "f").read_bytes() == before
                f.pwrite(b"fits", 0)  # a write that fits still does
            assert (small / "f").read_bytes()[:4] == b"fits"
    finally:
        server.stop()
        server.export.close()
