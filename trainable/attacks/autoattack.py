"""AutoAttack (Croce & Hein 2020): the standard ℓ∞ cascade APGD-CE → APGD-T → FAB-T → Square, and the
matrix columns of its four stages.

:func:`autoattack` runs the cascade on one batch, each stage on the points every earlier stage
left correct: the worst case per example. In the robustness matrix the ``autoattack`` column
is the worst case per example over the four stage columns (its registry entry's ``stages``),
so columns the matrix already ran are reused (docs/method.md §Evaluation). The attacks are our
own (:mod:`~trainable.attacks.apgd`, :mod:`~trainable.attacks.fab`, :mod:`~trainable.attacks.square`);
torchattacks is not used: it pins an old ``requests`` (breaking MLflow) and its AutoAttack runs
10 instead of 100 iterations. Inputs x in [0, 1] (NCHW); every attack returns x_adv with
‖x_adv − x‖∞ ≤ ε and x_adv ∈ [0, 1]. Randomness comes only from ``generator`` (a CPU
``torch.Generator``; the global RNG when None), so a seeded run is deterministic.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.apgd import APGD_ALPHA, APGD_RHO, APGD_STEPS, N_TARGET_CLASSES, apgd, apgd_targeted
from trainable.attacks.fab import FAB_ALPHA_MAX, FAB_BETA, FAB_ETA, FAB_RESTARTS, FAB_STEPS, fab_targeted
from trainable.attacks.primitives import AttackFn, check_inputs, preserve_mode
from trainable.attacks.square import SQUARE_P_INIT, square

# The cascade's stages in AutoAttack's order; each is also a matrix column (docs/method.md §Evaluation).
CASCADE = ("apgd_ce", "apgd_t", "fab_t", "square")


def autoattack(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = APGD_STEPS,
               n_target_classes: int = N_TARGET_CLASSES, fab_steps: int = FAB_STEPS, n_queries: int = 5000,
               generator: torch.Generator | None = None, log: Callable[[str], None] | None = None) -> Tensor:
    """AutoAttack's standard ℓ∞ cascade (Croce & Hein 2020): APGD-CE → APGD-T → FAB-T → Square,
    each on the points every earlier attack failed on, so the result is the worst case per
    example. x in [0, 1]; per point: the first x_adv that fools it, else Square's. `steps` is
    APGD's iterations, `fab_steps` FAB-T's (both 100 in the standard version)."""
    check_inputs(x, y, eps)
    x = x.detach()
    stages: list[tuple[str, AttackFn]] = [
        ("apgd_ce", lambda xs, ys: apgd(model, xs, ys, eps=eps, steps=steps, loss="ce", generator=generator)),
        ("apgd_t", lambda xs, ys: apgd_targeted(model, xs, ys, eps=eps, steps=steps,
                                                n_target_classes=n_target_classes, generator=generator)),
        ("fab_t", lambda xs, ys: fab_targeted(model, xs, ys, eps=eps, steps=fab_steps,
                                              n_target_classes=n_target_classes, generator=generator)),
        ("square", lambda xs, ys: square(model, xs, ys, eps=eps, n_queries=n_queries, generator=generator)),
    ]
    x_adv = x.clone()
    with preserve_mode(model, False), torch.no_grad():
        robust = model(x).argmax(1) == y
    for name, run in stages:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = run(x[idx], y[idx])
        with preserve_mode(model, False), torch.no_grad():
            fooled = model(xa).argmax(1) != y[idx]
        x_adv[idx] = xa
        robust[idx[fooled]] = False
        if log is not None:
            log(f"autoattack: after {name} {int(robust.sum())}/{len(y)} robust")
    return x_adv


def _num_queries(ctx: Any) -> int:
    return int(getattr(ctx.cfg, "square_queries", 5000))


def prepare_apgd_ce(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `apgd_ce`: APGD on CE, 100 iterations, 1 restart (AutoAttack standard)."""
    def run(m, x, y, *, eps, generator=None):
        return apgd(m, x, y, eps=eps, steps=APGD_STEPS, loss="ce", generator=generator)

    return [("apgd_ce", run, {"steps": APGD_STEPS, "loss": "ce", "rho": APGD_RHO, "momentum": APGD_ALPHA,
                              "step0": "2*eps", "random_start": True, "restarts": 1})]


def prepare_apgd_t(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `apgd_t`: APGD on the targeted DLR loss over the top-9 targets, 100 iterations each."""
    def run(m, x, y, *, eps, generator=None):
        return apgd_targeted(m, x, y, eps=eps, steps=APGD_STEPS, n_target_classes=N_TARGET_CLASSES,
                             generator=generator)

    return [("apgd_t", run, {"steps": APGD_STEPS, "loss": "dlr_targeted", "n_target_classes": N_TARGET_CLASSES,
                             "rho": APGD_RHO, "momentum": APGD_ALPHA, "step0": "2*eps", "random_start": True})]


def prepare_fab_t(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `fab_t`: targeted FAB, ℓ∞, ε-bounded, over the top-9 targets, 100 iterations,
    1 restart from x (AutoAttack standard)."""
    def run(m, x, y, *, eps, generator=None):
        return fab_targeted(m, x, y, eps=eps, steps=FAB_STEPS, n_target_classes=N_TARGET_CLASSES,
                            n_restarts=FAB_RESTARTS, generator=generator)

    return [("fab_t", run, {"steps": FAB_STEPS, "n_target_classes": N_TARGET_CLASSES, "n_restarts": FAB_RESTARTS,
                            "alpha_max": FAB_ALPHA_MAX, "eta": FAB_ETA, "beta": FAB_BETA, "norm": "Linf",
                            "eps_bounded": True, "random_start": False})]


def prepare_square(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `square`: Square Attack, margin loss, `cfg.square_queries` queries (5000 standard)."""
    nq = _num_queries(ctx)

    def run(m, x, y, *, eps, generator=None):
        return square(m, x, y, eps=eps, n_queries=nq, generator=generator)

    return [("square", run, {"n_queries": nq, "p_init": SQUARE_P_INIT, "loss": "margin", "init": "stripes",
                             "rescale_schedule": False})]


def prepare_autoattack(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """The cascade APGD-CE → APGD-T → FAB-T → Square on the points still correct, as one attack
    on a batch. The matrix does not call it: there the ``autoattack`` column is the worst case
    per example over the CASCADE columns (its registry entry's stages, trainable.attacks.registry), which
    reuses the columns the matrix already ran (docs/method.md §Evaluation)."""
    nq = _num_queries(ctx)

    def run(m, x, y, *, eps, generator=None):
        return autoattack(m, x, y, eps=eps, steps=APGD_STEPS, n_target_classes=N_TARGET_CLASSES,
                          fab_steps=FAB_STEPS, n_queries=nq, generator=generator)

    return [("autoattack", run, {"cascade": list(CASCADE), "steps": APGD_STEPS,
                                 "n_target_classes": N_TARGET_CLASSES, "fab_steps": FAB_STEPS, "n_queries": nq,
                                 "square_rescale_schedule": False})]
