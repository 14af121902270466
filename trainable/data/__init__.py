"""Datasets: the registry of what can be trained on, and their splits as device-resident tensors.

``DATASETS`` (:mod:`trainable.data.registry`) holds one :class:`DatasetEntry` per dataset,
ours and plug-ins'; :func:`load_dataset` reads one into fixed train/validation/test splits
(:mod:`trainable.data.loading`) through its source (:mod:`trainable.data.sources`).
"""
from trainable.data.loading import (SPLIT_SEED, BatchSampler, DatasetMissingError, DataSplits, augment, fixed_subset,
                                    load_dataset, stratified_split)
from trainable.data.registry import DATASETS, DatasetEntry

__all__ = ["DATASETS", "SPLIT_SEED", "BatchSampler", "DataSplits", "DatasetEntry", "DatasetMissingError", "augment",
           "fixed_subset", "load_dataset", "stratified_split"]


def __getattr__(name: str):
    # Views of earlier versions, derived from the registry.
    if name == "VAL_SIZE":
        return {n: e.val_size for n, e in DATASETS.items()}
    if name == "AUGMENT":
        return {n: (e.augment_pad, e.augment_flip) for n, e in DATASETS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
