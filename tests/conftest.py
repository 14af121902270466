"""Session-wide test set-up: quiet, loopback-only, shared caches of trained models, and the
fixtures tests in several folders use.

Trained models are expensive on 2 CPU cores, so each one is trained once per test
session (and warm-ups are cached on disk under the session's cache dir). Helpers that are not
fixtures live in the ``tests/_*.py`` modules, which tests import by name (pytest puts tests/
on ``sys.path`` for this file); a test module never imports from another test module.
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
from _ray_fixtures import ray_session  # noqa: F401,E402  (fixture: one local Ray per session)
from _s3 import s3  # noqa: F401,E402  (fixture: an S3 server on loopback)

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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir):
    """(config, [step results], checkpoint dir) of a real 30-iteration plain LeNet-5 trial: what the
    fake trials of tests/_fake_runs.py replay."""
    from trainable.experiment.loop import Experiment
    from trainable.training.resources import set_threads

    set_threads(1)
    config = dict(dataset="mnist5k", defense="plain", warmup=0, iterations=30, steps_per_report=10,
                  test_subset=100, val_subset=50, eval_columns=["natural", "fgsm"], val_columns=["natural", "fgsm"],
                  cache_dir=cache_dir, threads=1, seed=0, lr=0.05)
    exp = Experiment(TrialConfig.from_dict(config))
    results = []
    while not exp.done:
        results.append(exp.step())
    ckpt = tmp_path_factory.mktemp("ray") / "trial0" / "checkpoint_000003"
    exp.save(ckpt)
    assert "matrix" in results[-1] and results[-1]["done"]
    return config, results, str(ckpt)


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """One sqlite store per session (creating MLflow's schema takes seconds); tests use
    their own experiments in it."""
    from orchestrator.tracking import make_client

    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d}/mlflow.db"
    make_client(uri).search_experiments()  # create the schema once
    return uri


@pytest.fixture
def no_run(monkeypatch, tmp_path):
    """The CLI in a fresh working directory where starting Ray or a sweep is a test failure."""
    from orchestrator.sweep import connect
    from orchestrator.sweep import run as runner

    def forbidden(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(connect, "init_ray", forbidden)
    monkeypatch.setattr(runner, "run_study", forbidden)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
