"""The L2L-DA generator's losses and optimiser step (docs/method.md; paper Eqs. 6–7, Algorithm 1).

Used by the training-time defenses (:mod:`trainable.defenses.l2lda`) and by the generator
columns of the robustness matrix (:mod:`trainable.attacks.generative`), which train an
attacker against a frozen classifier the same way. Gradients are taken w.r.t. the
generator's parameters only, so the classifier collects no ``.grad``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from trainable.generators.nets import Generator, L2LStarGenerator
from trainable.generators.rollout import RolloutKernels, rollout


# How the per-step terms of Eqs. 6–7 are combined over the T mini-steps (docs/method.md, "Losses"):
# "sum" as the authors' code (g_mini_update_style 2), "mean" as the paper writes Eq. 6.
GEN_OBJECTIVES = ("sum", "mean")


def over_steps(terms: Sequence[Tensor], objective: str = "sum") -> Tensor:
    """Σ_t (objective "sum", the authors' code) or (1/T) Σ_t ("mean", the paper's Eq. 6) of per-step scalars."""
    if objective not in GEN_OBJECTIVES:
        raise ValueError(f"gen_objective: expected one of {', '.join(GEN_OBJECTIVES)}, got {objective!r}")
    stacked = torch.stack(list(terms))
    return stacked.sum() if objective == "sum" else stacked.mean()


def diversity_loss(adv1: Sequence[Tensor], adv2: Sequence[Tensor], z1: Tensor, z2: Tensor,
                   objective: str = "sum") -> Tensor:
    """Eq. 7 over the steps: Σ_t (or (1/T) Σ_t) mean_batch[ mean|x_adv(t)(z1) − x_adv(t)(z2)| / (mean|z1 − z2| + 1e-8) ]."""
    dz = (z1 - z2).abs().flatten(1).mean(1) + 1e-8
    terms = [((a - b).abs().flatten(1).mean(1) / dz).mean() for a, b in zip(adv1, adv2)]
    return over_steps(terms, objective)


def generator_step(generator: nn.Module, optimizer: torch.optim.Optimizer, loss_to_max: Tensor,
                   clip: float) -> Tensor:
    """One ascent step on `loss_to_max` for the generator only (grad-norm clip `clip`).

    ``autograd.grad`` w.r.t. the generator's parameters: the classifier, through which the
    loss was computed, collects no ``.grad``. Returns the gradient's norm before the clip
    (a 0-d tensor; no host sync), which the collapse check logs (docs/method.md).
    """
    params = [p for p in generator.parameters() if p.requires_grad]
    grads = torch.autograd.grad(-loss_to_max, params)
    for p, g in zip(params, grads):
        p.grad = g
    norm = nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.detach()


def l2lda_losses(generator: Generator, classifier: nn.Module, x: Tensor, y: Tensor, z_dim: int, *, eps: float,
                 eps_step: float, steps: int, z_generator: torch.Generator | None = None,
                 kernels: RolloutKernels | None = None, z: Tensor | None = None, objective: str = "sum",
                 last_delta: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Algorithm 1's generator losses on one batch: (L_cls, L_div, x_adv(T)(z1), x_adv(T)(z2)).

    The batch is doubled with z1, z2 ~ N(0, I) fixed over the T steps; the rollout is
    differentiable through δ. L_cls combines CE(f(x_adv(t)), y), averaged over the doubled
    batch, over the T steps (Eq. 6); L_div combines Eq. 7's ratio between the two halves the
    same way. `objective`: "sum" over the steps as the authors' code (the default), "mean" as
    the paper writes Eq. 6 (docs/method.md, "Losses"). `kernels`: the rollout's execution
    options (docs/performance.md); `z`: the doubled batch's latents when given, else drawn;
    `last_delta`: a list that receives δ(T) of the doubled batch, detached.
    """
    n = x.shape[0]
    if z is None:
        z = _randn((2 * n, z_dim), z_generator, x)
    xx, yy = torch.cat([x, x]), torch.cat([y, y])
    advs, losses = rollout(generator, classifier, xx, yy, z, eps=eps, eps_step=eps_step, steps=steps,
                           differentiable=True, with_losses=True, kernels=kernels, last_delta=last_delta)
    loss_cls = over_steps([l.mean() for l in losses], objective)
    loss_div = diversity_loss([a[:n] for a in advs], [a[n:] for a in advs], z[:n], z[n:], objective)
    return loss_cls, loss_div, advs[-1][:n], advs[-1][n:]


def clamp_erased(x: Tensor, x_adv: Tensor, delta: Tensor) -> Tensor:
    """Share of the perturbation δ that the [0, 1] clamp erases: 1 − Σ|x_adv − x| / Σ|δ| (0-d; 0 when δ = 0).

    Near 1, the generator pushes pixels that are already at 0 or 1 further out: its
    perturbation does nothing (docs/method.md, "A generator that stops fooling")."""
    total = delta.abs().sum()
    kept = (x_adv - x).abs().sum()
    return torch.where(total > 0, 1.0 - kept / total.clamp_min(1e-12), torch.zeros_like(total))


def l2lstar_loss(generator: L2LStarGenerator, classifier: nn.Module, x: Tensor, y: Tensor, *,
                 eps: float, kernels: RolloutKernels | None = None, last_delta: list[Tensor] | None = None
                 ) -> tuple[Tensor, Tensor]:
    """L2L*: x_adv = clip(x + ε·g(x, ∇L(x)), 0, 1); returns (CE(f(x_adv), y), x_adv)."""
    advs, losses = rollout(generator, classifier, x, y, None, eps=eps, eps_step=eps, steps=1,
                           differentiable=True, with_losses=True, kernels=kernels, last_delta=last_delta)
    return losses[0].mean(), advs[0]


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """N(0, I) from a CPU generator when one is given (seeded determinism on any device)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
