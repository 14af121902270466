"""The baseline defenses (docs/method.md): no defense, FGSM-AT, PGD-AT and C&W-margin PGD-AT.

They follow the authors' code: the classifier takes one CE over [x ; x_adv], x_adv from a
gradient attack on the current classifier (the last iterate, as in Madry et al.).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trainable.attacks.gradient import fgsm, pgd
from trainable.defenses.base import Defense


class Plain(Defense):
    """No defense: the classifier trains on clean batches (its registry entry is not adversarial)."""


class _GradientAT(Defense):
    """Adversarial training on [x ; attack(x)] with a gradient attack (last iterate, as in Madry et al.)."""

    def make(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def batch(self, x, y, iteration):
        x_adv = self.make(x, y)
        return torch.cat([x, x_adv]), torch.cat([y, y]), {}


class FGSMAT(_GradientAT):
    """FGSM-AT: one signed step of size ε."""

    def make(self, x, y):
        return fgsm(self.classifier, x, y, eps=self.cfg.eps)


class PGDAT(_GradientAT):
    """PGD-AT (Madry et al. 2018): random start, signed steps, the last iterate."""

    def __init__(self, *args, steps: int, step_div: float, loss: str = "ce", **kw) -> None:
        super().__init__(*args, **kw)
        self.steps, self.step_div, self.loss = steps, step_div, loss

    def make(self, x, y):
        return pgd(self.classifier, x, y, eps=self.cfg.eps, step=self.cfg.eps / self.step_div, steps=self.steps,
                   loss=self.loss, random_start=True, keep_best=False, early_stop=False)


def pgd10_at(*args: Any, **kw: Any) -> PGDAT:
    return PGDAT(*args, steps=10, step_div=4, **kw)  # step ε/4


def pgd100_at(*args: Any, **kw: Any) -> PGDAT:
    return PGDAT(*args, steps=100, step_div=12, **kw)  # step ε/12


def cw100_at(*args: Any, **kw: Any) -> PGDAT:
    return PGDAT(*args, steps=100, step_div=12, loss="cw", **kw)  # PGD on the C&W margin, step ε/12
