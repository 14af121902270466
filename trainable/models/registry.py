"""The classifier registry (docs/extending.md): one entry per architecture a trial can train.

An entry's ``build(in_channels=, num_classes=, mean=, std=)`` returns the classifier with the
dataset's normalisation inside (inputs in [0, 1]); ``cost`` is its training cost relative to
LeNet-5, which ``--dry-run`` multiplies into its estimates. Plug-ins add entries through the
``l2lda_tune.models`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from trainable.registry import Registry, resolve


@dataclass(frozen=True)
class ClassifierEntry:
    name: str
    build: Callable[..., nn.Module] | str  # build(in_channels=, num_classes=, mean=, std=) -> nn.Module
    cost: float = 1.0  # training cost per image relative to LeNet-5 (--dry-run)
    doc: str = ""

    def make(self, **kw: Any) -> nn.Module:
        return resolve(self.build)(**kw)


CLASSIFIERS: Registry[ClassifierEntry] = Registry("model", "l2lda_tune.models", ClassifierEntry)


def _ours() -> None:
    # Costs: measured per training iteration on this project's 2-core machine (docs/reliability.md, "--dry-run").
    CLASSIFIERS.add(ClassifierEntry("lenet5", "trainable.models.classifiers:LeNet5", 1.0,
                                    "LeNet-5 of the authors' code (61,706 parameters)"))
    CLASSIFIERS.add(ClassifierEntry("resnet20", "trainable.models.classifiers:ResNet20", 25.0,
                                    "ResNet-20 for CIFAR, option-A shortcuts (269,722 parameters)"))


CLASSIFIERS.builtins(_ours)
