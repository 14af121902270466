"""L2L-DA (Algorithm 1 of the paper) and the L2L* baseline (Chen et al.) as training-time defenses.

Each adversarial iteration, :meth:`L2LDADefense.batch` first takes one SGD *ascent*
step of the generator on L_cls + λ·L_div (Eqs. 6–7) over a doubled batch
([x;x], [y;y], [z1;z2], z fixed over the T recursion steps; x in [0, 1]), with the
classifier in eval mode and receiving no gradient (``torch.autograd.grad`` w.r.t. the
generator's parameters only). It then returns the detached [x ; x_adv(T)(z1) ;
x_adv(T)(z2)] on which the runner takes the classifier's CE step (train mode, the
defense's clip — 1.0 here —, LR decay) — the same path every defense uses.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from trainable.defenses import Defense
from trainable.fast import build_kernels
from trainable.generator import (Generator, L2LStarGenerator, RolloutKernels, build_generator, diversity_loss,
                                 rollout)


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


class _GeneratorDefense(Defense):
    """Shared set-up: the generator, its own SGD optimiser (cfg.gen_lr, momentum, weight decay),
    the rollout kernels of the execution options (docs/performance.md)."""

    def __init__(self, cfg: Any, classifier: nn.Module, shape: tuple[int, int, int], num_classes: int,
                 device: torch.device) -> None:
        super().__init__(cfg, classifier, shape, num_classes, device)
        self.generator = build_generator(cfg, shape, num_classes).to(device)
        if getattr(cfg, "channels_last", False):
            self.generator = self.generator.to(memory_format=torch.channels_last)
        self.kernels = build_kernels(cfg, device)
        self.optimizer = torch.optim.SGD(self.generator.parameters(), lr=cfg.gen_lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.generator.train()

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "gen_opt": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["gen_opt"])


class L2LDADefense(_GeneratorDefense):
    """L2L-DA (Algorithm 1): recursive stochastic generator trained jointly with the classifier.

    Ablations (Table 1) come from the config: ``recursive`` (T = cfg.T steps of ε_step vs one
    step of ε), ``diversity`` (λ = 0 when off), and the generator's ``use_delta``,
    ``use_label``, ``grad_norm``.
    """

    name = "l2lda"

    def batch(self, x: Tensor, y: Tensor, iteration: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        self.generator.train()
        loss_cls, loss_div, adv1, adv2 = l2lda_losses(
            self.generator, self.classifier, x, y, cfg.z_dim, eps=cfg.eps_value, eps_step=cfg.eps_step,
            steps=cfg.gen_steps, kernels=self.kernels)
        lam = cfg.lam_value
        # λ = 0 (diversity off) drops the term so its graph is not even differentiated.
        objective = loss_cls + lam * loss_div if lam > 0 else loss_cls
        generator_step(self.generator, self.optimizer, objective, cfg.grad_clip)
        x_train = torch.cat([x, adv1.detach(), adv2.detach()])
        # How far apart two z draws put x_adv(T) (mean |Δ| per pixel): the spread L_div acts on.
        spread = (adv1.detach() - adv2.detach()).abs().mean()
        metrics = {"train/loss_cls": loss_cls.detach(), "train/loss_div": loss_div.detach(), "train/adv_spread": spread}
        return x_train, torch.cat([y, y, y]), metrics


class L2LStarDefense(_GeneratorDefense):
    """L2L* (Chen et al.): one-shot generator on [x, ∇L(x)], trained jointly on L_cls only."""

    name = "l2l_star"

    def batch(self, x: Tensor, y: Tensor, iteration: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        self.generator.train()
        loss_cls, x_adv = l2lstar_loss(self.generator, self.classifier, x, y, eps=self.cfg.eps_value,
                                       kernels=self.kernels)
        generator_step(self.generator, self.optimizer, loss_cls, self.cfg.grad_clip)
        return torch.cat([x, x_adv.detach()]), torch.cat([y, y]), {"train/loss_cls": loss_cls.detach()}
