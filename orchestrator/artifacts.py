"""Pure rendering helpers: robustness matrices, curves and sweep tables as files (docs/architecture.md, tracking).

Workers only return data; the driver (tracking), ``export`` and ``report`` turn it into
files with these functions. Nothing here talks to MLflow or Ray. Tables are written with
pyarrow; figures with matplotlib's Agg canvas on a bare ``Figure`` (no pyplot global
state, so rendering is safe inside a long-running driver), imported lazily because
matplotlib costs about a second to import.

A matrix is the JSON form of :class:`trainable.evaluation.MatrixResult`
(``MatrixResult.to_dict()``): ``metrics`` (``matrix/<col>``, ``matrix/min``,
``matrix/worst``), ``correct`` (column → 0/1 per test example), ``indices`` (test-split
indices), ``profile``, ``checks``, ``timings``. Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

MATRIX_JSON = "robustness_matrix.json"
MATRIX_PARQUET = "robustness_matrix.parquet"
MATRIX_HEATMAP = "robustness_heatmap.png"
CURVES_PNG = "loss_curves.png"
SWEEP_TABLE = "sweep_table.parquet"
PARETO_PNG = "pareto.png"


class ArtifactError(ValueError):
    """Input data cannot be rendered; the message is one line naming what is wrong."""


# ---------------------------------------------------------------- matrices
def _check_matrix(matrix: Mapping[str, Any]) -> None:
    for key in ("metrics", "correct", "indices"):
        if key not in matrix:
            raise ArtifactError(f"matrix: missing key {key!r} (expected MatrixResult.to_dict())")
    n = len(matrix["indices"])
    for col, vec in matrix["correct"].items():
        if len(vec) != n:
            raise ArtifactError(f"matrix.correct[{col!r}]: {len(vec)} entries for {n} test indices")


def _jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays and non-finite floats → plain JSON (NaN becomes null)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def matrix_summary(matrix: Mapping[str, Any]) -> dict[str, Any]:
    """What robustness_matrix.json holds: metrics, profile, checks, timings and the test size.

    The per-example vectors go to the Parquet file, not the JSON (they would dwarf it)."""
    _check_matrix(matrix)
    return _jsonable({
        "metrics": dict(matrix["metrics"]),
        "n": len(matrix["indices"]),
        "columns": list(matrix["correct"]),
        "profile": matrix.get("profile", {}),
        "checks": matrix.get("checks", {}),
        "timings": matrix.get("timings", {}),
    })


def write_matrix_json(matrix: Mapping[str, Any], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(matrix_summary(matrix), indent=2, sort_keys=True))
    return p


def matrix_table(matrix: Mapping[str, Any]):
    """One row per test example: ``index`` (test-split index) and one bool column per attack
    column (True = classified correctly under that attack), so ``worst`` can be recomputed
    and two runs compared example by example. The profile rides along as schema metadata."""
    import pyarrow as pa

    _check_matrix(matrix)
    cols: dict[str, Any] = {"index": pa.array(np.asarray(matrix["indices"], dtype=np.int64))}
    for col, vec in matrix["correct"].items():
        cols[col] = pa.array(np.asarray(vec).astype(bool))
    meta = {b"l2lda.profile": json.dumps(_jsonable(matrix.get("profile", {}))).encode(),
            b"l2lda.metrics": json.dumps(_jsonable(dict(matrix["metrics"]))).encode()}
    return pa.table(cols).replace_schema_metadata(meta)


def write_matrix_parquet(matrix: Mapping[str, Any], path: str | os.PathLike) -> Path:
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(matrix_table(matrix), p)
    return p


def read_matrix_parquet(path: str | os.PathLike) -> dict[str, Any]:
    """Back to the ``{correct, indices, metrics, profile}`` shape (for report and comparisons)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    meta = t.schema.metadata or {}
    correct = {c: np.asarray(t.column(c).to_pylist(), dtype=bool) for c in t.column_names if c != "index"}
    return {
        "indices": np.asarray(t.column("index").to_pylist(), dtype=np.int64),
        "correct": correct,
        "metrics": json.loads(meta.get(b"l2lda.metrics", b"{}")),
        "profile": json.loads(meta.get(b"l2lda.profile", b"{}")),
    }


def _new_figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


