"""The recursive stochastic attack of L2L-DA (docs/method.md; paper Eq. 5), shared by the defense and the columns.

    δ(0) = 0,  δ(t+1) = clip(δ(t) + ε_step · g_φ(x, y, z, δ(t), ĝ(t)), −ε, ε),
    x_adv(t+1) = clip(x + δ(t+1), 0, 1),

with ĝ(t) the classifier's input gradient at x_adv(t), recomputed at every step. Images
are in [0, 1] pixel space, budgets ℓ∞ in the same space. The L2L* generator (one-shot, on
[x, ∇L(x)]) runs through the same :func:`rollout` with one step.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks.gradient import preserve_mode
from trainable.generators.nets import L2LStarGenerator

GRAD_STABILISER = 1e-15  # docs/method.md: ‖g + 1e-15‖₂, so a saturated CE (zero gradient) gives 0, not NaN


def normalize_grad(g: Tensor) -> Tensor:
    """Per-sample, per-channel ℓ2 normalisation over the spatial dims: g / ‖g + 1e-15‖₂ (docs/method.md)."""
    return g / (g + GRAD_STABILISER).flatten(2).norm(dim=2)[:, :, None, None]


def input_gradient(classifier: nn.Module, x_adv: Tensor, y: Tensor, normalize: bool = True) -> Tensor:
    """ĝ = ∇ₓ CE(f(x_adv), y), classifier in eval mode, detached (x_adv in [0, 1]).

    Summed CE, so each example's gradient does not shrink with the batch size (what the
    raw-gradient ablation feeds the generator). Only the input gets a gradient: no
    classifier parameter collects a ``.grad``.
    """
    with preserve_mode(classifier, False), torch.enable_grad():
        xa = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(classifier(xa), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xa)
    return normalize_grad(g) if normalize else g


def _grad_at(classifier: nn.Module, x_adv: Tensor, y: Tensor, normalize: bool,
             keep_graph: bool) -> tuple[Tensor, Tensor]:
    """CE per example at x_adv (graph kept when x_adv carries one) and the detached input gradient there.

    One classifier forward serves both the loss L_cls(t) and ĝ(t) of the next step. The
    classifier must already be in eval mode.
    """
    if keep_graph and x_adv.requires_grad:
        ce = F.cross_entropy(classifier(x_adv), y, reduction="none")
        (g,) = torch.autograd.grad(ce.sum(), x_adv, retain_graph=True)
    else:
        with torch.enable_grad():
            xa = x_adv.detach().requires_grad_(True)
            ce = F.cross_entropy(classifier(xa), y, reduction="none")
            (g,) = torch.autograd.grad(ce.sum(), xa)
        ce = ce.detach()
    g = g.detach()
    return ce, (normalize_grad(g) if normalize else g)


def rollout(generator: nn.Module, classifier: nn.Module, x: Tensor, y: Tensor, z: Tensor | None, *, eps: float,
            eps_step: float, steps: int, differentiable: bool,
            with_losses: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """Eq. 5 unrolled for `steps` steps; returns ([x_adv(1..T)], [CE per example at x_adv(1..T)]).

    differentiable=True: the graph runs through δ over the whole recursion (generator
    training; the caller sets the generator's mode). False: everything detached, the
    generator in eval mode (attacking). The classifier is always in eval mode and gets no
    parameter gradient here. One-shot generation (steps = 1) steps by ε, not ε_step.
    CE values are returned only when ``with_losses`` (the last step's needs one more forward).
    """
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if not 0 < eps <= 1:
        raise ValueError(f"eps: must be in (0, 1], got {eps}")
    step = eps if steps == 1 else eps_step
    x = x.detach()
    star = isinstance(generator, L2LStarGenerator)
    normalize = bool(getattr(generator, "grad_norm", True))
    delta = torch.zeros_like(x)
    x_adv = x
    advs: list[Tensor] = []
    losses: list[Tensor] = []
    with preserve_mode(classifier, False), preserve_mode(generator, generator.training if differentiable else False):
        for t in range(steps):
            ce, g = _grad_at(classifier, x_adv, y, normalize, differentiable and with_losses)
            if t > 0 and with_losses:
                losses.append(ce)
            with torch.set_grad_enabled(differentiable):
                out = generator(x, g) if star else generator(x, g, delta, z, y)
                delta = torch.clamp(delta + step * out, -eps, eps)
                x_adv = torch.clamp(x + delta, 0.0, 1.0)
            advs.append(x_adv)
        if with_losses:
            with torch.set_grad_enabled(differentiable):
                logits = classifier(x_adv)
            losses.append(F.cross_entropy(logits, y, reduction="none"))
    return advs, losses


def recursive_attack(generator: nn.Module, classifier: nn.Module, x: Tensor, y: Tensor, z: Tensor | None, *,
                     eps: float, eps_step: float, steps: int, differentiable: bool = False) -> list[Tensor] | Tensor:
    """The recursive stochastic attack of Eq. 5 (x in [0, 1], ℓ∞ budget eps).

    differentiable=True → the list [x_adv(1), …, x_adv(T)], graph through δ kept (for the
    losses of Eqs. 6–7). differentiable=False → the stacked (T, N, C, H, W) detached iterates,
    generator in eval mode. Every x_adv(t) lies in the ε-ball around x and in [0, 1].
    """
    advs, _ = rollout(generator, classifier, x, y, z, eps=eps, eps_step=eps_step, steps=steps,
                      differentiable=differentiable)
    return advs if differentiable else torch.stack(advs)
