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


def diversity_loss(adv1: Sequence[Tensor], adv2: Sequence[Tensor], z1: Tensor, z2: Tensor) -> Tensor:
    """Eq. 7: (1/T) Σ_t mean_batch[ mean|x_adv(t)(z1) − x_adv(t)(z2)| / (mean|z1 − z2| + 1e-8) ]."""
    dz = (z1 - z2).abs().flatten(1).mean(1) + 1e-8
    terms = [((a - b).abs().flatten(1).mean(1) / dz).mean() for a, b in zip(adv1, adv2)]
    return torch.stack(terms).mean()


def generator_step(generator: nn.Module, optimizer: torch.optim.Optimizer, loss_to_max: Tensor,
                   clip: float) -> None:
    """One ascent step on `loss_to_max` for the generator only (grad-norm clip `clip`).

    ``autograd.grad`` w.r.t. the generator's parameters: the classifier, through which the
    loss was computed, collects no ``.grad``.
    """
    params = [p for p in generator.parameters() if p.requires_grad]
    grads = torch.autograd.grad(-loss_to_max, params)
    for p, g in zip(params, grads):
        p.grad = g
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def l2lda_losses(generator: Generator, classifier: nn.Module, x: Tensor, y: Tensor, z_dim: int, *, eps: float,
                 eps_step: float, steps: int, z_generator: torch.Generator | None = None,
                 kernels: RolloutKernels | None = None, z: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Algorithm 1's generator losses on one batch: (L_cls, L_div, x_adv(T)(z1), x_adv(T)(z2)).

    The batch is doubled with z1, z2 ~ N(0, I) fixed over the T steps; the rollout is
    differentiable through δ. L_cls = (1/T) Σ_t CE(f(x_adv(t)), y) over the doubled batch
    (Eq. 6); L_div is Eq. 7 between the two halves. `kernels`: the rollout's execution
    options (docs/performance.md); `z`: the doubled batch's latents when given, else drawn.
    """
    n = x.shape[0]
    if z is None:
        z = _randn((2 * n, z_dim), z_generator, x)
    xx, yy = torch.cat([x, x]), torch.cat([y, y])
    advs, losses = rollout(generator, classifier, xx, yy, z, eps=eps, eps_step=eps_step, steps=steps,
                           differentiable=True, with_losses=True, kernels=kernels)
    loss_cls = torch.stack([l.mean() for l in losses]).mean()
    loss_div = diversity_loss([a[:n] for a in advs], [a[n:] for a in advs], z[:n], z[n:])
    return loss_cls, loss_div, advs[-1][:n], advs[-1][n:]


def l2lstar_loss(generator: L2LStarGenerator, classifier: nn.Module, x: Tensor, y: Tensor, *,
                 eps: float, kernels: RolloutKernels | None = None) -> tuple[Tensor, Tensor]:
    """L2L*: x_adv = clip(x + ε·g(x, ∇L(x)), 0, 1); returns (CE(f(x_adv), y), x_adv)."""
    advs, losses = rollout(generator, classifier, x, y, None, eps=eps, eps_step=eps, steps=1,
                           differentiable=True, with_losses=True, kernels=kernels)
    return losses[0].mean(), advs[0]


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """N(0, I) from a CPU generator when one is given (seeded determinism on any device)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
