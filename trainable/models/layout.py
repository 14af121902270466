"""The memory layout a classifier is evaluated in (docs/performance.md, "Evaluation layout").

The attacks spend nearly all their time in the classifier's forward and input-gradient passes.
On a CPU, LeNet-5's small convolutions run about 1.3× (forward) to 2× (input gradient) faster
with the weights stored NHWC (``channels_last``); ResNet-20's input gradients do not gain. A
classifier class opts in with ``EVAL_CHANNELS_LAST_ON_CPU = True`` and :func:`evaluation_layout`
stores it NHWC for the duration of an evaluation only, then restores its layout: the values
and the parameter objects are the same (an optimizer holding them keeps working), only the
strides change. The attacks, their budgets and their per-example results are not touched.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether evaluating `model` NHWC pays on its device (its class's measured choice)."""
    if not getattr(type(model), "EVAL_CHANNELS_LAST_ON_CPU", False):
        return False
    weights = [p for p in model.parameters() if p.dim() == 4]
    if not weights or any(w.device.type != "cpu" for w in weights):
        return False
    # already NHWC (a trial trained with channels_last): nothing to change
    return layout_of(model) != "channels_last"


def layout_of(model: nn.Module) -> str:
    """The memory layout of the model's convolution weights: ``channels_last`` when they are stored
    NHWC, else ``contiguous`` (recorded in every robustness matrix's profile)."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    nhwc = bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    return "channels_last" if nhwc and not all(w.is_contiguous() for w in weights) else "contiguous"


@contextmanager
def evaluation_layout(model: nn.Module) -> Iterator[nn.Module]:
    """`model` stored NHWC inside the block when its class prefers it on this device; its
    layout restored on the way out, errors included."""
    if not prefers_channels_last(model):
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
