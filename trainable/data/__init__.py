"""Datasets: the registry of what can be trained on, and their splits as device-resident tensors.

``DATASETS`` (:mod:`trainable.data.registry`) holds one :class:`DatasetEntry` per dataset,
ours and plug-ins'; :func:`load_dataset` reads one into fixed train/validation/test splits
(:mod:`trainable.data.loading`) through its source (:mod:`trainable.data.sources`).
"""
from trainable.data.loading import (SPLIT_SEED, BatchSampler, DataSplits, augment, fixed_subset,
                                    load_dataset, stratified_split)
from trainable.data.registry import DATASETS, DatasetEntry
from trainable.errors import DatasetMissingError

__all__ = ["DATASETS", "SPLIT_SEED", "BatchSampler", "DataSplits", "DatasetEntry", "DatasetMissingError", "augment",
           "fixed_subset", "load_dataset", "stratified_split"]
