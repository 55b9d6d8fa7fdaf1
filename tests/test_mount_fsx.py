"""fsx-style random operations alternating between two mounts of one export, every
read checked against a model (tests/fsx_model.py): reads, writes, reads and writes
through shared mappings, truncates up and down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TwoMounts, requires_fuse

pytestmark = requires_fuse
FSX = Path(__file__).with_name("fsx_model.py")


def fsx(seed: int, ops: int, *paths: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FSX), str(seed), str(ops), *map(str, paths)],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.timeout(300)
def test_fsx_alternating_between_two_coherent_mounts(tmp_path: Path) -> None:
    """20,000 operations. A mapping checks its faults against the size the kernel
    knows, asking nobody: the other mount grew the file, so this one must have
    been told the new size (RESIZE) before that write returned, or it gets SIGBUS."""
    two = TwoMounts(tmp_path, "coherent")
    try:
        (two.a / "d").mkdir()
        run = fsx(1, 20_000, two.a / "d" / "f", two.b / "d" / "f", timeout=240)
    finally:
        two.stop()
    assert run.returncode == 0, f"exit {run.returncode}: {run.stdout}{run.stderr}"
    assert run.stdout.strip() == "ok 20000"


@pytest.mark.timeout(120)
def test_fsx_model_catches_a_client_that_is_not_coherent(tmp_path: Path) -> None:
    """The checker is not vacuous: close-to-open mounts (nocoherent) keep what they
    cached while the file stays open, and it sees the other mount's writes missing."""
    two = TwoMounts(tmp_path, "nocoherent")
    try:
        (two.a / "d").mkdir()
        run = fsx(1, 20_000, two.a / "d" / "f", two.b / "d" / "f", timeout=100)
    finally:
        two.stop()
    assert run.returncode != 0
    assert "failed at operation" in run.stdout or run.returncode < 0, run.stdout
