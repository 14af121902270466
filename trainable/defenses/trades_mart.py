"""TRADES (Zhang et al. 2019) and MART (Wang et al. 2020): defenses that own their loss (docs/method.md).

Both make their adversarial examples in :meth:`batch` with the classifier in eval mode (its
mode restored after, its parameters frozen: no ``.grad`` is touched), starting from
x + 0.001·N(0, I) and taking signed steps projected on the ε-ball and [0, 1], as their
sources do; the inner loss differs (TRADES: the KL between the clean and the adversarial
prediction; MART: the CE). ``batch`` returns [x ; x_adv] and [y ; y]; the runner then puts
the classifier in train mode and calls :meth:`classifier_loss`, which forwards the clean and
the adversarial halves separately (as their code does, so batch-norm statistics are per
half) and returns the paper's objective. Settings come from the registry entry's
``settings`` for the trial's dataset (docs/method.md, "Defaults and their sources").
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks.primitives import frozen_params, preserve_mode, project
from trainable.defenses.base import Defense, Metrics, accuracy

START_STD = 0.001  # both sources start the inner maximisation at x + 0.001·N(0, I)


def kl_rows(p_log_clean: Tensor, p_log_adv: Tensor) -> Tensor:
    """KL(p(x) ‖ p(x_adv)) per example from log-probabilities: Σ_k p_k(x) (log p_k(x) − log p_k(x_adv))."""
    return (p_log_clean.exp() * (p_log_clean - p_log_adv)).sum(1)


def inner_max(classifier: nn.Module, x: Tensor, objective: Callable[[Tensor], Tensor], *, eps: float, step: float,
              steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Signed-gradient ascent of `objective(logits)` (a sum over the batch) from x + 0.001·N(0, I),
    each step projected on the ε-ball around x and [0, 1]; the classifier in eval mode, frozen."""
    x = x.detach()
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                        device="cpu" if generator is not None else x.device).to(x.device)
    x_adv = project(x + START_STD * noise, x, eps)
    with preserve_mode(classifier, False), frozen_params(classifier):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(objective(classifier(x_adv)), x_adv)
            x_adv = project(x_adv.detach() + step * g.sign(), x, eps)
    return x_adv.detach()


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """TRADES' objective: CE(f(x), y) + β · mean over the batch of KL(p(x) ‖ p(x_adv)); returns (loss, CE, KL)."""
    ce = F.cross_entropy(logits_clean, y)
    kl = kl_rows(F.log_softmax(logits_clean, 1), F.log_softmax(logits_adv, 1)).mean()
    return ce + beta * kl, ce, kl


MART_STAB = 1e-4  # MART's code takes log(1.0001 − p) so that a certain wrong class gives a finite loss


def mart_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """MART's objective (Eq. 8 of the paper) with the stabilisers of the authors' code; (loss, BCE, weighted KL).

    BCE(p(x_adv), y) = CE(f(x_adv), y) − log(1 − max_{k≠y} p_k(x_adv)), batch mean;
    weighted KL = mean over the batch of KL(p(x) ‖ p(x_adv)) · (1 − p_y(x)).
    """
    p_adv = F.softmax(logits_adv, 1)
    other = p_adv.scatter(1, y[:, None], float("-inf")).amax(1)  # the most likely wrong class
    bce = F.cross_entropy(logits_adv, y) - torch.log(1 + MART_STAB - other + 1e-12).mean()
    log_clean = F.log_softmax(logits_clean, 1)
    p_true = log_clean.exp().gather(1, y[:, None]).squeeze(1)
    kl = (kl_rows(log_clean, torch.log(p_adv + 1e-12)) * (1.0000001 - p_true)).mean()
    return bce + beta * kl, bce, kl


class _SplitLossDefense(Defense):
    """Shared by TRADES and MART: the inner maximisation's settings and the two-half forward."""

    objective: Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor, Tensor]]
    names: tuple[str, str]  # metric names of the objective's two terms

    def __init__(self, cfg: Any, classifier: nn.Module, shape: tuple[int, int, int], num_classes: int,
                 device: torch.device, *, steps: int, step_frac: float, beta: float) -> None:
        super().__init__(cfg, classifier, shape, num_classes, device)
        self.eps = cfg.eps_value
        self.steps, self.step, self.beta = steps, step_frac * self.eps, beta

    def adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def batch(self, x: Tensor, y: Tensor, iteration: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return torch.cat([x, self.adversarial(x, y)]), torch.cat([y, y]), {}

    def classifier_loss(self, x_train: Tensor, y_train: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        n = len(y)
        logits_clean, logits_adv = self.classifier(x_train[:n]), self.classifier(x_train[n:])
        loss, first, second = self.objective(logits_clean, logits_adv, y, self.beta)
        return loss, {"train/acc_clean": accuracy(logits_clean, y), "train/acc_adv": accuracy(logits_adv, y),
                      self.names[0]: first.detach(), self.names[1]: second.detach()}


class TRADES(_SplitLossDefense):
    """TRADES: x_adv maximises KL(p(x) ‖ p(x_adv)); the classifier minimises CE(f(x), y) + β·KL."""

    objective = staticmethod(trades_loss)
    names = ("train/loss_natural", "train/loss_kl")

    def adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        with preserve_mode(self.classifier, False), torch.no_grad():
            log_clean = F.log_softmax(self.classifier(x), 1)  # the target distribution, fixed over the steps

        def kl_sum(logits: Tensor) -> Tensor:
            return kl_rows(log_clean, F.log_softmax(logits, 1)).sum()

        return inner_max(self.classifier, x, kl_sum, eps=self.eps, step=self.step, steps=self.steps)


class MART(_SplitLossDefense):
    """MART: x_adv maximises CE(f(x_adv), y); the classifier minimises BCE + β·(1 − p_y(x))-weighted KL."""

    objective = staticmethod(mart_loss)
    names = ("train/loss_bce", "train/loss_kl")

    def adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        return inner_max(self.classifier, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"),
                         eps=self.eps, step=self.step, steps=self.steps)


def _settings(name: str, cfg: Any) -> dict[str, float]:
    from trainable.defenses.registry import DEFENSES

    return DEFENSES[name].settings_for(cfg.dataset)


def trades(cfg: Any, *args: Any) -> TRADES:
    """TRADES with its source's settings for the trial's dataset (the registry entry's ``settings``)."""
    return TRADES(cfg, *args, **_settings("trades", cfg))


def mart(cfg: Any, *args: Any) -> MART:
    """MART with its source's settings for the trial's dataset (the registry entry's ``settings``)."""
    return MART(cfg, *args, **_settings("mart", cfg))
