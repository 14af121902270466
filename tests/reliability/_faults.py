"""Helpers of the reliability tests (issue 6): the session's Ray instance and CLI helpers come
from ``tests/_ray_fixtures.py``; here only what the fault injections add — a tiny study written
to YAML, reading a trial's Tune result log, waiting, stopping a process group, MLflow histories.
(A plain module, not conftest.py: two conftest modules would share the name `conftest`.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from _ray_fixtures import mlflow_runs

# The smallest useful trial: plain LeNet-5 on mnist5k, batch 16, a 16-point test subset and
# the cheap matrix columns; seconds per trial on one core.
TINY_BASE = dict(dataset="mnist5k", defense="plain", batch_size=16, warmup=0, iterations=8, steps_per_report=2,
                 val_subset=16, val_columns=["natural"], threads=1)
TINY_EVAL = {"columns": ["natural", "fgsm", "pgd10"], "test_subset": 16}


def tiny_spec(tmp: Path, name: str, space: dict, *, base: dict | None = None, search: dict | None = None,
              resources: dict | None = None, failure: int = 0, checkpoint: dict | None = None) -> dict:
    """A study dict on TINY_BASE (its own warm-up cache under `tmp`)."""
    return {
        "name": name,
        "base": {**TINY_BASE, "cache_dir": str(tmp / "cache"), **(base or {})},
        "space": space,
        "search": {"type": "grid", "metric": "val/natural", "mode": "max", **(search or {})},
        "resources": resources or {"cpu": 1},
        "failure": {"max_failures": failure},
        "checkpoint": checkpoint or {"every": 1, "keep": 2},
        "evaluation": dict(TINY_EVAL),
    }


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trial_results(sweep_dir: Path) -> dict[str, list[dict]]:
    """Tune's result log of every trial directory under `sweep_dir`: {trial dir name: [results]}
    (a line still being written is skipped)."""
    out: dict[str, list[dict]] = {}
    for f in sorted(Path(sweep_dir).glob("*/result.json")):
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        out[f.parent.name] = rows
    return out


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.3,
             alive: subprocess.Popen | None = None) -> Any:
    """Poll `cond` until it returns something truthy; fail naming `what` on timeout (or when
    the process `alive` ended first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process ended (rc {alive.returncode}) while waiting for {what}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a process group this test started (start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def children_of(db: Path, experiment: str) -> list:
    """The trial (child) runs of `experiment` ([] while the store is being created)."""
    try:
        return [r for r in mlflow_runs(db, experiment) if r.data.tags.get("role") == "trial"]
    except Exception:
        return []


def steps_of(db: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(f"sqlite:///{Path(db).resolve()}").get_metric_history(run_id, key)]
