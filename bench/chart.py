"""The comparison of a benchmark run as a chart (matplotlib, SVG or PNG by the file's
name): one bar per workload, pohmelfs against each peer as a ratio on a log scale
(> 1: pohmelfs is better, rates divided, times inverted), the target as a mark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PEERS = (("pohmelfs_vs_sshfs", "pohmelfs / SSHFS", "#3b7dd8"),
         ("pohmelfs_vs_local", "pohmelfs / local disk", "#999999"))  # fmt: skip


def write_chart(rows: Sequence[dict[str, Any]], path: str, title: str) -> None:
    """``rows``: the benchmark's report rows (``workload``, ``pohmelfs_vs_sshfs``,
    ``pohmelfs_vs_local``, ``target``, ``target_vs``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if any(r.get(key) for key, _, _ in PEERS)]
    if not shown:
        raise ValueError("no workload has a ratio to chart")
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(shown) + 1.6))
    height = 0.8 / len(PEERS)
    for i, (key, label, color) in enumerate(PEERS):
        ys = [n + (i - (len(PEERS) - 1) / 2) * height for n in range(len(shown))]
        xs = [r.get(key) or 0 for r in shown]
        # (from 1 out: a bar to the left is pohmelfs behind, to the right ahead)
        ax.barh(ys, [abs(x - 1) if x else 0 for x in xs], left=[min(x, 1) if x else 1 for x in xs],
                height=height, color=color, label=label)  # fmt: skip
        for y, x in zip(ys, xs, strict=True):
            if x:
                ax.text(x * 1.05 if x >= 1 else x / 1.05, y, f"{x:.2g}x", va="center",
                        ha="left" if x >= 1 else "right", fontsize=7)  # fmt: skip
    for n, r in enumerate(shown):
        if r.get("target"):
            ax.plot([r["target"]], [n], marker="|", color="black", markersize=14)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    low = min(x for r in shown for key, _, _ in PEERS if (x := r.get(key)))
    ax.set_xlim(min(low / 3, 0.5), None)
    ax.set_yticks(range(len(shown)), [r["workload"] for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (> 1: pohmelfs better; | = target)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
