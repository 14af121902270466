"""Gradient attacks in ℓ∞, x in [0, 1] (Goodfellow et al. 2015; Madry et al. 2018; Carlini & Wagner 2017).

Conventions: budgets are keyword-only; attacks return x_adv, never δ;
gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, with the
model's parameters frozen (``requires_grad`` off, restored after: no graph edge to a
parameter is built and none collects a stray ``.grad``); the model runs in eval mode
and its mode is restored in ``finally``. The matrix columns built on them, with the
paper's settings, are entries of :mod:`trainable.attacks.registry`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks.primitives import frozen_params, preserve_mode, project, uniform_ball


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """C&W margin (κ = 0): max_{j≠y} z_j − z_y, per example. Positive ⇔ misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - true


def _loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "cw":
        return margin_loss(logits, y)
    raise ValueError(f"unknown attack loss {kind!r}")


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, train_mode: bool = False) -> Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one signed step of size ε on CE."""
    with preserve_mode(model, train_mode), frozen_params(model):
        x0 = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(x0), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x0)
    return (x.detach() + eps * g.sign()).clamp_(0.0, 1.0)


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float, steps: int,
        random_start: bool = True, loss: str = "ce", keep_best: bool = True,
        early_stop: bool = True, train_mode: bool = False,
        generator: torch.Generator | None = None) -> Tensor:
    """ℓ∞ PGD (Madry et al. 2018) with signed steps. x in [0, 1]; returns x_adv, ‖x_adv − x‖∞ ≤ eps.

    keep_best: return, per example, the strongest point seen (misclassified first, then
    highest loss) instead of the last iterate. early_stop: stop attacking points that are
    already misclassified (their outcome cannot change; saves work). For adversarial
    training use ``keep_best=False, early_stop=False`` (the textbook last iterate).
    ``loss="cw"`` gives our C&W: PGD on the C&W margin (κ = 0).
    """
    x = x.detach()
    x_adv = project(x + uniform_ball(x, eps, generator), x, eps) if random_start else x.clone()
    best = x_adv.clone()
    best_score = torch.full((x.shape[0],), float("-inf"), device=x.device)
    best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    with preserve_mode(model, train_mode), frozen_params(model):
        for i in range(steps + 1):
            xa = x_adv[active].requires_grad_(i < steps)
            ya = y[active]
            with torch.enable_grad() if i < steps else torch.no_grad():
                logits = model(xa)
                per_ex = _loss(logits, ya, loss)
                if keep_best or early_stop:
                    with torch.no_grad():
                        fooled = logits.argmax(1) != ya
                        # score: fooled points rank above any unfooled one, then by loss
                        score = per_ex.detach() + fooled.float() * 1e6
                        better = score > best_score[active]
                        best_score[active] = torch.where(better, score, best_score[active])
                        best_fooled[active] |= fooled
                        upd = active[better]
                        best[upd] = xa.detach()[better]
                if i == steps:
                    break
                (g,) = torch.autograd.grad(per_ex.sum(), xa)
            with torch.no_grad():
                new = project(xa.detach() + step * g.sign(), x[active], eps)
                x_adv[active] = new
                if early_stop:
                    keep = ~fooled
                    if not bool(keep.all()):
                        active = active[keep]
                        if active.numel() == 0:
                            break
    return best if keep_best else x_adv


def fgsm_column(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """The `fgsm` matrix column: FGSM at the matrix's ε (no randomness)."""
    return fgsm(model, x, y, eps=eps)


class PGDColumn:
    """A PGD matrix column: `steps` signed steps of ε/`step_div` on `loss`, random start, keep-best."""

    def __init__(self, steps: int, step_div: float, loss: str) -> None:
        self.steps, self.step_div, self.loss = steps, step_div, loss

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float,
                 generator: torch.Generator | None = None) -> Tensor:
        return pgd(model, x, y, eps=eps, step=eps / self.step_div, steps=self.steps, loss=self.loss,
                   generator=generator)
