"""`l2lda-tune report`: the paper's tables from a finished study in MLflow (issue 5).

Reads the study's child runs (role ``trial``, status FINISHED) with ``MlflowClient``:
params are the flat TrialConfig fields, metrics ``matrix/<col>``, ``transfer/<X>/<attack>``
and ``check/<flag>``, and the artifact ``robustness_matrix.json`` (profile: test-point
count, ε-curve; checks: gradient-masking flags with their numbers). Writes to ``--out``:

* ``report.md`` — Table 1 (ablation: L2L-DA rows by the flags that vary, R×D / δ×y),
  Table 2 (defenses × white-box, parameter-free and gradient-free attacks, Min, worst),
  Table 3 (defenses × transfer from surrogates A/B/C, Min), each cell
  ``mean ± std`` over seeds (percent) with a 95% Wilson interval over the pooled test points;
  then every gradient-masking flag that fired, as a warning;
* ``table1.parquet``, ``table2.parquet``, ``table3.parquet`` — the same cells, long format;
* ``heatmap.png`` — Table 2's means; ``eps_curve_<row>.png`` — accuracy vs ε per defense.

Our ``cw100``/``cw1000`` are ℓ∞ PGD on the C&W margin loss, not the paper's C&W
optimisation attack (mister_ed); the report says so under Table 2.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from orchestrator.artifacts import MATRIX_JSON
from trainable.evaluation import binomial_ci

# Column order of Table 2 (paper's columns, then the parameter-free and gradient-free ones).
TABLE2_COLUMNS = ("natural", "fgsm", "pgd10", "pgd100", "cw100", "cw1000", "advgan", "gap", "l2lda",
                  "apgd_ce", "apgd_t", "square", "autoattack", "min", "worst")
TABLE1_COLUMNS = ("natural", "fgsm", "pgd10", "pgd100", "cw100", "l2lda", "apgd_ce", "autoattack", "min", "worst")
SURROGATE_LETTERS = ("A", "B", "C")
TRANSFER_ATTACKS = ("pgd10", "pgd100", "l2lda")
ABLATION_FLAGS = ("recursive", "diversity", "use_delta", "use_label", "grad_norm")
ABLATION_SHORT = {"recursive": "R", "diversity": "D", "use_delta": "δ", "use_label": "y", "grad_norm": "g"}
# Params that describe how a trial ran, not what was trained: never split rows.
NON_IDENTITY = {"seed", "device", "threads", "gpu_fraction", "channels_last", "amp", "data_root", "download",
                "cache_dir", "steps_per_report", "val_subset", "val_columns", "eval_columns", "test_subset",
                "eval_batch_size", "eps_curve"}
FLAG_TEXT = {
    "more_steps_help": "PGD100 accuracy above PGD10 by more than 1 point",
    "pfree_gap": "parameter-free attacks (APGD-CE/APGD-T/AutoAttack) more than 5 points below PGD100",
    "blackbox_beats_whitebox": "a transfer attack or Square below every white-box gradient attack",
    "unbounded_pgd": "PGD at ε = 1 leaves more than 1% accuracy",
    "perturbation": "an adversarial example outside the ε-ball or [0, 1], or NaN",
}


class ReportError(FileNotFoundError):
    """The study cannot be reported (unknown experiment, no finished trial); one line."""


# ------------------------------------------------------------------ reading MLflow
def _runs(client: Any, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"experiment {experiment!r}: not found in the tracking store")
    out, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.role = 'trial' and attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    return out


def _matrix_json(client: Any, run_id: str, tmp: Path) -> dict:
    try:
        p = client.download_artifacts(run_id, MATRIX_JSON, str(tmp / run_id))
        return json.loads(Path(p).read_text())
    except Exception:  # a run without the artifact still has its metrics
        return {}


def collect(client: Any, experiment: str) -> list[dict[str, Any]]:
    """One record per finished trial: params, metrics, test-point count, masking flags, ε-curve."""
    runs = _runs(client, experiment)
    recs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            mj = _matrix_json(client, r.info.run_id, Path(tmp))
            metrics = dict(r.data.metrics)
            if not any(k.startswith("matrix/") for k in metrics) and mj.get("metrics"):
                metrics.update(mj["metrics"])
            if not any(k.startswith("matrix/") for k in metrics):
                continue  # finished without a matrix (e.g. stopped early by the scheduler)
            profile = mj.get("profile", {}) or {}
            n = int(mj.get("n") or profile.get("n") or 0)
            recs.append({"run_id": r.info.run_id, "name": r.data.tags.get("trial_name", r.info.run_id),
                         "params": dict(r.data.params), "metrics": metrics, "n": n, "eps": profile.get("eps"),
                         "masking": (mj.get("checks", {}) or {}).get("masking", {}),
                         "eps_curve": profile.get("eps_curve") or []})
    return recs


# ------------------------------------------------------------------ grouping and cells
def _identity_keys(recs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Params (other than seed and execution settings) whose value differs between trials."""
    keys = sorted({k for r in recs for k in r["params"]} - NON_IDENTITY - {"defense"})
    return [k for k in keys if len({r["params"].get(k) for r in recs}) > 1]


