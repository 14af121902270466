"""Shared Ray fixtures for the orchestrator tests (imported by test modules; conftest is the lead's).

One local Ray instance per test session, on loopback (DESIGN §8: a plain ``ray.init()``
talks over the external interface), quiet, without the dashboard or usage stats.
Helpers here also start the CLI in a subprocess with a clean, quiet environment.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "OMP_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
}


def _quiet() -> None:
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: the repo importable, quiet, loopback-only."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(QUIET_ENV)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def cli_cmd(*args: str) -> list[str]:
    """`l2lda-tune ARGS` through the interpreter running the tests (the checkout, not an install)."""
    return [sys.executable, "-m", "orchestrator.cli", *args]


def run_cli(*args: str, cwd: str | os.PathLike, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(*args), cwd=cwd, env=cli_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole session (ray.init costs ~5 s here), on 127.0.0.2."""
    _quiet()
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", _node_ip_address="127.0.0.2", include_dashboard=False, num_cpus=2, log_to_driver=False,
                 configure_logging=True, logging_level="WARNING")
        started = True
    yield ray
    if started:
        ray.shutdown()


def mlflow_runs(db: str | os.PathLike, experiment: str) -> list:
    """All runs of `experiment` in the sqlite store `db` (empty when the experiment does not exist)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(db).resolve()}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], max_results=1000))
