"""The robustness matrix (docs/architecture.md, selection): one accuracy per attack column on fixed test points.

Every column is *prepared* once per matrix (generator columns train their attacker
against the frozen classifier there) and then run batch by batch on the points that
are correct on clean input (clean forwards are shared: a point wrong on clean input
is wrong under every attack). The result keeps the per-example correctness vectors,
so ``worst`` — correct on clean input and under every column that ran — can be
recomputed and two runs compared example by example, and the evaluation profile
(columns, budgets, test indices) that produced it.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.gradient import preserve_mode
from trainable.attacks.registry import COLUMNS, column_of

def known_columns() -> list[str]:
    """Every registered matrix column (ours and plug-ins'), in the report's order."""
    return COLUMNS.names()


def __getattr__(name: str) -> Any:
    if name == "COLUMN_KINDS":  # the view of earlier versions, derived from the registry
        return {n: e.kind for n, e in COLUMNS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class EvalContext:
    """What column preparation may need besides the classifier."""

    cfg: Any  # TrialConfig (resolved)
    data: Any  # DataSplits
    device: torch.device
    generator: nn.Module | None = None  # the trial's own generator (L2L-DA), if any
    seed: int = 0
    log: Callable[[str], None] = lambda msg: None


AttackPrep = list[tuple[str, Callable[..., Tensor], dict]]


def prepare_column(name: str, model: nn.Module, ctx: EvalContext) -> AttackPrep:
    """[(metric name, attack_fn, budget)] of a registered column (sub-columns for prepared ones)."""
    if name not in COLUMNS:
        raise ValueError(f"eval_columns: {COLUMNS.unknown(name)}")
    return COLUMNS[name].columns(model, ctx)


@dataclass
class MatrixResult:
    metrics: dict[str, float]
    correct: dict[str, np.ndarray]
    indices: np.ndarray
    profile: dict
    checks: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able form (what a Ray step returns and MLflow artifacts are rendered from)."""
        return {
            "metrics": dict(self.metrics),
            "correct": {k: v.astype(np.uint8).tolist() for k, v in self.correct.items()},
            "indices": self.indices.tolist(),
            "profile": self.profile,
            "checks": self.checks,
            "timings": self.timings,
        }

    @classmethod
    def from_dict(cls, d: dict) -> MatrixResult:
        return cls(
            metrics=dict(d["metrics"]),
            correct={k: np.asarray(v, dtype=bool) for k, v in d["correct"].items()},
            indices=np.asarray(d["indices"]),
            profile=d["profile"], checks=d.get("checks", {}), timings=d.get("timings", {}),
        )


def metric_key(column: str) -> str:
    """Sub-columns that carry a namespace (transfer/A/pgd10) keep it; others go under matrix/."""
    return column if "/" in column else f"matrix/{column}"


def summarize(correct: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracies per column, the paper's `min` (lowest white-box column) and `worst` per example."""
    nat = correct["natural"]
    out = {"matrix/natural": float(nat.mean())}
    all_ok = nat.copy()
    whitebox = []
    transfer = []
    for name, vec in correct.items():
        if name == "natural":
            continue
        out[metric_key(name)] = float(vec.mean())
        all_ok &= vec
        entry = column_of(name)
        is_transfer = entry.kind == "transfer" if entry is not None else name.startswith("transfer/")
        (transfer if is_transfer else whitebox).append(float(vec.mean()))
    out["matrix/min"] = min(whitebox) if whitebox else out["matrix/natural"]
    if transfer:
        out["transfer/min"] = min(transfer)
    out["matrix/worst"] = float(all_ok.mean())
    return out


def _column_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    with preserve_mode(model, False):
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def robustness_matrix(model: nn.Module, x: Tensor, y: Tensor, *, columns: tuple[str, ...] | list[str],
                      eps: float, ctx: EvalContext, indices: np.ndarray | None = None,
                      batch_size: int = 500, masking: bool = True) -> MatrixResult:
    """Accuracy of `model` under each column on (x, y); x in [0, 1]. Sanity checks are code:
    every x_adv is checked to lie in the ε-ball and [0, 1] and to be free of NaN, and the
    gradient-masking flags of :mod:`trainable.evaluation.checks` are computed (``masking=False`` skips
    them and the ε-curve: cheap validation matrices)."""
    t0 = time.perf_counter()
    n = len(y)
    correct: dict[str, np.ndarray] = {}
    clean_ok = (predict(model, x, batch_size) == y)
    correct["natural"] = clean_ok.cpu().numpy()
    timings = {"natural": time.perf_counter() - t0}
    ok_idx = clean_ok.nonzero().squeeze(1)
    budgets: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    for col in columns:
        if col == "natural":
            continue
        t1 = time.perf_counter()
        ctx.log(f"matrix: preparing {col}")
        for name, fn, budget in prepare_column(col, model, ctx):
            t2 = time.perf_counter()
            gen = torch.Generator().manual_seed(_column_seed(ctx.seed, name))
            vec = torch.zeros(n, dtype=torch.bool, device=x.device)
            max_dev, out_of_range, nan = 0.0, False, False
            with preserve_mode(model, False):
                for i in range(0, len(ok_idx), batch_size):
                    idx = ok_idx[i:i + batch_size]
                    xb, yb = x[idx], y[idx]
                    x_adv = fn(model, xb, yb, eps=eps, generator=gen).detach()
                    with torch.no_grad():
                        vec[idx] = model(x_adv).argmax(1) == yb
                        max_dev = max(max_dev, float((x_adv - xb).abs().amax()) if len(idx) else 0.0)
                        out_of_range |= bool((x_adv < 0).any() or (x_adv > 1).any())
                        nan |= bool(torch.isnan(x_adv).any())
            correct[name] = vec.cpu().numpy()
            budgets[name] = budget
            checks[name] = {"max_linf": max_dev, "in_ball": max_dev <= eps + 1e-6,
                            "in_range": not out_of_range, "finite": not nan}
            timings[name] = time.perf_counter() - t2
            ctx.log(f"matrix: {name} = {correct[name].mean():.4f} ({timings[name]:.1f}s)")
        timings[f"column/{col}"] = time.perf_counter() - t1  # preparation (generator training) + runs
    metrics = summarize(correct)
    checks["perturbation_ok"] = all(c["in_ball"] and c["in_range"] and c["finite"]
                                    for k, c in checks.items() if isinstance(c, dict))
    timings["total"] = time.perf_counter() - t0
    profile = {
        "columns": ["natural", *[c for c in correct if c != "natural"]],
        "requested": list(columns),
        "eps": eps,
        "budgets": budgets,
        "n": n,
        "test_indices": (indices if indices is not None else np.arange(n)).tolist(),
        "seed": ctx.seed,
    }
    result = MatrixResult(metrics, correct, indices if indices is not None else np.arange(n), profile, checks, timings)
    if masking:
        from trainable.evaluation.checks import EPS_CURVE_STEPS, eps_curve, masking_flags

        t1 = time.perf_counter()
        masking_flags(model, x, y, result, ctx)
        curve_eps = tuple(getattr(ctx.cfg, "eps_curve", ()) or ())
        if curve_eps:
            result.profile["eps_curve"] = eps_curve(model, x, y, curve_eps, EPS_CURVE_STEPS, batch_size=batch_size,
                                                    generator=torch.Generator().manual_seed(_column_seed(ctx.seed, "eps_curve")))
        timings["checks"] = time.perf_counter() - t1
        timings["total"] = time.perf_counter() - t0
    return result


def binomial_ci(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval for an accuracy p measured on n points."""
    if n <= 0:
        return (math.nan, math.nan)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
