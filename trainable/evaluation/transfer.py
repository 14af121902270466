"""The ``transfer`` column (paper Table 3): white-box attacks on surrogates, scored on the target.

The surrogates (A plain, B FGSM-AT, C PGD10-AT) come from the training layer's cache
(:mod:`trainable.training.surrogates`). Columns: ``transfer/<A|B|C>/pgd10``, ``…/pgd100`` (our
PGD, random start, the last iterate — not stopped at the surrogate's first misclassification,
which transfers worse) and ``…/l2lda`` (an L2L-DA generator trained against the frozen
surrogate with :func:`trainable.attacks.generative.prepare_l2lda`). x in [0, 1]; every x_adv
lies in the ε-ball and [0, 1] by construction of the attacks (and is checked by the matrix).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.generative import prepare_l2lda
from trainable.attacks.gradient import pgd
from trainable.attacks.primitives import AttackFn, EvalContext, preserve_mode
from trainable.config import TrialConfig
from trainable.data.registry import DATASETS
from trainable.training.surrogates import (SURROGATE_SEED_OFFSET, SURROGATES, surrogate_config, surrogate_key,
                                           train_surrogate)

TRANSFER_ATTACKS = ("pgd10", "pgd100", "l2lda")


def transfer_setup(cfg: Any, price: Callable[[dict], float]) -> float:
    """``--dry-run``'s one-time cost of the column: training the three surrogates, each priced as its defense."""
    iterations = cfg.transfer_iterations or cfg.iterations
    model = DATASETS[cfg.dataset].model  # the surrogates are the dataset's own classifier family
    return iterations * sum(price({"defense": d, "model": model}) for d in SURROGATES.values())


def _on_surrogate(surrogate: nn.Module, steps: int, step_div: float) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        # The target `model` is never queried: the perturbation is computed on the surrogate only.
        return pgd(surrogate, x, y, eps=eps, step=eps / step_div, steps=steps, random_start=True,
                   keep_best=False, early_stop=False, generator=generator)

    return run


def _wrap_generator_attack(surrogate: nn.Module, fn: AttackFn) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        with preserve_mode(surrogate, False):
            return fn(surrogate, x, y, eps=eps, generator=generator)

    return run


def prepare_transfer(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `transfer`: sub-columns transfer/<A|B|C>/<pgd10|pgd100|l2lda>."""
    cfg: TrialConfig = ctx.cfg
    out: list[tuple[str, AttackFn, dict]] = []
    for letter, defense in SURROGATES.items():
        sur = train_surrogate(cfg, defense, device=ctx.device, log=ctx.log, progress=getattr(ctx, "on_training", None))
        for p in sur.parameters():
            p.requires_grad_(False)
        scfg = surrogate_config(cfg, defense)
        base = {"surrogate": letter, "surrogate_defense": defense, "surrogate_model": scfg.model,
                "surrogate_seed": scfg.seed, "surrogate_iterations": scfg.iterations,
                "surrogate_warmup": scfg.warmup, "surrogate_key": surrogate_key(scfg)}
        out.append((f"transfer/{letter}/pgd10", _on_surrogate(sur, 10, 4),
                    {**base, "attack": "pgd10", "steps": 10, "step": "eps/4", "random_start": True, "iterate": "last"}))
        out.append((f"transfer/{letter}/pgd100", _on_surrogate(sur, 100, 12),
                    {**base, "attack": "pgd100", "steps": 100, "step": "eps/12", "random_start": True,
                     "iterate": "last"}))
        sctx = EvalContext(cfg=cfg, data=ctx.data, device=ctx.device, generator=None,
                           seed=ctx.seed + SURROGATE_SEED_OFFSET, log=ctx.log,
                           on_training=getattr(ctx, "on_training", lambda d, t: None))
        for _name, fn, budget in prepare_l2lda(sur, sctx):
            out.append((f"transfer/{letter}/l2lda", _wrap_generator_attack(sur, fn),
                        {**base, "attack": "l2lda", **budget}))
    return out
