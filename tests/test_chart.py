"""bench/chart.py: a run's comparison against its peers as a chart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from chart import write_chart

ROWS = [
    {"workload": "sequential write 1 GiB", "pohmelfs_vs_sshfs": 2.8, "pohmelfs_vs_local": None,
     "target": 2.0},
    {"workload": "create 5,000 empty files", "pohmelfs_vs_sshfs": 1.4,
     "pohmelfs_vs_local": 0.03, "target": 8.0},
    {"workload": "untar + sync", "pohmelfs_vs_sshfs": None, "pohmelfs_vs_local": None,
     "target": None},
]  # fmt: skip


@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_a_chart_of_the_ratios(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"chart.{suffix}"
    write_chart(ROWS, str(path), "a run")
    data = path.read_bytes()
    if suffix == "svg":
        text = data.decode()
        assert "sequential write 1 GiB" in text and "create 5,000 empty files" in text
        assert "untar + sync" not in text  # (no ratio: not charted)
        assert "pohmelfs / SSHFS" in text and "2.8x" in text
    else:
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_nothing_to_chart_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no workload"):
        write_chart(ROWS[2:], str(tmp_path / "x.svg"), "empty")
