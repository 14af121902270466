"""Training-time defenses: what the classifier is trained on at each iteration.

A defense turns a clean batch into the classifier's training batch. The baselines
follow the authors' code: the classifier takes one CE over [x ; x_adv]. Generator
defenses (L2L-DA, L2L*) live in :mod:`trainable.defenses.l2lda`; they also train their
generator inside :meth:`Defense.batch`, so the runner treats all defenses alike.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.gradient import fgsm, pgd


class Defense:
    """Base class. Subclasses implement :meth:`batch`; generator defenses also set `generator`."""

    name = "plain"
    generator: nn.Module | None = None

    def __init__(self, cfg: Any, classifier: nn.Module, shape: tuple[int, int, int], num_classes: int,
                 device: torch.device) -> None:
        self.cfg, self.classifier, self.shape = cfg, classifier, shape
        self.num_classes, self.device = num_classes, device

    def batch(self, x: Tensor, y: Tensor, iteration: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Return (x_train, y_train, metrics) for one adversarial iteration; metrics are 0-d tensors."""
        return x, y, {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Plain(Defense):
    name = "plain"


class _GradientAT(Defense):
    """Adversarial training on [x ; attack(x)] with a gradient attack (last iterate, as in Madry et al.)."""

    def make(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def batch(self, x, y, iteration):
        x_adv = self.make(x, y)
        return torch.cat([x, x_adv]), torch.cat([y, y]), {}


class FGSMAT(_GradientAT):
    name = "fgsm_at"

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


def _lazy(module: str, cls: str):
    def build(*args, **kw):
        return getattr(importlib.import_module(module), cls)(*args, **kw)

    return build


DEFENSES = {
    "plain": Plain,
    "fgsm_at": FGSMAT,
    "pgd10_at": lambda *a, **k: PGDAT(*a, steps=10, step_div=4, **k),  # step ε/4
    "pgd100_at": lambda *a, **k: PGDAT(*a, steps=100, step_div=12, **k),  # step ε/12
    "cw100_at": lambda *a, **k: PGDAT(*a, steps=100, step_div=12, loss="cw", **k),
    "l2l_star": _lazy("trainable.defenses.l2lda", "L2LStarDefense"),
    "l2lda": _lazy("trainable.defenses.l2lda", "L2LDADefense"),
}


def build_defense(cfg: Any, classifier: nn.Module, shape: tuple[int, int, int], num_classes: int,
                  device: torch.device) -> Defense:
    try:
        factory = DEFENSES[cfg.defense]
    except KeyError:
        raise ValueError(f"defense: unknown defense {cfg.defense!r} (choose from {', '.join(DEFENSES)})") from None
    return factory(cfg, classifier, shape, num_classes, device)
