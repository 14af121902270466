"""What a training-time defense is (docs/extending.md): it turns a clean batch into the classifier's training batch.

The runner calls :meth:`Defense.batch` at every adversarial iteration and then takes the
classifier's CE step on what it returns, the same path for every defense. Generator
defenses (L2L-DA, L2L*) train their generator inside ``batch`` and expose it as
``generator`` (the generator columns of the matrix fine-tune it; exports save it).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor


class Defense:
    """Base class. Subclasses implement :meth:`batch`; generator defenses also set `generator`."""

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
