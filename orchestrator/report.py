"""`l2lda-tune report`: the paper's tables from a finished study in MLflow.

Reads the study's child runs (role ``trial``, status FINISHED) with ``MlflowClient``:
params are the flat TrialConfig fields, metrics ``matrix/<col>``, ``transfer/<X>/<attack>``
and ``check/<flag>``, and the artifacts ``robustness_matrix.json`` (profile: test-point
count, ε-curve; checks: gradient-masking flags with their numbers) and
``robustness_matrix.parquet`` (per-example correctness vectors). Writes to ``--out``:

* ``report.md`` — Table 1 (ablation: L2L-DA rows by the flags that vary, R×D / δ×y),
  Table 2 (defenses × white-box, parameter-free and gradient-free attacks, Min, worst),
  Table 3 (defenses × transfer from surrogates A/B/C, Min), each cell
  ``mean ± std`` over seeds (percent) with a 95% Wilson interval over the pooled test points;
  under each table its *paired comparisons*: for each pair of rows, the difference in
  worst-case accuracy (first − second, mean over the seeds both ran, 95% t-interval over
  seeds) and the exact McNemar test on the pooled per-example vectors (McNemar 1947;
  Dietterich 1998), ``*`` when p < 0.05 — the pairing rule is in :mod:`orchestrator.stats`;
  then every gradient-masking flag that fired, as a warning;
* ``table1.parquet``, ``table2.parquet``, ``table3.parquet`` — the same cells, long format;
* ``paired.json`` (with the per-seed tests) and ``paired.parquet`` — the paired comparisons;
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
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from orchestrator import stats
from orchestrator.artifacts import MATRIX_JSON, MATRIX_PARQUET, read_matrix_parquet
from trainable.attacks.registry import table_columns
from trainable.evaluation.transfer import TRANSFER_ATTACKS
from trainable.training.surrogates import SURROGATES
from trainable.defenses.registry import DEFENSES
from trainable.evaluation import binomial_ci
from trainable.text import Clock, quote

SUMMARY_COLUMNS = ("min", "worst")  # after the registered columns of Tables 1 and 2


def table_keys(table: str) -> list[tuple[str, str]]:
    """(column, metric) of a report table: the columns whose registry entry names the table
    (trainable.attacks.registry, in its order: the paper's, then the parameter-free and
    gradient-free ones), then Min and worst."""
    return [(c, f"matrix/{c}") for c in (*table_columns(table), *SUMMARY_COLUMNS)]
SURROGATE_LETTERS = tuple(SURROGATES)  # Table 3's columns: the transfer column's surrogates × attacks
ABLATION_FLAGS = ("recursive", "diversity", "use_delta", "use_label", "grad_norm")
ABLATION_SHORT = {"recursive": "R", "diversity": "D", "use_delta": "δ", "use_label": "y", "grad_norm": "g"}
# Params that describe how a trial ran, not what was trained: never split rows.
NON_IDENTITY = {"seed", "device", "threads", "gpu_fraction", "compile", "channels_last", "amp", "deterministic",
                "data_root", "download",
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
        raise ReportError(f"experiment {quote(experiment)}: not found in the tracking store")
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


def _matrix_vectors(client: Any, run_id: str, tmp: Path) -> dict | None:
    """The run's per-example correctness vectors (robustness_matrix.parquet), or None."""
    try:
        p = client.download_artifacts(run_id, MATRIX_PARQUET, str(tmp / run_id))
        return read_matrix_parquet(p)
    except Exception:  # older runs, or a matrix that was not rendered: no paired test for them
        return None


