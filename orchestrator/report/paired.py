"""Paired comparisons under each table (docs/architecture.md, selection; the rule in
:mod:`orchestrator.stats`): for a pair of rows, the difference in worst-case accuracy over the
seeds both ran (95% t-interval) and the exact McNemar test on the pooled per-example vectors.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from orchestrator import stats
from orchestrator.report.tables import ablation_flags


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
        if "defense" in out:  # another defense: ablation flags (long or Table 1's short names) are no further difference
            flags = ablation_flags()
            out = [k for k in out if k not in flags and k not in flags.values()]
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


def write_paired(entries: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
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
