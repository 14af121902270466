"""L2L-DA (Algorithm 1 of the paper) and the L2L* baseline (Chen et al.) as training-time defenses.

Each adversarial iteration, :meth:`L2LDADefense.batch` first takes one SGD *ascent*
step of the generator on L_cls + λ·L_div (Eqs. 6–7, summed over the T steps as the
authors' code does; ``gen_objective: mean`` averages them as the paper writes) over a doubled batch
([x;x], [y;y], [z1;z2], z fixed over the T recursion steps; x in [0, 1]), with the
classifier in eval mode and receiving no gradient (``torch.autograd.grad`` w.r.t. the
generator's parameters only). It then returns the detached [x ; x_adv(T)(z1) ;
x_adv(T)(z2)] on which the runner takes the classifier's CE step (train mode, the
defense's clip — 1.0 here —, LR decay) — the same path every defense uses.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from trainable.defenses.base import Defense
from trainable.generators.losses import clamp_erased, generator_step, l2lda_losses, l2lstar_loss
from trainable.defenses.registry import build_generator
from trainable.generators.kernels import build_kernels
from trainable.generators.nets import Generator, L2LStarGenerator


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

    def batch(self, x: Tensor, y: Tensor, iteration: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        self.generator.train()
        last_delta: list[Tensor] = []
        loss_cls, loss_div, adv1, adv2 = l2lda_losses(
            self.generator, self.classifier, x, y, cfg.z_dim, eps=cfg.eps_value, eps_step=cfg.eps_step,
            steps=cfg.gen_steps, kernels=self.kernels, objective=cfg.gen_objective, last_delta=last_delta)
        lam = cfg.lam_value
        # λ = 0 (diversity off) drops the term so its graph is not even differentiated.
        objective = loss_cls + lam * loss_div if lam > 0 else loss_cls
        grad_norm = generator_step(self.generator, self.optimizer, objective, cfg.grad_clip)
        adv1, adv2 = adv1.detach(), adv2.detach()
        x_train = torch.cat([x, adv1, adv2])
        # How far apart two z draws put x_adv(T) (mean |Δ| per pixel): the spread L_div acts on.
        spread = (adv1 - adv2).abs().mean()
        metrics = {"train/loss_cls": loss_cls.detach(), "train/loss_div": loss_div.detach(), "train/adv_spread": spread,
                   **_health(torch.cat([x, x]), torch.cat([adv1, adv2]), last_delta[0], grad_norm)}
        return x_train, torch.cat([y, y, y]), metrics


def _health(x: Tensor, x_adv: Tensor, delta: Tensor, grad_norm: Tensor) -> dict[str, Tensor]:
    """The generator's health metrics (docs/method.md, "A generator that stops fooling"): its pre-clip
    gradient norm and the share of δ that the [0, 1] clamp erases."""
    return {"train/gen_grad_norm": grad_norm, "train/clamp_erased": clamp_erased(x, x_adv, delta)}


class L2LStarDefense(_GeneratorDefense):
    """L2L* (Chen et al.): one-shot generator on [x, ∇L(x)], trained jointly on L_cls only."""

    def batch(self, x: Tensor, y: Tensor, iteration: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        self.generator.train()
        last_delta: list[Tensor] = []
        loss_cls, x_adv = l2lstar_loss(self.generator, self.classifier, x, y, eps=self.cfg.eps_value,
                                       kernels=self.kernels, last_delta=last_delta)
        grad_norm = generator_step(self.generator, self.optimizer, loss_cls, self.cfg.grad_clip)
        x_adv = x_adv.detach()
        return torch.cat([x, x_adv]), torch.cat([y, y]), {"train/loss_cls": loss_cls.detach(),
                                                          **_health(x, x_adv, last_delta[0], grad_norm)}


def l2lda_generator(cfg: Any, shape: Sequence[int], num_classes: int, *, width: int) -> Generator:
    """L2L-DA's generator with the trial's ablation flags (z_dim, use_delta, use_label, grad_norm)."""
    return Generator.from_config(cfg, shape, num_classes, width=width)


def l2lstar_generator(cfg: Any, shape: Sequence[int], num_classes: int, *, width: int) -> L2LStarGenerator:
    """L2L*'s generator: it reads the raw input gradient, by definition of L2L* (docs/method.md)."""
    return L2LStarGenerator.from_config(cfg, shape, width=width)

