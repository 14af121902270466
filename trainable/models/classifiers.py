"""Classifiers of docs/method.md: LeNet-5 (MNIST) and ResNet-20 (CIFAR-10), as their sources build them.

Input normalisation follows each classifier's source ("Classifiers" in docs/method.md): the
authors' MNIST LeNet-5 takes raw [0, 1] pixels; their CIFAR-10 ResNet-20 normalises with
ImageNet statistics. Where a classifier normalises, mean and std are buffers inside it, so
attacks and generators always work in [0, 1] pixel space and budgets never need rescaling
(RobustBench convention).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.models.init import authors_init  # the authors' one init for both networks (docs/method.md)

# The statistics the authors' CIFAR-10 ResNet-20 normalises with (docs/method.md, "Classifiers").
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Normalize(nn.Module):
    """(x − mean) / std with mean and std as buffers (saved in checkpoints, moved with .to)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def input_normalization(mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> nn.Module:
    """A :class:`Normalize` with these statistics, or the identity when there are none (raw pixels)."""
    if mean is None or std is None:
        return nn.Identity()
    return Normalize(mean, std)


class LeNet5(nn.Module):
    """LeNet-5 as in the authors' code: conv(1→6,5,p2)-ReLU-pool, conv(6→16,5)-ReLU-pool,
    conv(16→120,5)-ReLU, fc 84, fc 10, with the authors' initialisation. Input (N, 1, 28, 28)
    in [0, 1]; raw pixels unless `mean`/`std` are given (the authors' and Madry's MNIST
    models take raw pixels; checkpoints of earlier versions carry MNIST statistics)."""

    # evaluated NHWC on a CPU: measured faster for its small convolutions (docs/performance.md)
    EVAL_CHANNELS_LAST_ON_CPU = True

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.normalize = input_normalization(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, num_classes)
        authors_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class _BasicBlock(nn.Module):
    """3×3 basic block with the option-A (zero-padded, strided identity) shortcut of He et al."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes - in_planes
        self.stride = stride

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016, §4.2): 3 stages × 3 blocks, widths 16/32/64,
    option-A shortcuts, Kaiming-normal init; 0.27 M parameters. Input (N, 3, 32, 32) in [0, 1],
    normalised inside by `mean`/`std` (the authors' pre-trained ResNet-20: ImageNet statistics)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10,
                 mean: tuple[float, ...] | None = IMAGENET_STATS[0],
                 std: tuple[float, ...] | None = IMAGENET_STATS[1]) -> None:
        super().__init__()
        self.normalize = input_normalization(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build_classifier(name: str, dataset: str, in_channels: int | None = None, input_norm: str = "auto") -> nn.Module:
    """The named classifier (a models registry entry) for `dataset`, with the input normalisation
    `input_norm` ("auto": the classifier's source on this dataset; see :data:`INPUT_NORMS`)."""
    from trainable.data.registry import DATASETS
    from trainable.models.registry import CLASSIFIERS

    if name not in CLASSIFIERS:
        raise ValueError(f"model: {CLASSIFIERS.unknown(name)}")
    data = DATASETS[dataset]
    channels = in_channels if in_channels is not None else data.shape[0]
    entry = CLASSIFIERS[name]
    mean, std = normalization_stats(entry.input_norm_for(dataset) if input_norm == "auto" else input_norm, dataset)
    if mean is not None and channels != len(mean):  # e.g. LeNet-5 on CIFAR: broadcast grey statistics
        mean, std = (mean[0],) * channels, (std[0],) * channels
    return entry.make(in_channels=channels, num_classes=data.num_classes, mean=mean, std=std)


# The input normalisations a classifier can be built with (TrialConfig.input_norm).
INPUT_NORMS = ("none", "dataset", "imagenet")


def normalization_stats(input_norm: str, dataset: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) of an input normalisation: none (raw pixels), the dataset's own statistics, ImageNet's."""
    if input_norm == "none":
        return None, None
    if input_norm == "imagenet":
        return IMAGENET_STATS
    if input_norm == "dataset":
        from trainable.data.registry import DATASETS

        return DATASETS[dataset].mean, DATASETS[dataset].std
    raise ValueError(f"input_norm: expected one of {', '.join(INPUT_NORMS)}, got {input_norm!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
