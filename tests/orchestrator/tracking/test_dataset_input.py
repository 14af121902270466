"""A trial's MLflow dataset input (orchestrator/tracking/records.py; docs/architecture.md, tracking):
its split sizes are its dataset entry's, so every registered dataset gets one, plug-ins' included."""
from __future__ import annotations

import hashlib
import json

from orchestrator.tracking.records import dataset_input
from trainable.data.registry import DATASETS


def test_the_builtin_datasets_keep_their_profile_and_digest():
    # the sizes and digests earlier versions logged (source sizes less the validation split)
    before = {"mnist5k": (3500, 500, 1000), "mnist": (55000, 5000, 10000), "fashion_mnist": (55000, 5000, 10000),
              "cifar10": (45000, 5000, 10000)}
    for name, (train, val, test) in before.items():
        got = dataset_input({"dataset": name, "val_subset": 200, "test_subset": 100000})
        profile = {"train": train, "val": val, "test": test, "val_used": 200, "test_used": test}
        digest = hashlib.sha256(json.dumps({"name": name, **profile}, sort_keys=True).encode()).hexdigest()[:12]
        assert got == {"name": name, "digest": digest, "profile": profile}, name


def test_a_plugin_dataset_gets_an_input_from_its_entry():
    entry = DATASETS["npz_digits"]  # the example plug-in (tests/plugins/)
    got = dataset_input({"dataset": "npz_digits", "val_subset": 0, "test_subset": 5})
    assert got["name"] == "npz_digits" and len(got["digest"]) == 12
    assert got["profile"] == {"train": entry.train_size, "val": entry.val_size, "test": entry.test_size,
                              "val_used": entry.val_size, "test_used": 5}


def test_an_entry_without_a_train_size_leaves_it_out_and_an_unknown_dataset_has_none(monkeypatch):
    import dataclasses

    monkeypatch.setitem(DATASETS._entries, "npz_digits", dataclasses.replace(DATASETS["npz_digits"], train_size=None))
    assert set(dataset_input({"dataset": "npz_digits"})["profile"]) == {"val", "test", "val_used", "test_used"}
    assert dataset_input({"dataset": "no_such_dataset"}) is None
