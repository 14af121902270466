"""The classifier registry (docs/extending.md): one entry per architecture a trial can train.

An entry's ``build(in_channels=, num_classes=, mean=, std=)`` returns the classifier with its
input normalisation inside (inputs in [0, 1]; ``mean=None``: raw pixels); ``input_norm`` says
which normalisation the classifier's source uses on each dataset and ``init`` which
initialisation (docs/method.md, "Classifiers"); ``cost`` is its training cost relative to
LeNet-5, which ``--dry-run`` multiplies into its estimates. Plug-ins add entries through the
``l2lda_tune.models`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch.nn as nn

from trainable.registry import Registry, resolve


@dataclass(frozen=True)
class ClassifierEntry:
    name: str
    build: Callable[..., nn.Module] | str  # build(in_channels=, num_classes=, mean=, std=) -> nn.Module
    cost: float = 1.0  # training cost per image relative to LeNet-5 (--dry-run)
    doc: str = ""
    # The source's input normalisation: "none" | "dataset" | "imagenet", one for every dataset or per
    # dataset name ("*": every other dataset); resolved into TrialConfig.input_norm.
    input_norm: str | Mapping[str, str] = "dataset"
    init: str = ""  # the initialisation the builder applies, and its source (recorded in docs/method.md)

    def input_norm_for(self, dataset: str) -> str:
        if isinstance(self.input_norm, str):
            return self.input_norm
        return self.input_norm.get(dataset, self.input_norm.get("*", "dataset"))

    def make(self, **kw: Any) -> nn.Module:
        return resolve(self.build)(**kw)


CLASSIFIERS: Registry[ClassifierEntry] = Registry("model", "l2lda_tune.models", ClassifierEntry)


def _ours() -> None:
    # Costs: measured per training iteration on this project's 2-core machine (docs/reliability.md, "--dry-run").
    # Normalisation and init (docs/method.md, "Classifiers"): the authors' LeNet-5 takes raw pixels and is
    # initialised by their weights_init_normal; their CIFAR-10 ResNet-20 (a pre-trained ResNet-20 in the
    # He et al. recipe) normalises with ImageNet statistics and Kaiming-normal weights.
    CLASSIFIERS.add(ClassifierEntry("lenet5", "trainable.models.classifiers:LeNet5", 1.0,
                                    "LeNet-5 of the authors' code (61,706 parameters)", input_norm="none",
                                    init="conv N(0, 0.02), linear xavier-uniform, zero biases (authors' code)"))
    CLASSIFIERS.add(ClassifierEntry("resnet20", "trainable.models.classifiers:ResNet20", 25.0,
                                    "ResNet-20 for CIFAR, option-A shortcuts (269,722 parameters)",
                                    input_norm={"cifar10": "imagenet", "*": "dataset"},
                                    init="Kaiming-normal conv and linear weights (He et al.; the authors' pre-trained ResNet-20)"))


CLASSIFIERS.builtins(_ours)