# Ray Tune's generated trial names (<Trainable>_<5 hex>_<5 digits>) say nothing to a reader.
_RAY_TRIAL_NAME = re.compile(r"^\w+_[0-9a-f]{5}_\d{5}$")


def matrix_title(matrix: Mapping[str, Any], title: str = "") -> str:
    """What a matrix figure is of: the defense and dataset from its profile, then `title`
    unless that is only a Ray trial name (the run name says more; the trial id is a tag)."""
    prof = matrix.get("profile", {}) or {}
    defense = (prof.get("training") or {}).get("defense") or prof.get("defense")
    head = " on ".join(str(v) for v in (defense, prof.get("dataset")) if v)
    if title and not _RAY_TRIAL_NAME.match(title) and title not in head:
        return f"{head} · {title}" if head else title
    return head or title


def write_matrix_heatmap(matrix: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Per-example correctness (rows: attack columns, columns: test examples sorted from most
    to least robust; green = correct). The row labels carry each column's accuracy; the title
    names the defense (matrix_title)."""
    _check_matrix(matrix)
    title = matrix_title(matrix, title)
    names = list(matrix["correct"])
    grid = np.stack([np.asarray(matrix["correct"][c], dtype=float) for c in names]) if names else np.zeros((0, 0))
    order = np.argsort(-grid.sum(0), kind="stable") if grid.size else np.arange(0)
    grid = grid[:, order] if grid.size else grid
    fig = _new_figure(max(6.0, min(14.0, 0.01 * grid.shape[1] + 5)), 0.45 * max(len(names), 1) + 1.6)
    ax = fig.add_subplot()
    if grid.size:
        ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="RdYlGn", vmin=0, vmax=1)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{c}  {100 * float(np.mean(matrix['correct'][c])):.1f}%" for c in names])
    ax.set_xlabel(f"test examples (n = {len(matrix['indices'])}, sorted by robustness)")
    m = matrix["metrics"]
    sub = f"min {100 * m.get('matrix/min', float('nan')):.1f}%  worst {100 * m.get('matrix/worst', float('nan')):.1f}%"
    ax.set_title(f"{title}  ({sub})" if title else sub, fontsize=10)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    return p


def render_matrix(matrix: Mapping[str, Any], directory: str | os.PathLike, title: str = "") -> list[Path]:
    """robustness_matrix.json, robustness_matrix.parquet and the heatmap PNG into `directory`."""
    d = Path(directory)
    return [write_matrix_json(matrix, d / MATRIX_JSON), write_matrix_parquet(matrix, d / MATRIX_PARQUET),
            write_matrix_heatmap(matrix, d / MATRIX_HEATMAP, title)]


# ------------------------------------------------------------------ curves
def write_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike,
                 title: str = "") -> Path:
    """loss_curves.png from curves_figure."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    curves_figure(history, title).savefig(p)
    return p


def curves_figure(history: Mapping[str, Sequence[tuple[int, float]]], title: str = ""):
    """Curves per Tune report: losses on one axis, accuracies (train and validation) on their own.

    `history` maps metric keys to (step, value) pairs, step = Tune's training_iteration. Lines
    that coincide stay visible: each has its own line style and marker, and `val/worst` (often
    equal to the strongest validation attack) is drawn first, wide and pale, under the others."""
    losses = sorted(k for k in history if k.startswith("train/") and "loss" in k)
    accs = sorted((k for k in history if k.startswith(("train/acc", "val/", "eval/"))),
                  key=lambda k: (k != "val/worst", k))
    groups = [(g, ks) for g, ks in (("losses", losses), ("accuracies", accs)) if ks]
    fig = _new_figure(5.5 * max(len(groups), 1), 3.8)
    if not groups:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no train/ or val/ metrics recorded", ha="center", va="center")
        ax.set_axis_off()
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "v", "D", "x")
    for i, (label, keys) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for j, k in enumerate(keys):
            pts = sorted((int(s), float(v)) for s, v in history[k])
            if not pts:
                continue
            few = len(pts) < 30
            if k == "val/worst":
                kw = dict(linewidth=5, alpha=0.35, color="black", zorder=1)
            else:
                kw = dict(linewidth=1.4, linestyle=styles[j % len(styles)], zorder=2 + j,
                          marker=markers[j % len(markers)] if few else None, markersize=4, markerfacecolor="none")
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=k, **kw)
        ax.set_xlabel("training_iteration (Tune reports)")
        ax.set_ylabel("loss" if label == "losses" else "accuracy")
        if label == "accuracies":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ------------------------------------------------------------ sweep table
