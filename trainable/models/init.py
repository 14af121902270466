"""The authors' initialisation, shared by the L2L-DA generators and the classifiers trained from scratch (docs/method.md)."""
from __future__ import annotations

import torch.nn as nn


def authors_init(module: nn.Module) -> None:
    """The authors' ``weights_init_normal``, applied to their generator and to a classifier trained
    from scratch (docs/method.md): N(0, 0.02) conv weights, xavier-uniform Linear weights, zero biases.

    With N(0, 0.02) on the generator's z-MLP Linear layers too, z moves the generator's output by under 2% of
    its magnitude at initialisation and L_div has almost nothing to act on (docs/method.md).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)
