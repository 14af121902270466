"""Session-wide test set-up: quiet, loopback-only, shared caches of trained models.

Trained models are expensive on 2 CPU cores, so each one is trained once per test
session (and warm-ups are cached on disk under the session's cache dir).
"""
from __future__ import annotations

import os

# Before any import of ray/mlflow: no telemetry, no network beyond loopback.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import pytest
import torch

from _plugins import use_plugin

# The example plug-in (tests/plugins/) is part of every registry for the whole session: the
# contract suites run over its entries like ours (before any registry is read, before Ray starts).
use_plugin()

from trainable.config import TrialConfig  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("l2lda-cache"))


@pytest.fixture(scope="session")
def trained(cache_dir):
    """trained(defense, **overrides) -> Experiment, trained once per session per arguments.

    Default: LeNet-5 on mnist5k, batch 100, 100 clean warm-up iterations then `iterations`
    iterations of the defense, small fixed test subset.
    """
    from trainable.experiment import Experiment

    cache: dict = {}

    def get(defense: str = "plain", **overrides):
        key = (defense, tuple(sorted(overrides.items())))
        if key not in cache:
            base = dict(dataset="mnist5k", defense=defense, warmup=100, iterations=300, batch_size=100,
                        steps_per_report=1000, test_subset=200, val_subset=100, cache_dir=cache_dir,
                        gen_width=8, T=3, gen_attack_steps=20, gen_attack_samples=2, square_queries=200)
            base.update(overrides)
            exp = Experiment(TrialConfig.from_dict(base))
            while not exp.done:
                exp.train(exp.cfg.steps_per_report)
            cache[key] = exp
        return cache[key]

    return get


@pytest.fixture(scope="session")
def mnist5k():
    from trainable.data import load_dataset

    return load_dataset("mnist5k")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
