"""The dataset contract: every registered dataset, ours and plug-ins', loads through its real
loader from a tiny copy on disk in its own format (docs/extending.md), offline.

A dataset's entry writes that copy (``tiny_copy``; bundled datasets such as mnist5k need none).
torchvision checks its files against the real archives' checksums, which a tiny copy cannot
match: the check is reduced to "the file is there" for these tests only.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainable.data import DATASETS, DatasetMissingError, augment, load_dataset
from trainable.models import build_classifier
from trainable.registry import resolve


@pytest.fixture
def no_checksums(monkeypatch):
    import os

    import torchvision.datasets.cifar as tvc
    import torchvision.datasets.utils as tvu

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(tvu, "check_integrity", exists)
    monkeypatch.setattr(tvc, "check_integrity", exists)


@pytest.mark.parametrize("name", DATASETS.names())
def test_loads_through_its_loader_from_a_tiny_copy(name, tmp_path, no_checksums):
    entry = DATASETS[name]
    root = tmp_path / "data"
    if entry.tiny_copy is not None:
        resolve(entry.tiny_copy)(root)
    d = load_dataset(name, str(root))
    for x, y in ((d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)):
        assert len(x) == len(y) > 0 and tuple(x.shape[1:]) == entry.shape
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        assert 0 <= int(y.min()) and int(y.max()) < entry.num_classes
    assert d.num_classes == entry.num_classes and len(d.val_idx) == len(d.val_y)
    assert len(set(d.val_idx.tolist())) == len(d.val_idx)
    if entry.tiny_copy is None:  # the real (bundled) data: the entry's split sizes hold exactly
        assert (len(d.val_y), len(d.test_y)) == (entry.val_size, entry.test_size)
    out = augment(d.train_x[:4], name, torch.Generator().manual_seed(0))
    assert out.shape == d.train_x[:4].shape and out.min() >= 0 and out.max() <= 1
    # The dataset's default classifier takes its images, normalisation inside.
    logits = build_classifier(entry.model, name, entry.shape[0]).eval()(d.test_x[:2])
    assert logits.shape == (2, entry.num_classes) and torch.isfinite(logits).all()
    assert np.isfinite(entry.eps) and 0 < entry.eps <= 1 and entry.lam >= 0


@pytest.mark.parametrize("name", [n for n, e in DATASETS.items() if e.tiny_copy is not None])
def test_a_missing_copy_is_one_line_naming_the_path(name, tmp_path):
    with pytest.raises(DatasetMissingError) as exc:
        load_dataset(name, str(tmp_path / "nowhere"))
    assert "\n" not in str(exc.value) and "nowhere" in str(exc.value)
    if DATASETS[name].check is not None:  # the check before Ray starts says the same
        with pytest.raises(DatasetMissingError):
            DATASETS[name].check_files(str(tmp_path / "nowhere"))