def row_label(rec: Mapping[str, Any], keys: Sequence[str]) -> str:
    p = rec["params"]
    extra = [f"{k}={p.get(k)}" for k in keys if k not in ABLATION_FLAGS or p.get("defense") in ("l2lda",)]
    return p.get("defense", "?") + (f" ({', '.join(extra)})" if extra else "")


def _cell(values: Sequence[float], ns: Sequence[int]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    n = int(sum(ns))
    lo, hi = binomial_ci(mean, n) if n > 0 else (math.nan, math.nan)
    return {"mean": mean, "std": std, "seeds": len(v), "n_points": n, "ci_low": lo, "ci_high": hi}


def build_table(recs: Sequence[Mapping[str, Any]], rows: Mapping[str, Sequence[Mapping[str, Any]]],
                columns: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Long-format cells: for each row and (column label, metric key) present in any of its runs."""
    out = []
    for row, members in rows.items():
        for label, key in columns:
            vals = [(m["metrics"][key], m["n"]) for m in members if key in m["metrics"]]
            if not vals:
                continue
            out.append({"row": row, "column": label, "metric": key,
                        **_cell([v for v, _ in vals], [n for _, n in vals])})
    return out


def _fmt(c: Mapping[str, Any] | None) -> str:
    if c is None:
        return "–"
    s = f"{100 * c['mean']:.1f}"
    if c["seeds"] > 1:
        s += f" ± {100 * c['std']:.1f}"
    if c["n_points"] > 0:
        s += f" [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}]"
    return s


def markdown_table(cells: Sequence[Mapping[str, Any]], first: str = "defense") -> str:
    rows = list(dict.fromkeys(c["row"] for c in cells))
    cols = list(dict.fromkeys(c["column"] for c in cells))
    idx = {(c["row"], c["column"]): c for c in cells}
    seeds = {r: max(c["seeds"] for c in cells if c["row"] == r) for r in rows}
    lines = ["| " + " | ".join([first, "seeds", *cols]) + " |", "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        lines.append("| " + " | ".join([r, str(seeds[r]), *[_fmt(idx.get((r, c))) for c in cols]]) + " |")
    return "\n".join(lines)


def _write_parquet(cells: Sequence[Mapping[str, Any]], path: Path, table: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ("row", "column", "metric", "mean", "std", "seeds", "n_points", "ci_low", "ci_high")
    data = {k: [c[k] for c in cells] for k in names}
    t = pa.table({"table": [table] * len(cells), **data})
    pq.write_table(t, path)
    return path


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s).strip("_")[:80] or "row"


# ------------------------------------------------------------------ figures
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


# ------------------------------------------------------------------ the report
def _group(recs: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
    rows: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in sorted(recs, key=lambda r: (r["params"].get("defense", ""), row_label(r, keys))):
        rows[row_label(r, keys)].append(r)
    return dict(rows)


def make_report(recs: Sequence[Mapping[str, Any]], out: str | Path, experiment: str = "") -> dict[str, Any]:
    """Write report.md, table{1,2,3}.parquet and the PNGs from trial records; returns what was written."""
    if not recs:
        raise ReportError(f"experiment {experiment!r}: no finished trial with a robustness matrix")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = _identity_keys(recs)
    rows = _group(recs, keys)
    written: dict[str, Any] = {"tables": {}}
    md = [f"# Robustness report: {experiment}" if experiment else "# Robustness report", ""]
    # The ε the matrix ran at (the profile's, resolved), not the config's (None = dataset default).
    eps_vals = sorted({round(float(r["eps"]), 6) for r in recs if r.get("eps") is not None})
    md.append(f"{len(recs)} finished trials, {len(rows)} rows; ε = {', '.join(f'{e:g}' for e in eps_vals) or 'unknown'}. "
              "Cells: accuracy (%) mean ± std over seeds, [95% Wilson interval over the pooled test points]. "
              "`worst` counts a point only if it survives every column that ran (transfer included).")
    md.append("")

    # Table 1: the ablation, only when an ablation flag varies among the L2L-DA trials.
    l2l = [r for r in recs if r["params"].get("defense") == "l2lda"]
    varying = [f for f in ABLATION_FLAGS if len({r["params"].get(f) for r in l2l}) > 1]
    if l2l and varying:
        def abl(r: Mapping[str, Any]) -> str:
            return " ".join(f"{ABLATION_SHORT[f]}={'✓' if str(r['params'].get(f)).lower() == 'true' else '✗'}"
                            for f in varying)

        other = [k for k in keys if k not in ABLATION_FLAGS]
        t1rows: dict[str, list] = defaultdict(list)
        for r in sorted(l2l, key=abl):
            extra = ", ".join(f"{k}={r['params'].get(k)}" for k in other)
            t1rows[abl(r) + (f" ({extra})" if extra else "")].append(r)
        cols = [(c, f"matrix/{c}") for c in TABLE1_COLUMNS]
        cells1 = build_table(recs, t1rows, cols)
        md += ["## Table 1 — ablation of L2L-DA", "", markdown_table(cells1, "flags"), ""]
        written["tables"]["table1"] = _write_parquet(cells1, out / "table1.parquet", "table1")
    # Table 2: defenses × attacks.
    cells2 = build_table(recs, rows, [(c, f"matrix/{c}") for c in TABLE2_COLUMNS])
    md += ["## Table 2 — white-box, parameter-free and gradient-free attacks", "", markdown_table(cells2), "",
           "`cw100`/`cw1000` are ℓ∞ PGD on the C&W margin loss (κ = 0, step ε/12, keep-best), not the paper's "
           "C&W optimisation attack (mister_ed: Adam, soft ℓ∞ penalty, binary search): not directly comparable "
           "with the paper's C&W column. `min` is the paper's lowest white-box column; `autoattack` is our "
           "APGD-CE → APGD-T → Square cascade (no FAB-T).", ""]
    written["tables"]["table2"] = _write_parquet(cells2, out / "table2.parquet", "table2")
    if cells2:
        written["heatmap"] = write_heatmap(cells2, out / "heatmap.png", f"{experiment}: accuracy (%)")
    # Table 3: black-box transfer.
    tcols = [(f"{s}/{a}", f"transfer/{s}/{a}") for s in SURROGATE_LETTERS for a in TRANSFER_ATTACKS]
    tcols.append(("min", "transfer/min"))
    cells3 = build_table(recs, rows, tcols)
    if cells3:
        md += ["## Table 3 — black-box transfer (surrogates A plain, B FGSM-AT, C PGD10-AT)", "",
               markdown_table(cells3), ""]
        written["tables"]["table3"] = _write_parquet(cells3, out / "table3.parquet", "table3")
    else:
        md += ["## Table 3 — black-box transfer", "", "No transfer columns ran in this study "
               "(add `transfer` to `eval_columns`).", ""]
    # Masking flags: warnings, never hidden.
    warn = []
    for row, members in rows.items():
        for m in members:
            for flag, text in FLAG_TEXT.items():
                if m["metrics"].get(f"check/{flag}", 0.0) >= 0.5:
                    detail = (m["masking"].get(flag) or {}).get("detail", "")
                    warn.append(f"- **{row}**, seed {m['params'].get('seed', '?')} ({m['name']}): `{flag}` — {text}"
                                + (f" ({detail})" if detail else ""))
    md += ["## Gradient-masking checks", ""]
    md += (["⚠ These flags fired; the affected robustness numbers may be overestimates:", "", *warn]
           if warn else ["No gradient-masking flag fired."])
    md.append("")
    # ε-curves per row.
    curves = []
    for row, members in rows.items():
        p = write_eps_curve(row, members, out / f"eps_curve_{_slug(row)}.png")
        if p is not None:
            curves.append(p)
    if curves:
        md += ["## Accuracy vs ε", "", *[f"![{c.stem}]({c.name})" for c in curves], ""]
    written["eps_curves"] = curves
    (out / "report.md").write_text("\n".join(md))
    written["report"] = out / "report.md"
    written["warnings"] = warn
    return written


def report_command(experiment: str, out: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Entry point of `l2lda-tune report --experiment NAME --out DIR [--tracking-uri URI]`."""
    import os

    from mlflow import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    written = make_report(collect(client, experiment), out, experiment)
    print(f"report: {written['report']} ({', '.join(sorted(written['tables']))}; "
          f"{len(written['warnings'])} masking warnings)")
    return written
