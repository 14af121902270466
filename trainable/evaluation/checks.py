"""Gradient-masking checks computed with every robustness matrix (docs/architecture.md, selection).

In the spirit of AutoAttack's ``checks.py`` (Croce & Hein 2020) and of Carlini et al.,
"On evaluating adversarial robustness" (2019): symptoms that a defense's robustness
number is an artefact of the attack failing, not of the classifier being robust. Each
flag is a recorded warning, evaluated only when the columns it compares ran; it is never
silenced by changing an attack or a threshold (the thresholds below are the issue's).

* ``more_steps_help`` — PGD100 accuracy above PGD10 by more than 1 point: more iterations of
  the same attack should never leave more points correct.
* ``pfree_gap`` — a parameter-free column (APGD-CE, APGD-T, FAB-T, AutoAttack, any column
  of that kind) more than 5 points below PGD100: the PGD numbers overestimate robustness.
* ``blackbox_beats_whitebox`` — a black-box column (Square, the transfer sub-columns; neither
  uses the target's gradient) below the lowest white-box column (gradient and parameter-free
  kinds but AutoAttack) by more than AutoAttack's tolerance of 0.2 points.
* ``unbounded_pgd`` — PGD with ε = 1 (any image reachable) leaves more than 1% accuracy on
  a subset of the test points; run here, cheaply.
* ``perturbation`` — some x_adv left the ε-ball or [0, 1], or carried NaN.

Also :func:`eps_curve`: PGD accuracy at several ε up to 1 (the accuracy-vs-ε curve the
report plots). Inputs x in [0, 1].
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.gradient import pgd
from trainable.attacks.primitives import preserve_mode
from trainable.attacks.registry import has_role, with_role

MORE_STEPS_THRESHOLD = 0.01  # pgd100 − pgd10
PFREE_GAP_THRESHOLD = 0.05  # pgd100 − min(apgd_ce, apgd_t, fab_t, autoattack)
BLACKBOX_TOLERANCE = 0.002  # AutoAttack checks.py's alpha for Square beating the white-box attacks
UNBOUNDED_THRESHOLD = 0.01  # accuracy left by PGD at ε = 1
UNBOUNDED_SUBSET = 200  # points the ε = 1 attack runs on
UNBOUNDED_STEPS = 100
EPS_CURVE_STEPS = 20
FLAGS = ("more_steps_help", "pfree_gap", "blackbox_beats_whitebox", "unbounded_pgd", "perturbation")


def _acc(correct: dict[str, np.ndarray], name: str) -> float:
    return float(np.asarray(correct[name], dtype=bool).mean())


def _flag(fired: bool, value: float | None, threshold: float | None, detail: str) -> dict[str, Any]:
    return {"fired": bool(fired), "value": value, "threshold": threshold, "detail": detail}


def column_flags(correct: dict[str, np.ndarray], checks: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The flags that only compare columns already run (no model needed)."""
    out: dict[str, dict[str, Any]] = {}
    if "pgd10" in correct and "pgd100" in correct:
        d = _acc(correct, "pgd100") - _acc(correct, "pgd10")
        out["more_steps_help"] = _flag(d > MORE_STEPS_THRESHOLD, d, MORE_STEPS_THRESHOLD,
                                       f"pgd100 − pgd10 = {100 * d:+.1f} points")
    # Which column plays which part comes from its registry entry (trainable.attacks.registry):
    # white-box columns follow the target's gradient (AutoAttack is left out: it ends with Square,
    # gradient-free), black-box ones (Square, transfer sub-columns) never read it.
    pf = [c for c in with_role("parameter_free") if c in correct]
    if "pgd100" in correct and pf:
        low = min(pf, key=lambda c: _acc(correct, c))
        d = _acc(correct, "pgd100") - _acc(correct, low)
        out["pfree_gap"] = _flag(d > PFREE_GAP_THRESHOLD, d, PFREE_GAP_THRESHOLD,
                                 f"pgd100 − {low} = {100 * d:+.1f} points")
    wb = [c for c in with_role("whitebox") if c in correct]
    bb = [c for c in correct if has_role(c, "blackbox")]
    if wb and bb:
        w = min(wb, key=lambda c: _acc(correct, c))
        b = min(bb, key=lambda c: _acc(correct, c))
        d = _acc(correct, w) - _acc(correct, b)
        out["blackbox_beats_whitebox"] = _flag(d > BLACKBOX_TOLERANCE, d, BLACKBOX_TOLERANCE,
                                               f"{w} − {b} = {100 * d:+.1f} points")
    per_col = {k: v for k, v in checks.items() if isinstance(v, dict) and "in_ball" in v}
    if per_col:
        bad = sorted(k for k, v in per_col.items() if not (v["in_ball"] and v["in_range"] and v["finite"]))
        out["perturbation"] = _flag(bool(bad), float(len(bad)), 0.0,
                                    "outside the ε-ball / [0, 1] / NaN: " + (", ".join(bad) if bad else "none"))
    return out


