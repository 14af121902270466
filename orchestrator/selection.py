"""Which trial is "best": one rule for the sweep summary, the parent run and ``export`` (docs/architecture.md, selection).

A candidate is a trial that finished without an error and reported a finite value of the
objective (a ``val/…`` metric, the study's first). Candidates are ordered by

1. the objective, in the study's mode (max or min);
2. on an equal objective, the higher ``val/natural`` (of two equally robust models, the
   one that keeps more clean accuracy); a missing or NaN value counts as the lowest;
3. then the earlier trial: the lower trial index (Ray numbers a sweep's trials
   ``…_00000``, ``…_00001``, … in the order it creates them), then the trial id itself.

No Ray and no MLflow here: the summary ranks Tune results, ``export`` and the parent run rank
MLflow runs, and both hand this module the same four numbers and names.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

TIE_BREAK = "val/natural"
RULE = ("best {metric} ({mode}); on a tie the higher val/natural, then the earlier trial (lower index)")


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def trial_index(trial_id: str) -> int:
    """The number Ray gives a trial within its sweep (the digits after the last underscore); a
    trial id without one sorts after every numbered one."""
    m = re.search(r"_(\d+)$", str(trial_id))
    return int(m.group(1)) if m else 1 << 62


@dataclass(frozen=True)
class Candidate:
    trial_id: str
    value: float
    natural: float | None
    item: Any = None  # what the caller ranks (a Tune result, an MLflow run, a row)


def candidate(trial_id: str, value: Any, natural: Any, item: Any = None) -> Candidate | None:
    """A Candidate, or None when `value` is missing or not finite."""
    v = _finite(value)
    return None if v is None else Candidate(str(trial_id), v, _finite(natural), item)


def rank_key(c: Candidate, mode: str) -> tuple:
    """Sort key: the smallest key is the best trial."""
    sign = -1.0 if str(mode).lower() == "max" else 1.0
    natural = -c.natural if c.natural is not None else math.inf
    return (sign * c.value, natural, trial_index(c.trial_id), c.trial_id)


def best(candidates: Iterable[Candidate | None], mode: str) -> Candidate | None:
    """The best of `candidates` (None entries skipped) by the rule above; None when empty."""
    pool = [c for c in candidates if c is not None]
    return min(pool, key=lambda c: rank_key(c, mode)) if pool else None


def rule_text(metric: str, mode: str) -> str:
    if metric == TIE_BREAK:
        return f"best {metric} ({mode}); on a tie the earlier trial (lower index)"
    return RULE.format(metric=metric, mode=mode)
