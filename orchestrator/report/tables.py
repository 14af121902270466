"""The report's tables (docs/architecture.md, checkpoints and export): rows, cells and notes.

A row is a defense and the params that vary between the study's trials (never the seed nor an
execution setting); a cell is ``mean ± std`` over the row's seeds with a 95% Wilson interval
over the pooled test points. Which defenses have rows in Table 1 (the ablation), which of their
flags it ablates and how it names them are facts of each defense's registry entry
(:mod:`trainable.defenses.registry`); Tables 1 and 2's columns are the matrix columns whose
entry names the table (:mod:`trainable.attacks.registry`).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from trainable.attacks.registry import table_columns
from trainable.config import config_fields, identity_fields
from trainable.training.surrogates import SURROGATES
from trainable.defenses.registry import DEFENSES
from trainable.evaluation import binomial_ci

SUMMARY_COLUMNS = ("min", "worst")  # after the registered columns of Tables 1 and 2


def table_keys(table: str) -> list[tuple[str, str]]:
    """(column, metric) of a report table: the columns whose registry entry names the table
    (trainable.attacks.registry, in its order: the paper's, then the parameter-free and
    gradient-free ones), then Min and worst."""
    return [(c, f"matrix/{c}") for c in (*table_columns(table), *SUMMARY_COLUMNS)]


SURROGATE_LETTERS = tuple(SURROGATES)  # Table 3's columns: the transfer column's surrogates × attacks
# Params that describe how a trial ran, not what was trained, never split rows: the fields
# TrialConfig marks so (trainable/config.py, HOW).
NON_IDENTITY = frozenset(config_fields()) - frozenset(identity_fields())
FLAG_TEXT = {
    "more_steps_help": "PGD100 accuracy above PGD10 by more than 1 point",
    "pfree_gap": "parameter-free attacks (APGD-CE/APGD-T/AutoAttack) more than 5 points below PGD100",
    "blackbox_beats_whitebox": "a transfer attack or Square below every white-box gradient attack",
    "unbounded_pgd": "PGD at ε = 1 leaves more than 1% accuracy",
    "perturbation": "an adversarial example outside the ε-ball or [0, 1], or NaN",
}


# ------------------------------------------------------------------ the defenses' report facts
def ablation_flags() -> dict[str, str]:
    """Every flag a registered defense's ablation varies, with its short label in Table 1 (registry order)."""
    out: dict[str, str] = {}
    for entry in DEFENSES.values():
        for flag, short in entry.ablation:
            out.setdefault(flag, short)
    return out


def ablating_defenses() -> list[str]:
    """The defenses whose ablation Table 1 shows (registry order)."""
    return [n for n, e in DEFENSES.items() if "table1" in e.tables and e.ablation]


def flags_of(defense: Any) -> tuple[str, ...]:
    """The flags the defense's own ablation varies (none for a defense not installed here)."""
    return DEFENSES[defense].ablation_flags if defense in DEFENSES else ()


def in_table(defense: Any, table: str) -> bool:
    return defense in DEFENSES and table in DEFENSES[defense].tables


def display_name(defense: Any) -> str:
    return DEFENSES[defense].display_name if defense in DEFENSES else str(defense)


# ------------------------------------------------------------------ grouping and cells
def identity_keys(recs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Params (other than seed and execution settings) whose value differs between trials."""
    keys = sorted({k for r in recs for k in r["params"]} - NON_IDENTITY - {"defense"})
    return [k for k in keys if len({r["params"].get(k) for r in recs}) > 1]


def _names_row(key: str, defense: Any, flags: Mapping[str, str]) -> bool:
    """A varying param names a row unless it is an ablation flag of another defense than the row's."""
    return key not in flags or key in flags_of(defense)


def row_label(rec: Mapping[str, Any], keys: Sequence[str]) -> str:
    p = rec["params"]
    flags = ablation_flags()
    extra = [f"{k}={p.get(k)}" for k in keys if _names_row(k, p.get("defense"), flags)]
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


def write_table_parquet(cells: Sequence[Mapping[str, Any]], path: Path, table: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ("row", "column", "metric", "mean", "std", "seeds", "n_points", "ci_low", "ci_high")
    data = {k: [c[k] for c in cells] for k in names}
    t = pa.table({"table": [table] * len(cells), **data})
    pq.write_table(t, path)
    return path


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s).strip("_")[:80] or "row"


# ------------------------------------------------------------------ rows
def defense_rank(name: Any) -> int:
    """A defense's place in the registry (the report's row order); -1 for one not installed here."""
    names = DEFENSES.names()
    return names.index(name) if name in names else -1


def is_on(v: Any) -> bool:
    return str(v).lower() == "true"


def row_identity(rec: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """What names a Table 2 row (as row_label does): the defense and the params that vary."""
    p = rec["params"]
    flags = ablation_flags()
    return {"defense": p.get("defense"),
            **{k: p.get(k) for k in keys if _names_row(k, p.get("defense"), flags)}}


def group_rows(recs: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
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