def unbounded_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, n: int = UNBOUNDED_SUBSET,
                       steps: int = UNBOUNDED_STEPS, generator: torch.Generator | None = None) -> tuple[float, int]:
    """(accuracy, points) of PGD-CE at ε = 1 on the first `n` points (x in [0, 1]). At ε = 1 every
    image is reachable, so anything above ~0% means the gradient does not lead anywhere."""
    x, y = x[:n].detach(), y[:n]
    if len(y) == 0:
        return 0.0, 0
    x_adv = pgd(model, x, y, eps=1.0, step=1.0 / 12, steps=steps, random_start=True, loss="ce",
                keep_best=True, early_stop=True, generator=generator)
    with preserve_mode(model, False), torch.no_grad():
        acc = float((model(x_adv).argmax(1) == y).float().mean())
    return acc, len(y)


def masking_flags(model: nn.Module, x: Tensor, y: Tensor, result: Any, ctx: Any,
                  *, unbounded: bool = True) -> dict[str, dict[str, Any]]:
    """Compute the flags for a finished matrix and store them in `result`:
    ``result.checks['masking'] = {flag: {fired, value, threshold, detail}}`` and
    ``result.metrics['check/<flag>']`` = 1.0 (fired) / 0.0. Returns the flag dict."""
    flags = column_flags(result.correct, result.checks)
    if unbounded and len(y) > 0:
        gen = torch.Generator().manual_seed(int(getattr(ctx, "seed", 0)) * 1_000_003 + 11)
        acc, m = unbounded_accuracy(model, x, y, generator=gen)
        flags["unbounded_pgd"] = _flag(acc > UNBOUNDED_THRESHOLD, acc, UNBOUNDED_THRESHOLD,
                                       f"PGD100 at eps=1 leaves {100 * acc:.1f}% of {m} points correct")
    result.checks["masking"] = flags
    for name, f in flags.items():
        result.metrics[f"check/{name}"] = 1.0 if f["fired"] else 0.0
    return flags


def eps_curve(model: nn.Module, x: Tensor, y: Tensor, eps_list: Sequence[float], steps: int = EPS_CURVE_STEPS,
              *, batch_size: int = 500, generator: torch.Generator | None = None) -> list[dict[str, float]]:
    """Accuracy under PGD-CE (random start, step 2.5·ε/steps as in Madry et al., keep-best) at each ε;
    x in [0, 1]. A robust model's curve falls to 0 by ε = 1; a plateau above 0 signals masking."""
    for eps in eps_list:
        if not 0 < eps <= 1:
            raise ValueError(f"eps_curve: every ε must be in (0, 1], got {eps}")
    # As in the matrix, only clean-correct points are attacked: a clean error stays an error
    # (a random start could otherwise "repair" it and lift the curve above natural accuracy).
    with preserve_mode(model, False), torch.no_grad():
        keep = torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                          for i in range(0, len(y), batch_size)]) if len(y) else torch.zeros(0, dtype=torch.bool)
    xs, ys = x[keep], y[keep]
    out = []
    for eps in eps_list:
        ok = 0
        for i in range(0, len(ys), batch_size):
            xb, yb = xs[i:i + batch_size], ys[i:i + batch_size]
            xa = pgd(model, xb, yb, eps=float(eps), step=2.5 * float(eps) / steps, steps=steps,
                     generator=generator)
            with preserve_mode(model, False), torch.no_grad():
                ok += int((model(xa).argmax(1) == yb).sum())
        out.append({"eps": float(eps), "accuracy": ok / max(len(y), 1), "steps": steps})
    return out
