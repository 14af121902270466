"""The report's figures: Table 2's means as a heatmap, and accuracy against ε per row."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def write_heatmap(cells: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    rows = list(dict.fromkeys(c["row"] for c in cells))
    cols = list(dict.fromkeys(c["column"] for c in cells))
    grid = np.full((len(rows), len(cols)), np.nan)
    for c in cells:
        grid[rows.index(c["row"]), cols.index(c["column"])] = 100 * c["mean"]
    fig = _figure(max(6.0, 0.8 * len(cols) + 3), 0.5 * len(rows) + 1.8)
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="RdYlGn", vmin=0, vmax=100)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.savefig(path)
    return path


def write_eps_curve(row: str, members: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Mean accuracy vs ε over the row's seeds (each run's curve from its matrix profile)."""
    pts: dict[float, list[float]] = defaultdict(list)
    for m in members:
        for p in m["eps_curve"]:
            pts[float(p["eps"])].append(float(p["accuracy"]))
    if not pts:
        return None
    eps = sorted(pts)
    mean = [100 * float(np.mean(pts[e])) for e in eps]
    fig = _figure(5, 3.5)
    ax = fig.add_subplot()
    ax.plot(eps, mean, marker="o")
    ax.set_xlabel("ε (ℓ∞, pixel space)")
    ax.set_ylabel("accuracy under PGD (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{row}: accuracy vs ε", fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path
