"""Classifiers of docs/method.md: LeNet-5 (MNIST) and ResNet-20 (CIFAR-10).

Normalisation is a buffer inside each classifier, so attacks and generators always
work in [0, 1] pixel space and budgets never need rescaling (RobustBench convention).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

class Normalize(nn.Module):
    """(x − mean) / std with mean and std as buffers (saved in checkpoints, moved with .to)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class LeNet5(nn.Module):
    """LeNet-5 as in the authors' code: conv(1→6,5,p2)-ReLU-pool, conv(6→16,5)-ReLU-pool,
    conv(16→120,5)-ReLU, fc 84, fc 10. Input (N, 1, 28, 28) in [0, 1]."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10,
                 mean: tuple[float, ...] = (0.1307,), std: tuple[float, ...] = (0.3081,)) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, num_classes)

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
    option-A shortcuts; 0.27 M parameters. Input (N, 3, 32, 32) in [0, 1]."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10,
                 mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465),
                 std: tuple[float, ...] = (0.2470, 0.2435, 0.2616)) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
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


def build_classifier(name: str, dataset: str, in_channels: int | None = None) -> nn.Module:
    """The named classifier (a models registry entry) with the dataset's normalisation buffers inside."""
    from trainable.data.registry import DATASETS
    from trainable.models.registry import CLASSIFIERS

    data = DATASETS[dataset]
    mean, std = data.mean, data.std
    channels = in_channels if in_channels is not None else len(mean)
    if channels != len(mean):  # e.g. LeNet-5 on CIFAR: broadcast grey statistics
        mean, std = (mean[0],) * channels, (std[0],) * channels
    if name not in CLASSIFIERS:
        raise ValueError(f"model: {CLASSIFIERS.unknown(name)}")
    return CLASSIFIERS[name].make(in_channels=channels, num_classes=data.num_classes, mean=mean, std=std)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
