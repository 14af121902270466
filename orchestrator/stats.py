"""Paired statistics for robustness matrices: two defenses on the same test points.

Every stored matrix keeps its per-example correctness vectors and its test-split indices
(docs/architecture.md, selection), so two defenses evaluated on the same fixed test points are *paired*
observations. What this module computes, with no MLflow and no torch:

* :func:`worst_correct` — the per-example worst case: correct on natural input and under
  every column that ran (the rule of ``trainable.evaluation.summarize``), optionally over a
  subset of the columns (Table 3's transfer columns).
* :func:`mcnemar_exact` — the exact McNemar test (McNemar 1947) on two paired boolean
  vectors, the test Dietterich (1998) recommends for comparing two classifiers on one test
  set: with b = points A gets right and B wrong, c = the reverse, p is the two-sided exact
  binomial test of b against Binomial(b + c, ½), p = min(1, 2·P[X ≤ min(b, c)]); p = 1 when
  b + c = 0.
* :func:`align` — the two worst-case vectors of two matrices, ordered by test index; a
  :class:`PairingError` when the matrices ran on different test points, at different ε or
  with different columns (a worst case over different attacks is not like for like).
* :func:`compare_runs` — over seeds. The rule: runs are paired by seed value (A's seed s
  with B's seed s: the same test points, independent trainings; a seed only one side ran is
  left out). Per seed pair: both worst-case accuracies, their difference A − B and a
  McNemar test. Over the seed pairs: mean ± std (ddof = 1) and a 95% Student-t interval of
  the difference and of each side's accuracy (≥ 2 seed pairs), and one *pooled* McNemar test
  on the concatenated paired vectors of all seed pairs (b = Σ b_s, c = Σ c_s). The pooled
  test asks whether the two training recipes differ on these test points, with the seed as
  replication; it treats every (seed, point) pair as independent, so the same hard points
  recurring across seeds count several times. For a claim about new test points the
  t-interval over seeds is the more conservative reading.

Generator-column budgets (L2L-DA's T, λ, fine-tuning) follow each trial's own config by
design, so :func:`align` does not compare budgets; it compares the column names.
Accuracies are fractions in [0, 1]; differences are A − B.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

ALPHA = 0.05


class PairingError(ValueError):
    """Two matrices cannot be compared example by example; the message is one line."""


# ------------------------------------------------------------------ per-example worst case
def worst_correct(matrix: Mapping[str, Any], columns: Callable[[str], bool] | None = None) -> np.ndarray:
    """Per example: correct on natural input AND under every column (or every column for
    which ``columns(name)`` is true). ``matrix`` has ``correct``: column → boolean vector."""
    correct = matrix.get("correct") or {}
    if "natural" not in correct:
        raise PairingError("matrix: no 'natural' correctness vector")
    ok = np.asarray(correct["natural"], dtype=bool).copy()
    for name, vec in correct.items():
        if name == "natural" or (columns is not None and not columns(name)):
            continue
        v = np.asarray(vec, dtype=bool)
        if v.shape != ok.shape:
            raise PairingError(f"matrix.correct[{name!r}]: {v.size} entries, natural has {ok.size}")
        ok &= v
    return ok


def transfer_only(name: str) -> bool:
    """Column filter for Table 3: the black-box transfer columns."""
    return name.startswith("transfer/")


# ------------------------------------------------------------------ McNemar
@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of A vs B: b = A right and B wrong, c = A wrong and B right."""

    b: int
    c: int
    n: int  # paired points
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def to_dict(self) -> dict[str, Any]:
        return {"b": self.b, "c": self.c, "n": self.n, "p": self.p}


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (McNemar 1947)."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar: negative counts b={b}, c={c}")
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    # For p = ½ scipy's two-sided rule (sum of outcomes no likelier than the observed one)
    # equals min(1, 2·P[X ≤ min(b, c)]).
    return float(min(1.0, binomtest(min(b, c), b + c, 0.5).pvalue))