def _parse_scalar(v: Any) -> Any:
    """MLflow params come back as strings: give numbers and booleans their type again."""
    if not isinstance(v, str):
        return v
    if v in ("True", "true"):
        return True
    if v in ("False", "false"):
        return False
    if v == "None":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _column_array(values: list[Any]):
    """One typed pyarrow column: bool, int64, float64 or (for anything mixed) string."""
    import pyarrow as pa

    vals = [_parse_scalar(v) for v in values]
    present = [v for v in vals if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(vals, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(vals, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([float(v) if v is not None else None for v in vals], type=pa.float64())
    return pa.array([None if v is None else (",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
                     for v in vals], type=pa.string())


def sweep_table(rows: Sequence[Mapping[str, Any]], leading: Sequence[str] = ("trial_id", "trial_name", "run_id", "status")):
    """Trials × (config params, val/ and matrix metrics) as a pyarrow Table; one row per trial.

    Columns are the union over rows (missing cells null); `leading` columns first, then
    config keys (no '/'), then metric keys (namespaced, sorted)."""
    import pyarrow as pa

    keys: list[str] = []
    seen: set[str] = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    lead = [k for k in leading if k in seen]
    config = sorted(k for k in keys if k not in lead and "/" not in k)
    metrics = sorted(k for k in keys if "/" in k)
    order = lead + config + metrics
    return pa.table({k: _column_array([r.get(k) for r in rows]) for k in order}) if order else pa.table({})


def write_sweep_table(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(sweep_table(rows), p)
    return p


# ----------------------------------------------------------------- Pareto
def pareto_front(points: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (both maximised)."""
    pts = [(float(a), float(b)) for a, b in points]
    front = []
    for i, (a, b) in enumerate(pts):
        if not (math.isfinite(a) and math.isfinite(b)):
            continue
        dominated = any(c >= a and d >= b and (c > a or d > b) for j, (c, d) in enumerate(pts)
                        if j != i and math.isfinite(c) and math.isfinite(d))
        if not dominated:
            front.append(i)
    return front


def write_pareto(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, x: str = "matrix/natural",
                 y: str = "matrix/worst", label: str = "trial_name", title: str = "") -> Path:
    """pareto.png from pareto_figure."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    pareto_figure(rows, x, y, label, title).savefig(p)
    return p


def _short(name: str, limit: int = 40) -> str:
    """A label whole when it fits, else its start and end around an ellipsis (never cut blind)."""
    return name if len(name) <= limit else f"{name[:limit // 2 - 1]}…{name[-(limit // 2):]}"


def pareto_figure(rows: Sequence[Mapping[str, Any]], x: str = "matrix/natural", y: str = "matrix/worst",
                  label: str = "trial_name", title: str = ""):
    """Natural vs worst-case test accuracy of every trial, the Pareto front joined by a line."""
    pts, names = [], []
    for r in rows:
        a, b = r.get(x), r.get(y)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b):
            pts.append((float(a), float(b)))
            names.append(str(r.get(label) or r.get("trial_id") or len(names)))
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    if pts:
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, s=18, color="tab:blue", alpha=0.7, label="trials")
        front = sorted(pareto_front(pts), key=lambda i: pts[i][0])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="tab:red", marker="o",
                markersize=5, label="Pareto front")
        # Labels point inwards (left of points in the right half, below points in the top part)
        # and the axes leave room for them, so none is cut at the figure's edge.
        x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
        x_mid, y_mid = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2
        for i in front:
            right, top = pts[i][0] > x_mid, pts[i][1] > y_mid
            ax.annotate(_short(names[i]), pts[i], fontsize=6, textcoords="offset points",
                        xytext=(-4 if right else 4, -8 if top else 4), ha="right" if right else "left",
                        va="top" if top else "bottom")
        pad_x, pad_y = max(0.05, 0.15 * (x_hi - x_lo)), max(0.05, 0.15 * (y_hi - y_lo))
        ax.set_xlim(x_lo - pad_x, x_hi + pad_x)
        ax.set_ylim(y_lo - pad_y, y_hi + pad_y)
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, f"no trial reported {x} and {y}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"{x} (test accuracy)")
    ax.set_ylabel(f"{y} (test accuracy)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "natural vs worst-case accuracy", fontsize=10)
    return fig
