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
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.primitives import AttackPrep, EvalContext, preserve_mode
from trainable.attacks.registry import COLUMNS, column_of
from trainable.evaluation.progress import _Tracker
from trainable.models.layout import evaluation_layout, layout_of

def known_columns() -> list[str]:
    """Every registered matrix column (ours and plug-ins'), in the report's order."""
    return COLUMNS.names()


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


@dataclass
class _Run:
    """One sub-column's outcome: per-example correctness on all n points, budget, sanity checks, seconds."""

    correct: np.ndarray
    budget: dict
    check: dict
    seconds: float


def _run_attack(model: nn.Module, x: Tensor, y: Tensor, ok_idx: Tensor, name: str, fn: Callable[..., Tensor],
                budget: dict, *, eps: float, seed: int, batch_size: int,
                on_batch: Callable[[int, int], None] | None = None, seed_name: str | None = None,
                on_work: Callable[[int, int, int], None] | None = None) -> _Run:
    """Run one sub-column on the points `ok_idx` (the clean-correct ones, or a cascade's survivors),
    batch by batch, with its own generator seeded from (seed, seed_name or name): the outcome depends
    only on (model, points, name, seed, batch size), never on which other columns ran before it
    (docs/method.md §Evaluation). on_work(done, total, forwards) hears, inside a batch, how many
    examples have gone through the classifier so far (progress that moves within a long batch)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(_column_seed(seed, seed_name or name))
    vec = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    max_dev, out_of_range, nan = 0.0, False, False
    done = 0
    forwards = [0]

    def count(_module: nn.Module, args: tuple) -> None:
        forwards[0] += int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0
        if on_work is not None:
            on_work(done, len(ok_idx), forwards[0])

    hook = model.register_forward_pre_hook(count) if on_work is not None else None
    try:
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
                done = min(i + batch_size, len(ok_idx))
                forwards[0] = 0
                if on_batch is not None:
                    on_batch(done, len(ok_idx))
    finally:
        if hook is not None:
            hook.remove()
    check = {"max_linf": max_dev, "in_ball": max_dev <= eps + 1e-6, "in_range": not out_of_range, "finite": not nan}
    return _Run(vec.cpu().numpy(), budget, check, time.perf_counter() - t0)


def _merge(a: _Run, b: _Run) -> _Run:
    """One column from its runs on two disjoint sets of points (a cascade's survivors and the rest)."""
    check = {"max_linf": max(a.check["max_linf"], b.check["max_linf"]),
             **{k: a.check[k] and b.check[k] for k in ("in_ball", "in_range", "finite")}}
    return _Run(a.correct | b.correct, a.budget, check, a.seconds + b.seconds)


def _without(all_idx: Tensor, some: Tensor) -> Tensor:
    keep = torch.ones(int(all_idx.max()) + 1 if len(all_idx) else 0, dtype=torch.bool, device=all_idx.device)
    keep[some] = False
    return all_idx[keep[all_idx]]


def robustness_matrix(model: nn.Module, x: Tensor, y: Tensor, *, columns: tuple[str, ...] | list[str],
                      eps: float, ctx: EvalContext, indices: np.ndarray | None = None,
                      batch_size: int = 500, masking: bool = True) -> MatrixResult:
    """Accuracy of `model` under each column on (x, y); x in [0, 1]. Sanity checks are code:
    every x_adv is checked to lie in the ε-ball and [0, 1] and to be free of NaN, and the
    gradient-masking flags of :mod:`trainable.evaluation.checks` are computed (``masking=False`` skips
    them and the ε-curve: cheap validation matrices).

    Composite columns (``autoattack``: entries with ``stages``) are cascades: each stage runs only
    on the points every earlier stage failed to break (the survivors), as AutoAttack does. A stage
    that is also a column of this matrix runs once on every clean-correct point and serves both:
    first on the survivors — exactly the run the cascade alone would make — then on the rest, so
    the composite's per-example result is identical with or without its stage columns and no
    attack runs twice (docs/method.md §Evaluation).

    The classifier runs in the memory layout its class measured fastest on this device
    (:func:`trainable.models.layout.evaluation_layout`), restored afterwards."""
    with evaluation_layout(model):
        return _matrix(model, x, y, columns=columns, eps=eps, ctx=ctx, indices=indices, batch_size=batch_size,
                       masking=masking)


def _matrix(model: nn.Module, x: Tensor, y: Tensor, *, columns: tuple[str, ...] | list[str], eps: float,
            ctx: EvalContext, indices: np.ndarray | None, batch_size: int, masking: bool) -> MatrixResult:
    t0 = time.perf_counter()
    n = len(y)
    correct: dict[str, np.ndarray] = {}
    clean_ok = (predict(model, x, batch_size) == y)
    correct["natural"] = clean_ok.cpu().numpy()
    timings = {"natural": time.perf_counter() - t0}
    ok_idx = clean_ok.nonzero().squeeze(1)
    budgets: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    runs: dict[str, _Run] = {}  # every sub-column run as a column (on all clean-correct points)
    done: dict[str, list[str]] = {}  # column → its sub-column names, once prepared and run
    composites: dict[str, dict[str, Any]] = {}
    tracker = _Tracker(ctx, list(columns), len(ok_idx), t0, batch_size)
    requested = set(columns)
    # A stage belongs to the first requested composite that lists it; the cascade state per composite.
    cascade_of: dict[str, str] = {}
    cascades: dict[str, dict[str, Any]] = {}
    for col in columns:
        stages = COLUMNS[col].stages if col in COLUMNS else ()
        if stages:
            cascades[col] = {"survivors": ok_idx, "next": 0, "stages": tuple(stages), "parts": [],
                             "attacked": {}, "budgets": {}, "shared": [],
                             "seconds": 0.0}
            for s in stages:
                cascade_of.setdefault(s, col)

    def prepare(col: str) -> list[tuple[str, Callable[..., Tensor], dict, float]]:
        label = col if col == tracker.col else f"{tracker.col}/{col}"
        pctx = replace(ctx, on_training=lambda d, t: tracker.update(f"{label} training", d, t, "training steps"))
        tp = time.perf_counter()
        prepared = prepare_column(col, model, pctx)  # generator columns train their attacker here
        prep = time.perf_counter() - tp
        # columns that train an attacker always show that time; others only when it is noticeable
        trains = col in COLUMNS and COLUMNS[col].training is not None
        if trains or prep >= 0.05:
            timings[f"prepare/{col}"] = prep
        return [(nm, fn, b, prep if len(prepared) == 1 else 0.0) for nm, fn, b in prepared]

    def attack(name: str, fn: Callable[..., Tensor], budget: dict, points: Tensor, shown: str,
               seed_name: str | None = None, offset: int = 0, total: int | None = None) -> _Run:
        # a column run in two parts (survivors, then the rest) reports as one: offset + done of total
        n_all = len(points) if total is None else total
        tracker.update(shown, offset, n_all, "examples", boundary=True)
        return _run_attack(model, x, y, points, name, fn, budget, eps=eps, seed=ctx.seed, batch_size=batch_size,
                           seed_name=seed_name,
                           on_batch=lambda d, t, nm=shown: tracker.update(nm, offset + d, n_all, "examples"),
                           on_work=lambda d, t, f, nm=shown: tracker.work(nm, offset + d, n_all, f))

    def run_column(col: str) -> list[str]:
        names = []
        for name, fn, budget, prep in prepare(col):
            shown = name if col == tracker.col else f"{tracker.col}/{name}"
            runs[name] = attack(name, fn, budget, ok_idx, shown)
            runs[name].seconds += prep  # the column's time includes its attacker's training
            ctx.log(f"matrix: {name} = {runs[name].correct.mean():.4f} ({runs[name].seconds:.1f}s"
                    f"{tracker.status()})")
            names.append(name)
        done[col] = names
        return names

    def advance(comp: str, upto: str | None) -> None:
        """Run `comp`'s cascade up to stage `upto` (all of it: None). A stage that is a requested
        column runs on the survivors first, then on the other clean-correct points."""
        st = cascades[comp]
        while st["next"] < len(st["stages"]):
            s = st["stages"][st["next"]]
            st["next"] += 1
            t1 = time.perf_counter()
            survivors = st["survivors"]
            as_column = s in requested and cascade_of.get(s) == comp and s not in done
            if s in done:  # already a column of this matrix, run before the cascade (another composite's stage)
                subs = [(nm, runs[nm]) for nm in done[s]]
                st["shared"].append(s)
            else:
                subs, names = [], []
                for name, fn, budget, prep in prepare(s):
                    shown = name if s == tracker.col else f"{tracker.col}/{name}"
                    whole = len(ok_idx) if as_column else None
                    part = attack(name, fn, budget, survivors, shown, total=whole)
                    part.seconds += prep
                    subs.append((name, part))
                    if as_column:  # complete the column on the points an earlier stage broke
                        rest = attack(name, fn, budget, _without(ok_idx, survivors), shown, seed_name=f"{name}/rest",
                                      offset=len(survivors), total=whole)
                        runs[name] = _merge(part, rest)
                        ctx.log(f"matrix: {name} = {runs[name].correct.mean():.4f} ({runs[name].seconds:.1f}s; "
                                f"{len(survivors)} points as a stage of {comp}, {len(ok_idx) - len(survivors)} "
                                f"after{tracker.status()})")
                    names.append(name)
                if as_column:
                    done[s] = names
                    st["shared"].append(s)
            st["attacked"][s] = int(len(survivors))
            st["budgets"][s] = subs[0][1].budget if len(subs) == 1 else {nm: r.budget for nm, r in subs}
            st["parts"].extend(r for _, r in subs)
            keep = torch.ones(len(survivors), dtype=torch.bool)
            for _, r in subs:
                keep &= torch.as_tensor(r.correct[survivors.cpu().numpy()])
            st["survivors"] = survivors[keep.to(survivors.device)]
            if not as_column:
                st["seconds"] += time.perf_counter() - t1
            ctx.log(f"matrix: {comp} after {s}: {len(st['survivors'])}/{n} robust "
                    f"({len(survivors)} attacked)")
            if s == upto:
                return

    for col in columns:
        if col == "natural":
            continue
        t1 = time.perf_counter()
        tracker.start(col)
        if col in cascades:
            st = cascades[col]
            advance(col, None)
            vec = np.zeros(n, dtype=bool)
            vec[st["survivors"].cpu().numpy()] = True
            parts, stages = st["parts"], list(st["stages"])
            correct[col] = vec
            budgets[col] = {"cascade": stages, "per_example": "each stage on the survivors of every earlier stage",
                            "stages": dict(st["budgets"])}
            checks[col] = {"max_linf": max((r.check["max_linf"] for r in parts), default=0.0),
                           **{k: all(r.check[k] for r in parts) for k in ("in_ball", "in_range", "finite")}}
            composites[col] = {"stages": stages, "reused": list(st["shared"]), "attacked": dict(st["attacked"])}
            timings[col] = st["seconds"]  # the stages only this column ran (on survivors)
            ctx.log(f"matrix: {col} = {vec.mean():.4f} ({timings[col]:.1f}s"
                    + (f"; stage columns shared: {', '.join(st['shared'])})" if st["shared"] else ")"))
        else:
            if col in done:
                ctx.log(f"matrix: {col} already ran")
            elif col in cascade_of:
                ctx.log(f"matrix {tracker.index}/{len(tracker.columns)}: {col} runs with {cascade_of[col]}'s cascade")
                advance(cascade_of[col], col)
            else:
                ctx.log(f"matrix {tracker.index}/{len(tracker.columns)}: preparing {col}")
                run_column(col)
            for name in done[col]:
                r = runs[name]
                correct[name], budgets[name], checks[name], timings[name] = r.correct, r.budget, dict(r.check), r.seconds
        timings[f"column/{col}"] = time.perf_counter() - t1  # preparation (generator training) + runs
        tracker.finish_column()
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
        "layout": layout_of(model),  # the classifier's memory layout during the evaluation (docs/performance.md)
    }
    if composites:
        profile["composites"] = composites
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
    tracker.done()
    return result


def binomial_ci(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval for an accuracy p measured on n points."""
    if n <= 0:
        return (math.nan, math.nan)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
