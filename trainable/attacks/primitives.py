"""The leaf of the attack code: what every attack, generator rollout and defense shares.

Nothing here imports another module of ours (docs/architecture.md, "Layers"): the ℓ∞
projection, seeded uniform draws and the random start, the model-mode and frozen-parameter
context managers, the one :class:`AttackFn` protocol every matrix column implements, and the
:class:`EvalContext` a column's preparation receives. Inputs x are in [0, 1] (NCHW).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn as nn
from torch import Tensor


class AttackFn(Protocol):
    """A matrix column's attack: x_adv with ‖x_adv − x‖∞ ≤ eps and x_adv ∈ [0, 1] (docs/extending.md)."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float,
                 generator: torch.Generator | None = None) -> Tensor: ...


# What a column's preparation returns: [(metric name, attack_fn, budget recorded in the profile)].
AttackPrep = list[tuple[str, Callable[..., Tensor], dict]]


@dataclass
class EvalContext:
    """What column preparation may need besides the classifier."""

    cfg: Any  # TrialConfig (resolved)
    data: Any  # DataSplits
    device: torch.device
    generator: nn.Module | None = None  # the trial's own generator (L2L-DA), if any
    seed: int = 0
    log: Callable[[str], None] = lambda msg: None
    # Where a long matrix reports how far it is (a Ray trial's progress table, a CLI line):
    # called with a trainable.evaluation.progress.Progress after each batch and around each column.
    progress: Callable[[Any], None] | None = None
    # Set by the matrix while a column is prepared: attacker / surrogate training calls it
    # with (steps done, steps in all).
    on_training: Callable[[int, int], None] = lambda done, total: None


@contextmanager
def preserve_mode(model: nn.Module, train: bool = False) -> Iterator[nn.Module]:
    """Put `model` (and all submodules) in train/eval mode, restoring every module's own mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def frozen_params(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters of `model` do not require grad inside (restored after): an attack's graphs reach the input only."""
    thawed = [p for p in model.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in thawed:
            p.requires_grad_(True)


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """x_adv projected onto the ℓ∞ ball of radius eps around x, then onto [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def uniform(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device,
            dtype: torch.dtype | None = None) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device (a CPU generator: seeded runs match across devices)."""
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Integers in [0, high) drawn like :func:`uniform`."""
    if generator is None:
        return torch.randint(0, high, shape, device=device)
    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)


def uniform_ball(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """A uniform draw from the ℓ∞ ball of radius eps, shaped like x (PGD's random start, before projection)."""
    return (uniform(x.shape, generator, x.device, x.dtype) * 2 - 1) * eps


def check_inputs(x: Tensor, y: Tensor, eps: float) -> None:
    """One-line errors for an attack called on a non-NCHW batch, mismatched labels or a bad eps."""
    if x.dim() != 4:
        raise ValueError(f"x: expected an NCHW batch, got shape {tuple(x.shape)}")
    if len(x) != len(y):
        raise ValueError(f"y: {len(y)} labels for {len(x)} inputs")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps: must be > 0, got {eps}")
