"""What a training-time defense is (docs/extending.md): it turns a clean batch into the classifier's
training batch, and says what the classifier's loss on that batch is.

The runner calls :meth:`Defense.batch` at every adversarial iteration, puts the classifier in
train mode and calls :meth:`Defense.classifier_loss` on what ``batch`` returned; it then takes the
optimiser step on that loss (zero grad, backward, the defense's clip, the LR schedule), the
same step for every defense. The default loss is one cross-entropy over the whole training
batch, whose first rows are the clean batch (:func:`cross_entropy`); TRADES and MART override
it (docs/method.md). Generator defenses (L2L-DA, L2L*) train their generator inside ``batch``
and expose it as ``generator`` (the generator columns of the matrix fine-tune it; exports save it).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Share of rows whose arg-max is the label, a 0-d tensor (no graph)."""
    return (logits.detach().argmax(1) == y).float().mean()


Metrics = dict[str, Tensor]


def cross_entropy(classifier: nn.Module, x_train: Tensor, y_train: Tensor, n_clean: int) -> tuple[Tensor, Metrics]:
    """One CE over the training batch, and the accuracies on its first `n_clean` rows (the clean
    batch) and on the rest (the adversarial rows, if any). The clean warm-up and every defense
    that keeps the default :meth:`Defense.classifier_loss` train on this."""
    logits = classifier(x_train)
    loss = F.cross_entropy(logits, y_train)
    metrics = {"train/acc_clean": accuracy(logits[:n_clean], y_train[:n_clean])}
    if len(y_train) > n_clean:
        metrics["train/acc_adv"] = accuracy(logits[n_clean:], y_train[n_clean:])
    return loss, metrics


class Defense:
    """Base class. Subclasses implement :meth:`batch` and may override :meth:`classifier_loss`;
    generator defenses also set `generator`."""

    generator: nn.Module | None = None

    def __init__(self, cfg: Any, classifier: nn.Module, shape: tuple[int, int, int], num_classes: int,
                 device: torch.device) -> None:
        self.cfg, self.classifier, self.shape = cfg, classifier, shape
        self.num_classes, self.device = num_classes, device

    def batch(self, x: Tensor, y: Tensor, iteration: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Return (x_train, y_train, metrics) for one adversarial iteration; metrics are 0-d tensors."""
        return x, y, {}

    def classifier_loss(self, x_train: Tensor, y_train: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Metrics]:
        """The classifier's loss on what :meth:`batch` returned, and its metrics (0-d tensors, logged as
        ``train/…``; ``train/acc_clean`` and ``train/acc_adv`` are expected). Called with the classifier
        in train mode, after ``batch``; `x`, `y` are the clean batch ``batch`` received. The runner
        backpropagates the loss and steps the classifier's optimiser.

        Default: one CE over the training batch, whose first ``len(y)`` rows must then be the clean batch.
        """
        return cross_entropy(self.classifier, x_train, y_train, len(y))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
