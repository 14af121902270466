"""The recursive stochastic attack of L2L-DA (docs/method.md; paper Eq. 5), shared by the defense and the columns.

    δ(0) = 0,  δ(t+1) = clip(δ(t) + ε_step · g_φ(x, y, z, δ(t), ĝ(t)), −ε, ε),
    x_adv(t+1) = clip(x + δ(t+1), 0, 1),

with ĝ(t) the classifier's input gradient at x_adv(t), recomputed at every step. Images
are in [0, 1] pixel space, budgets ℓ∞ in the same space. The L2L* generator (one-shot, on
[x, ∇L(x)]) runs through the same :func:`rollout` with one step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks.primitives import frozen_params, preserve_mode
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


def ce_and_input_gradient(classifier: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(CE per example at x_adv, raw ∇ₓ of the summed CE there), both detached; the eager kernel.

    One classifier forward serves both the loss term L_cls(t) and ĝ(t) of the next step.
    The classifier must already be in eval mode; only the input is differentiated.
    """
    with torch.enable_grad():
        xa = x_adv.detach().requires_grad_(True)
        ce = F.cross_entropy(classifier(xa), y, reduction="none")
        (g,) = torch.autograd.grad(ce.sum(), xa)
    return ce.detach(), g


def ce_and_input_gradient_functional(classifier: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The same as :func:`ce_and_input_gradient` through ``torch.func.grad`` with detached parameters.

    What ``compile: true`` compiles: ``torch.compile`` traces it into one graph (it breaks
    the graph at ``torch.autograd.grad``), and no parameter gradient is ever formed.
    """
    params = {k: v.detach() for k, v in classifier.named_parameters()}
    buffers = dict(classifier.named_buffers())

    def summed(xa: Tensor) -> tuple[Tensor, Tensor]:
        ce = F.cross_entropy(torch.func.functional_call(classifier, (params, buffers), (xa,)), y, reduction="none")
        return ce.sum(), ce

    g, ce = torch.func.grad(summed, has_aux=True)(x_adv.detach())
    return ce.detach(), g.detach()


def generator_update(generator: nn.Module, x: Tensor, g: Tensor, delta: Tensor, z: Tensor | None, y: Tensor, *,
                     step: float, eps: float, amp_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """One step of Eq. 5: δ ← clip(δ + step·g_φ(x, y, z, δ, ĝ), −ε, ε), x_adv = clip(x + δ, 0, 1); the eager kernel.

    With ``amp_dtype`` the generator runs under autocast in that dtype and its output is cast
    back to fp32 before the update: δ, x_adv and everything the classifier sees stay fp32.
    """
    if amp_dtype is not None:
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype):
            out = generator(x, g) if isinstance(generator, L2LStarGenerator) else generator(x, g, delta, z, y)
        out = out.float()
    else:
        out = generator(x, g) if isinstance(generator, L2LStarGenerator) else generator(x, g, delta, z, y)
    delta = torch.clamp(delta + step * out, -eps, eps)
    return delta, torch.clamp(x + delta, 0.0, 1.0)


class _CEAtIterate(torch.autograd.Function):
    """CE per example at x_adv(t) whose gradient w.r.t. x_adv(t) is the input gradient already in hand.

    In eval mode each example's CE depends on its own input only, so ∂CE_i/∂x_adv_i is
    example i's slice of ∇ₓ Σ CE — exactly what the input-gradient pass computed for ĝ(t).
    The generator's backward therefore never runs back through the classifier
    (docs/performance.md).
    """

    @staticmethod
    def forward(ctx, x_adv: Tensor, ce: Tensor, g_raw: Tensor) -> Tensor:
        ctx.save_for_backward(g_raw)
        return ce.clone()

    @staticmethod
    def backward(ctx, grad_ce: Tensor):
        (g_raw,) = ctx.saved_tensors
        return grad_ce.view(-1, *([1] * (g_raw.dim() - 1))) * g_raw, None, None


@dataclass
class RolloutKernels:
    """The two per-step computations of a rollout, swappable for compiled versions (docs/performance.md).

    ``ce_grad(classifier, x_adv, y) -> (ce, raw input gradient)``, both detached;
    ``update(generator, x, g, delta, z, y, *, step, eps, amp_dtype) -> (δ, x_adv)``;
    ``amp_dtype``: the generator's autocast dtype (None: fp32).
    """

    ce_grad: Callable[..., tuple[Tensor, Tensor]] = ce_and_input_gradient
    update: Callable[..., tuple[Tensor, Tensor]] = generator_update
    amp_dtype: torch.dtype | None = None


EAGER = RolloutKernels()


def rollout(generator: nn.Module, classifier: nn.Module, x: Tensor, y: Tensor, z: Tensor | None, *, eps: float,
            eps_step: float, steps: int, differentiable: bool, with_losses: bool = False,
            kernels: RolloutKernels | None = None, last_delta: list[Tensor] | None = None
            ) -> tuple[list[Tensor], list[Tensor]]:
    """Eq. 5 unrolled for `steps` steps; returns ([x_adv(1..T)], [CE per example at x_adv(1..T)]).

    differentiable=True: the graph runs through δ over the whole recursion (generator
    training; the caller sets the generator's mode), and the CE terms carry gradients
    w.r.t. x_adv(t) (from the input gradients already computed, never a second pass
    through the classifier). False: everything detached, the generator in eval mode
    (attacking). The classifier is always in eval mode, its parameters frozen for the
    duration. One-shot generation (steps = 1) steps by ε, not ε_step. CE values are
    returned only when ``with_losses`` (the last step's needs one more classifier pass).
    ``last_delta``, when given, receives δ(T), detached (the collapse check's clamp share).
    """
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if not 0 < eps <= 1:
        raise ValueError(f"eps: must be in (0, 1], got {eps}")
    k = kernels or EAGER
    step = eps if steps == 1 else eps_step
    x = x.detach()
    normalize = bool(getattr(generator, "grad_norm", True))
    delta = torch.zeros_like(x)
    x_adv = x
    advs: list[Tensor] = []
    losses: list[Tensor] = []
    train_gen = generator.training if differentiable else False
    with preserve_mode(classifier, False), frozen_params(classifier), preserve_mode(generator, train_gen):
        for t in range(steps):
            ce, g_raw = k.ce_grad(classifier, x_adv, y)
            if t > 0 and with_losses:
                losses.append(_CEAtIterate.apply(x_adv, ce, g_raw) if x_adv.requires_grad else ce)
            g = normalize_grad(g_raw) if normalize else g_raw
            with torch.set_grad_enabled(differentiable):
                delta, x_adv = k.update(generator, x, g, delta, z, y, step=step, eps=eps, amp_dtype=k.amp_dtype)
            advs.append(x_adv)
        if last_delta is not None:
            last_delta.append(delta.detach())
        if with_losses:
            if x_adv.requires_grad:
                ce, g_raw = k.ce_grad(classifier, x_adv, y)
                losses.append(_CEAtIterate.apply(x_adv, ce, g_raw))
            else:
                with torch.no_grad():
                    losses.append(F.cross_entropy(classifier(x_adv), y, reduction="none"))
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