def collect(client: Any, experiment: str | Sequence[str],
            log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One record per finished trial of the experiment(s): params, metrics, test-point count,
    masking flags, ε-curve, and ``matrix`` — the correctness vectors and test indices for paired
    comparisons (or None). Several experiments are reported as one (their rows pair when they
    ran on the same test points). `log` hears a progress line while the runs' matrices download."""
    clock = Clock(log, "report")
    clock.current = "reading the finished trial runs"
    with clock.heartbeat():  # a line at least every 10 s, however slow the store
        return _collect(client, experiment, clock)


def _collect(client: Any, experiment: str | Sequence[str], clock: Clock) -> list[dict[str, Any]]:
    names = [experiment] if isinstance(experiment, str) else list(dict.fromkeys(experiment))
    runs = [r for name in names for r in _runs(client, name)]
    clock.stage(f"{len(runs)} finished trial runs in {', '.join(quote(n) for n in names)}; downloading their matrices")
    recs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(runs, 1):
            if i > 1:
                clock.tick("matrices downloaded", i - 1, len(runs))
            mj = _matrix_json(client, r.info.run_id, Path(tmp))
            metrics = dict(r.data.metrics)
            if not any(k.startswith("matrix/") for k in metrics) and mj.get("metrics"):
                metrics.update(mj["metrics"])
            if not any(k.startswith("matrix/") for k in metrics):
                continue  # finished without a matrix (e.g. stopped early by the scheduler)
            profile = mj.get("profile", {}) or {}
            n = int(mj.get("n") or profile.get("n") or 0)
            recs.append({"run_id": r.info.run_id, "name": r.data.tags.get("trial_name", r.info.run_id),
                         "params": dict(r.data.params), "device": r.data.tags.get("device"), "metrics": metrics, "n": n, "eps": profile.get("eps"),
                         "masking": (mj.get("checks", {}) or {}).get("masking", {}),
                         "eps_curve": profile.get("eps_curve") or [],
                         "matrix": _matrix_vectors(client, r.info.run_id, Path(tmp))})
        if runs:
            clock.tick("matrices downloaded", len(runs), len(runs))
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


# ------------------------------------------------------------------ paired comparisons
# Up to this many rows a table compares every pair of rows; beyond, every row against the
# row with the highest mean worst case (so an HPO study does not print thousands of pairs).
MAX_ALL_PAIRS_ROWS = 8


def _seed_key(m: Mapping[str, Any]) -> Any:
    s = m["params"].get("seed")
    try:
        return int(s)
    except (TypeError, ValueError):
        return s


def _by_seed(row: str, members: Sequence[Mapping[str, Any]]) -> dict[Any, Mapping[str, Any]]:
    out: dict[Any, Mapping[str, Any]] = {}
    for m in members:
        s = _seed_key(m)
        if s in out:
            raise stats.PairingError(f"{row}: two runs with seed {s} ({out[s]['name']}, {m['name']}), "
                                     f"so pairing by seed is ambiguous")
        out[s] = m
    return out


def _metric_only(a: Mapping[Any, Mapping[str, Any]], b: Mapping[Any, Mapping[str, Any]],
                 metric: str) -> dict[str, Any]:
    """Difference of a recorded metric paired by seed, for runs without correctness vectors."""
    common = sorted((s for s in a if s in b and metric in a[s]["metrics"] and metric in b[s]["metrics"]), key=str)
    diffs = [a[s]["metrics"][metric] - b[s]["metrics"][metric] for s in common]
    return {"seeds": common, "diff": stats.t_interval(diffs),
            "acc_a": stats.t_interval([a[s]["metrics"][metric] for s in common]),
            "acc_b": stats.t_interval([b[s]["metrics"][metric] for s in common])}


def compare_rows(table: str, first: str, second: str, members_a: Sequence[Mapping[str, Any]],
                 members_b: Sequence[Mapping[str, Any]], *, differs: Sequence[str] = (),
                 columns: Any = None, metric: str | None = "matrix/worst") -> dict[str, Any]:
    """One paired comparison, first − second (see :mod:`orchestrator.stats` for the rule):
    runs paired by seed, the worst case recomputed from the correctness vectors, per-seed and
    pooled exact McNemar tests. Without vectors, the difference of ``metric`` and no test."""
    e: dict[str, Any] = {"table": table, "a": first, "b": second, "differs": ", ".join(differs), "seeds": 0,
                         "seed_list": "", "diff_mean": math.nan, "diff_std": math.nan, "diff_ci_low": math.nan,
                         "diff_ci_high": math.nan, "acc_a": math.nan, "acc_b": math.nan, "mcnemar_b": None,
                         "mcnemar_c": None, "n_pairs": 0, "p": None, "significant": False, "per_seed": [], "note": ""}
    try:
        a, b = _by_seed(first, members_a), _by_seed(second, members_b)
        if all(m.get("matrix") for m in (*a.values(), *b.values())):
            cmp = stats.compare_runs({s: m["matrix"] for s, m in a.items()}, {s: m["matrix"] for s, m in b.items()},
                                     names=(first, second), columns=columns)
            res = {"seeds": cmp.seeds, "diff": cmp.diff, "acc_a": cmp.acc_a, "acc_b": cmp.acc_b}
            e.update(mcnemar_b=cmp.pooled.b, mcnemar_c=cmp.pooled.c, n_pairs=cmp.pooled.n, p=cmp.pooled.p,
                     significant=cmp.pooled.significant, per_seed=cmp.per_seed)
        elif metric is not None:
            res = _metric_only(a, b, metric)
            e["note"] = "no correctness vectors for some runs: no McNemar test"
        else:
            raise stats.PairingError("no correctness vectors for some runs")
    except stats.PairingError as exc:
        e["note"] = str(exc)
        return e
    e.update(seeds=len(res["seeds"]), seed_list=",".join(map(str, res["seeds"])), diff_mean=res["diff"].mean,
             diff_std=res["diff"].std, diff_ci_low=res["diff"].ci_low, diff_ci_high=res["diff"].ci_high,
             acc_a=res["acc_a"].mean, acc_b=res["acc_b"].mean)
    if not res["seeds"]:
        e["note"] = e["note"] or "no seed common to both rows"
    return e


def row_pairs(rows: Mapping[str, Sequence[Mapping[str, Any]]], identity: Mapping[str, Mapping[str, Any]],
              rank: Mapping[str, Any]) -> tuple[list[tuple[str, str, list[str]]], str]:
    """(first, second, what differs) for the table's pairs, and a note on how they were chosen.

    Within a pair the row with the higher ``rank`` comes first (Table 1: more ablation flags
    on; Table 2: the later defense in the registry, L2L-DA last, then more flags on), so
    Δ > 0 reads as the paper's claim ("R helps", "L2L-DA beats PGD-AT"); equal ranks keep the
    table's order."""
    names = list(rows)

    def differs(x: str, y: str) -> list[str]:
        keys = list(dict.fromkeys([*identity[x], *identity[y]]))
        out = [k for k in keys if identity[x].get(k) != identity[y].get(k)]
        if "defense" in out:  # another defense: its L2L-DA flags (long or Table 1's short names) are no further difference
            out = [k for k in out if k not in ABLATION_FLAGS and k not in ABLATION_SHORT.values()]
        return out

    def ordered(x: str, y: str) -> tuple[str, str, list[str]]:
        if rank[y] > rank[x]:
            x, y = y, x
        return x, y, differs(x, y)

    if len(names) <= MAX_ALL_PAIRS_ROWS:
        return [ordered(x, y) for i, x in enumerate(names) for y in names[i + 1:]], "every pair of rows"

    def worst(r: str) -> float:
        v = [m["metrics"]["matrix/worst"] for m in rows[r] if "matrix/worst" in m["metrics"]]
        return float(np.mean(v)) if v else -math.inf

    ref = max(names, key=worst)
    return ([(ref, y, differs(ref, y)) for y in names if y != ref],
            f"{len(names)} rows: each against `{ref}`, the row with the highest mean worst case (chosen on these "
            "test numbers, so its p-values are optimistic)")


def _pts(x: float, sign: bool = False) -> str:
    return "–" if x is None or math.isnan(x) else (f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}")


def paired_markdown(entries: Sequence[Mapping[str, Any]], how: str, measure: str = "worst-case accuracy") -> list[str]:
    """The paired-comparisons section of one table (Markdown lines)."""
    lines = [f"**Paired comparisons** ({how}). Δ = first − second in {measure} (points), mean over the seeds "
             "both rows ran, with its 95% t-interval over seeds (≥ 2 seeds). b = test points the first gets right "
             "and the second wrong, c = the reverse, pooled over the seed pairs; p = exact two-sided McNemar test "
             "(McNemar 1947; Dietterich 1998) on the pooled pairs; `*` = p < 0.05, not corrected for the number "
             "of pairs.", "",
             "| first | second | differs in | seeds | Δ (pts) | 95% t-interval | b | c | p | sig. | p per seed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        ci = (f"[{_pts(e['diff_ci_low'], True)}, {_pts(e['diff_ci_high'], True)}]"
              if not math.isnan(e["diff_ci_low"]) else "–")
        per = ", ".join(stats.format_p(r["p"]) for r in e["per_seed"]) or "–"
        b = "–" if e["mcnemar_b"] is None else str(e["mcnemar_b"])
        c = "–" if e["mcnemar_c"] is None else str(e["mcnemar_c"])
        lines.append("| " + " | ".join([e["a"], e["b"], e["differs"] or "–", str(e["seeds"]),
                                         _pts(e["diff_mean"], True), ci, b, c, stats.format_p(e["p"]),
                                         "*" if e["significant"] else "", per]) + " |")
    notes = [f"- {e['a']} vs {e['b']}: {e['note']}" for e in entries if e["note"]]
    if notes:
        lines += ["", *notes]
    return lines


def _write_paired(entries: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """paired.json (with the per-seed tests) and paired.parquet (one flat row per pair)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.artifacts import _jsonable

    js = out / "paired.json"
    js.write_text(json.dumps(_jsonable(list(entries)), indent=2, ensure_ascii=False))
    flat = [{k: v for k, v in e.items() if k != "per_seed"} for e in entries]
    for f, e in zip(flat, entries):
        f["p_per_seed"] = ",".join(f"{r['p']:.6g}" for r in e["per_seed"])
    schema = pa.schema([("table", pa.string()), ("a", pa.string()), ("b", pa.string()), ("differs", pa.string()),
                        ("seeds", pa.int64()), ("seed_list", pa.string()), ("diff_mean", pa.float64()),
                        ("diff_std", pa.float64()), ("diff_ci_low", pa.float64()), ("diff_ci_high", pa.float64()),
                        ("acc_a", pa.float64()), ("acc_b", pa.float64()), ("mcnemar_b", pa.int64()),
                        ("mcnemar_c", pa.int64()), ("n_pairs", pa.int64()), ("p", pa.float64()),
                        ("significant", pa.bool_()), ("note", pa.string()), ("p_per_seed", pa.string())])
    pq.write_table(pa.Table.from_pylist(flat, schema=schema), out / "paired.parquet")
    return [js, out / "paired.parquet"]


# ------------------------------------------------------------------ the report
def _defense_rank(name: Any) -> int:
    """A defense's place in the registry (the report's row order); -1 for one not installed here."""
    names = DEFENSES.names()
    return names.index(name) if name in names else -1


def _on(v: Any) -> bool:
    return str(v).lower() == "true"


def _identity(rec: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """What names a Table 2 row (as row_label does): the defense and the params that vary."""
    p = rec["params"]
    return {"defense": p.get("defense"),
            **{k: p.get(k) for k in keys if k not in ABLATION_FLAGS or p.get("defense") in ("l2lda",)}}


def _group(recs: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
    rows: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in sorted(recs, key=lambda r: (r["params"].get("defense", ""), row_label(r, keys))):
        rows[row_label(r, keys)].append(r)
    return dict(rows)


PIPELINE_KEYS = ("augment", "clf_grad_clip", "lr_decay_at")  # how a classifier was trained (docs/method.md)


def pipeline_note(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A footnote when the rows of one table were trained with different pipelines (augmentation,
    classifier clip, LR schedule: each defense's source default unless the study forced one)."""
    per_row = {row: {k: members[0]["params"].get(k, "?") for k in PIPELINE_KEYS} for row, members in rows.items()}
    if len({tuple(v.items()) for v in per_row.values()}) <= 1:
        return ""
    parts = [f"{row}: " + ", ".join(f"{k}={v}" for k, v in p.items()) for row, p in per_row.items()]
    return ("Rows of this table were trained with different pipelines (each defense's source default, "
            "docs/method.md) — " + "; ".join(parts) + ".")


def _nondeterministic(rec: Mapping[str, Any]) -> bool:
    """Ran on CUDA (its run's `device` tag, else its config) without `deterministic: true`."""
    device = str(rec.get("device") or rec["params"].get("device") or "")
    return device.startswith("cuda") and str(rec["params"].get("deterministic", "False")).lower() != "true"


def determinism_note(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A mark under a table whose rows ran on CUDA without `deterministic: true` (docs/reliability.md,
    devices): the same seed need not give the same matrix, and paired tests across seeds see that noise."""
    loose = [row for row, members in rows.items() if any(_nondeterministic(m) for m in members)]
    if not loose:
        return ""
    return ("⚠ Not deterministic: " + "; ".join(loose) + " ran on CUDA without `deterministic: true` (cuDNN "
            "autotuning and TF32 allowed), so a rerun with the same seed can differ and paired tests across seeds "
            "include that run-to-run noise.")


def make_report(recs: Sequence[Mapping[str, Any]], out: str | Path, experiment: str = "") -> dict[str, Any]:
    """Write report.md, table{1,2,3}.parquet and the PNGs from trial records; returns what was written."""
    if not recs:
        raise ReportError(f"experiment {quote(experiment)}: no finished trial with a robustness matrix")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    l2l = [r for r in recs if r["params"].get("defense") == "l2lda"]
    varying = [f for f in ABLATION_FLAGS if len({r["params"].get(f) for r in l2l}) > 1]
    # An ablation flag names a row only where it varies among the L2L-DA trials (another
    # defense in the same report, e.g. L2L*, sets its own flags and must not split them).
    keys = [k for k in _identity_keys(recs) if k not in ABLATION_FLAGS or k in varying]
    rows = _group(recs, keys)
    written: dict[str, Any] = {"tables": {}}
    paired: list[dict[str, Any]] = []
    md = [f"# Robustness report: {experiment}" if experiment else "# Robustness report", ""]
    # The ε the matrix ran at (the profile's, resolved), not the config's (None = dataset default).
    eps_vals = sorted({round(float(r["eps"]), 6) for r in recs if r.get("eps") is not None})
    md.append(f"{len(recs)} finished trials, {len(rows)} rows; ε = {', '.join(f'{e:g}' for e in eps_vals) or 'unknown'}. "
              "Cells: accuracy (%) mean ± std over seeds, [95% Wilson interval over the pooled test points]. "
              "`worst` counts a point only if it survives every column that ran (transfer included).")
    md.append("")

    # Table 1: the ablation, only when an ablation flag varies among the L2L-DA trials.
    skipped: dict[str, str] = {}
    if not l2l:
        skipped["table1"] = "no finished L2L-DA trial (Table 1 ablates L2L-DA's flags)"
    elif not varying:
        skipped["table1"] = (f"the {len(l2l)} L2L-DA trial{'s' if len(l2l) != 1 else ''} share every ablation flag "
                             f"({', '.join(ABLATION_FLAGS)}): nothing to ablate (sweep one, as ablation.yaml does)")
    if "table1" in skipped:
        md += ["## Table 1 — ablation of L2L-DA", "", f"Not built: {skipped['table1']}.", ""]
    if l2l and varying:
        def abl(r: Mapping[str, Any]) -> str:
            return " ".join(f"{ABLATION_SHORT[f]}={'✓' if str(r['params'].get(f)).lower() == 'true' else '✗'}"
                            for f in varying)

        other = [k for k in _identity_keys(l2l) if k not in ABLATION_FLAGS]
        t1rows: dict[str, list] = defaultdict(list)
        t1id: dict[str, dict[str, Any]] = {}
        for r in sorted(l2l, key=abl):
            extra = ", ".join(f"{k}={r['params'].get(k)}" for k in other)
            label = abl(r) + (f" ({extra})" if extra else "")
            t1rows[label].append(r)
            t1id[label] = {"defense": "l2lda", **{ABLATION_SHORT[f]: _on(r["params"].get(f)) for f in varying},
                           **{k: r["params"].get(k) for k in other}}
        # The paper's Table 1(a) also has the L2L* row (Chen et al.'s one-shot generator): its
        # trials join the table when the report holds them (e.g. `--experiment table1_cpu
        # --experiment l2lstar_cpu`), paired with the L2L-DA rows like any other row.
        star = [r for r in recs if r["params"].get("defense") == "l2l_star"]
        star_other = _identity_keys(star)
        for r in star:
            extra = ", ".join(f"{k}={r['params'].get(k)}" for k in star_other)
            label = "L2L*" + (f" ({extra})" if extra else "")
            t1rows[label].append(r)
            t1id[label] = {"defense": "l2l_star", **{k: r["params"].get(k) for k in star_other}}
        cells1 = build_table(recs, t1rows, table_keys("table1"))
        md += ["## Table 1 — ablation of L2L-DA", "", markdown_table(cells1, "flags"), ""]
        for note in (pipeline_note(t1rows), determinism_note(t1rows)):
            md += [note, ""] if note else []
        written["tables"]["table1"] = _write_parquet(cells1, out / "table1.parquet", "table1")
        # "R helps", "D helps": pairs named by the flags that differ, the flag-on row first.
        pairs, how = row_pairs(t1rows, t1id, {k: (t1id[k]["defense"] == "l2lda", sum(v is True for v in t1id[k].values()))
                                              for k in t1rows})
        p1 = [compare_rows("table1", x, y, t1rows[x], t1rows[y], differs=d) for x, y, d in pairs]
        md += [*paired_markdown(p1, how), ""]
        paired += p1
    # Table 2: defenses × attacks.
    cells2 = build_table(recs, rows, table_keys("table2"))
    if not cells2:
        skipped["table2"] = f"no trial's matrix has any of the columns {', '.join(c for c, _ in table_keys('table2'))}"
    md += ["## Table 2 — white-box, parameter-free and gradient-free attacks", "", markdown_table(cells2), "",
           "`cw100`/`cw1000` are ℓ∞ PGD on the C&W margin loss (κ = 0, step ε/12, keep-best), not the paper's "
           "C&W optimisation attack (mister_ed: Adam, soft ℓ∞ penalty, binary search): not directly comparable "
           "with the paper's C&W column. `min` is the paper's lowest white-box column; `autoattack` is our "
           "standard cascade APGD-CE → APGD-T → FAB-T → Square: a point counts only if no stage fools it "
           "(each stage run as its own column, so the columns already in the matrix are reused).", ""]
    for note in (pipeline_note(rows), determinism_note(rows)):
        md += [note, ""] if note else []
    if cells2:
        written["tables"]["table2"] = _write_parquet(cells2, out / "table2.parquet", "table2")
    ident = {row: _identity(members[0], keys) for row, members in rows.items()}
    rank = {row: (_defense_rank(members[0]["params"].get("defense")),
                  sum(_on(members[0]["params"].get(f)) for f in ABLATION_FLAGS if f in ident[row]))
            for row, members in rows.items()}
    pairs, how = row_pairs(rows, ident, rank)
    if pairs:
        p2 = [compare_rows("table2", x, y, rows[x], rows[y], differs=d) for x, y, d in pairs]
        md += [*paired_markdown(p2, how), ""]
        paired += p2
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
        if pairs:
            p3 = [compare_rows("table3", x, y, rows[x], rows[y], differs=d, columns=stats.transfer_only, metric=None)
                  for x, y, d in pairs]
            md += [*paired_markdown(p3, how, "transfer worst case (correct on natural input and under every "
                                             "transfer column)"), ""]
            paired += p3
    else:
        skipped["table3"] = "no transfer columns ran in this study (add `transfer` to `eval_columns`)"
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
    collapsed = generator_checks(rows)
    if collapsed:
        md += ["## Generator checks", "", "⚠ These trials' generators stopped fooling the classifier during training "
               "(`check/generator_collapsed`, docs/method.md): their rows measure a classifier trained on attacks it "
               "had learned to ignore.", "", *collapsed, ""]
    written["generator_checks"] = collapsed
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
    written["paired"] = _write_paired(paired, out)
    written["paired_comparisons"] = paired
    written["report"] = out / "report.md"
    written["warnings"] = warn
    written["skipped"] = skipped
    return written


def generator_checks(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per trial whose generator collapsed during training (docs/method.md, "A generator that stops fooling")."""
    out = []
    for row, members in rows.items():
        for m in members:
            if m["metrics"].get("check/generator_collapsed", 0.0) >= 0.5:
                out.append(f"- **{row}**, seed {m['params'].get('seed', '?')} ({m['name']}): generator collapsed "
                           f"(train adversarial accuracy {100 * m['metrics'].get('train/acc_adv', float('nan')):.1f}% "
                           f"vs clean {100 * m['metrics'].get('train/acc_clean', float('nan')):.1f}%)")
    return out


def report_command(experiment: str | Sequence[str], out: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Entry point of `l2lda-tune report --experiment NAME [--experiment NAME2 …] --out DIR [--tracking-uri URI]`."""
    from orchestrator.export import open_store

    # the same checks as every reader: reachable, MLflow's, never created by reading (and no
    # download progress bars on stderr)
    client, uri = open_store(tracking_uri)
    recs = collect(client, experiment, log=print)
    clock = Clock(print, "report")
    clock.current = "building tables and figures"
    with clock.heartbeat():
        written = make_report(recs, out, " + ".join([experiment] if isinstance(experiment, str) else experiment))
    clock.stage("tables and figures written")
    for table, why in written["skipped"].items():
        print(f"report: {table} not built: {why}")
    pairs = written["paired_comparisons"]
    print(f"report: {written['report']} ({', '.join(sorted(written['tables']))}; "
          f"{len(pairs)} paired comparisons, {sum(e['significant'] for e in pairs)} significant at 5%; "
          f"{len(written['warnings'])} masking warnings; {len(written['generator_checks'])} collapsed generators)")
    return written