def mcnemar_exact(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> McNemar:
    """Exact McNemar test on two paired boolean vectors (True = correct), same order."""
    va, vb = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if va.shape != vb.shape or va.ndim != 1:
        raise PairingError(f"mcnemar: vectors of shapes {va.shape} and {vb.shape} are not paired")
    nb, nc = int((va & ~vb).sum()), int((~va & vb).sum())
    return McNemar(nb, nc, int(va.size), mcnemar_p(nb, nc))


# ------------------------------------------------------------------ alignment
def _eps(matrix: Mapping[str, Any]) -> float | None:
    e = (matrix.get("profile") or {}).get("eps")
    return None if e is None else float(e)


def align(a: Mapping[str, Any], b: Mapping[str, Any], *, names: tuple[str, str] = ("A", "B"),
          columns: Callable[[str], bool] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(worst vector of A, worst vector of B, test indices), both ordered by A's indices.

    Refuses (PairingError) when the two matrices ran on different test points, at a different
    ε, or with different columns (among those ``columns`` selects)."""
    na, nb = names
    for name, m in ((na, a), (nb, b)):
        if m.get("indices") is None or not m.get("correct"):
            raise PairingError(f"{name}: no per-example correctness vectors to pair")
    ia, ib = np.asarray(a["indices"], dtype=np.int64), np.asarray(b["indices"], dtype=np.int64)
    for name, idx in ((na, ia), (nb, ib)):
        if len(np.unique(idx)) != len(idx):
            raise PairingError(f"{name}: repeated test indices")
    if ia.size != ib.size or not np.array_equal(np.sort(ia), np.sort(ib)):
        common = len(np.intersect1d(ia, ib))
        raise PairingError(f"{na} and {nb} ran on different test points ({ia.size} and {ib.size} points, "
                           f"{common} in common): evaluate both on the same fixed test indices")
    ea, eb = _eps(a), _eps(b)
    if ea is not None and eb is not None and not math.isclose(ea, eb, rel_tol=0, abs_tol=1e-9):
        raise PairingError(f"{na} ran at ε = {ea:g}, {nb} at ε = {eb:g}: not comparable")
    keep = columns or (lambda name: True)
    ca = {c for c in a["correct"] if c != "natural" and keep(c)}
    cb = {c for c in b["correct"] if c != "natural" and keep(c)}
    if columns is not None and not ca and not cb:
        raise PairingError(f"{na} and {nb}: none of the selected columns ran")
    if ca != cb:
        only_a, only_b = sorted(ca - cb), sorted(cb - ca)
        raise PairingError(f"{na} and {nb} ran different columns (only {na}: {', '.join(only_a) or '–'}; "
                           f"only {nb}: {', '.join(only_b) or '–'}): their worst cases are not comparable")
    wa, wb = worst_correct(a, columns), worst_correct(b, columns)
    if wa.size != ia.size or wb.size != ib.size:
        raise PairingError(f"{na} or {nb}: correctness vectors and test indices differ in length")
    pos_b = {int(i): k for k, i in enumerate(ib)}
    wb = wb[np.fromiter((pos_b[int(i)] for i in ia), dtype=np.int64, count=ia.size)]
    return wa, wb, ia


# ------------------------------------------------------------------ over seeds
@dataclass(frozen=True)
class SeedSummary:
    """Mean, std (ddof = 1) and 95% Student-t interval of one quantity over seeds."""

    mean: float
    std: float
    k: int  # seeds
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_interval(values: Sequence[float], level: float = 0.95) -> SeedSummary:
    """mean ± t_{(1+level)/2, k−1} · std/√k over k values; std and interval NaN for k < 2."""
    v = np.asarray(list(values), dtype=float)
    k = int(v.size)
    if k == 0:
        return SeedSummary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(v.mean())
    if k < 2:
        return SeedSummary(mean, math.nan, 1, math.nan, math.nan)
    from scipy.stats import t

    std = float(v.std(ddof=1))
    half = float(t.ppf((1 + level) / 2, k - 1)) * std / math.sqrt(k)
    return SeedSummary(mean, std, k, mean - half, mean + half)


@dataclass
class PairedComparison:
    """A vs B over the seeds both ran (see the module docstring for the pairing rule)."""

    seeds: list[Any]
    acc_a: SeedSummary
    acc_b: SeedSummary
    diff: SeedSummary  # A − B
    pooled: McNemar
    per_seed: list[dict[str, Any]] = field(default_factory=list)  # seed, acc_a, acc_b, diff, b, c, n, p

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), "acc_a": self.acc_a.to_dict(), "acc_b": self.acc_b.to_dict(),
                "diff": self.diff.to_dict(), "pooled": self.pooled.to_dict(), "per_seed": list(self.per_seed)}


def compare_runs(runs_a: Mapping[Any, Mapping[str, Any]], runs_b: Mapping[Any, Mapping[str, Any]], *,
                 names: tuple[str, str] = ("A", "B"),
                 columns: Callable[[str], bool] | None = None) -> PairedComparison:
    """Pair A's and B's matrices by seed (``{seed: matrix}``), test each pair and pool them.

    PairingError when no seed is common to both or a seed pair cannot be aligned."""
    common = [s for s in runs_a if s in runs_b]
    try:
        common.sort()
    except TypeError:  # mixed seed types: keep A's order
        pass
    if not common:
        raise PairingError(f"{names[0]} and {names[1]} share no seed (seeds {sorted(map(str, runs_a))} and "
                           f"{sorted(map(str, runs_b))})")
    per_seed, va_all, vb_all = [], [], []
    for s in common:
        wa, wb, _ = align(runs_a[s], runs_b[s], names=(f"{names[0]} seed {s}", f"{names[1]} seed {s}"),
                          columns=columns)
        test = mcnemar_exact(wa, wb)
        per_seed.append({"seed": s, "acc_a": float(wa.mean()), "acc_b": float(wb.mean()),
                         "diff": float(wa.mean() - wb.mean()), **test.to_dict()})
        va_all.append(wa)
        vb_all.append(wb)
    pooled = mcnemar_exact(np.concatenate(va_all), np.concatenate(vb_all))
    return PairedComparison(
        seeds=common,
        acc_a=t_interval([r["acc_a"] for r in per_seed]),
        acc_b=t_interval([r["acc_b"] for r in per_seed]),
        diff=t_interval([r["diff"] for r in per_seed]),
        pooled=pooled, per_seed=per_seed)


def format_p(p: float | None) -> str:
    """p for a table: three decimals, scientific below 0.001, '–' when there is none."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
