"""A real (tiny) sweep in the default suite: Ray Tune → MLflow → export → load → report.

The smoke study end to end through the CLI is `slow` (minutes); this is the same path with
budgets of a few iterations, so every CI run exercises the orchestrator for real.
"""
from __future__ import annotations

import json

import pytest
import torch

from _ray_fixtures import mlflow_runs, ray_session  # noqa: F401  (fixture)
from orchestrator import tune_runner
from orchestrator.spec import build_study


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ray_session):  # noqa: F811
    tmp = tmp_path_factory.mktemp("sweep")
    raw = {
        "name": "fast",
        "base": {"dataset": "mnist5k", "batch_size": 20, "warmup": 4, "iterations": 8, "steps_per_report": 4,
                 "val_subset": 20, "cache_dir": str(tmp / "cache"), "gen_width": 4, "T": 2},
        "space": {"defense": {"grid": ["plain", "fgsm_at"]}},
        "search": {"type": "grid", "metric": "val/worst", "mode": "max", "max_concurrent": 2},
        "resources": {"cpu": 1},
        "checkpoint": {"every": 1, "keep": 1},
        "evaluation": {"columns": ["natural", "fgsm", "pgd10"], "test_subset": 40},
    }
    study = build_study(raw)
    db = tmp / "mlflow.db"
    uri = f"sqlite:///{db}"
    from trainable.trainable import progress_board

    _BOARD.append(progress_board(create=True))  # the driver creates it too; held here to read it after
    results = tune_runner.run_study(study, name="fast-1", storage=str(tmp / "runs"), tracking_uri=uri, reporter=False)
    return tmp, db, uri, results


_BOARD: list = []


def test_trials_post_their_matrix_progress_to_the_driver(sweep):
    import ray

    results = sweep[3]
    ids = [r.metrics["trial_id"] for r in results]
    records = ray.get(_BOARD[0].get.remote(ids))
    assert set(records) == set(ids)
    assert all(rec["finished"] and rec["count"] == 3 for rec in records.values())


def test_sweep_records_one_parent_and_a_child_per_trial(sweep):
    tmp, db, uri, results = sweep
    assert len(results) == 2 and all(r.error is None for r in results)
    runs = mlflow_runs(db, "fast")
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.params["defense"] for c in children} == {"plain", "fgsm_at"}
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"matrix/natural", "matrix/fgsm", "matrix/pgd10", "matrix/min", "matrix/worst",
                "val/natural", "val/worst", "train/loss"} <= set(c.data.metrics)
        worst = c.data.metrics["matrix/worst"]
        assert worst <= min(c.data.metrics[f"matrix/{k}"] for k in ("natural", "fgsm", "pgd10"))


def test_export_of_the_best_trial_loads_back(sweep):
    from orchestrator.export import export_command
    from trainable.data import load_dataset
    from trainable.weights.export_dir import load_export

    tmp, db, uri, results = sweep
    out = tmp / "best"
    export_command("fast", str(out), tracking_uri=uri, log=lambda m: None)
    model = load_export(out)
    matrix = json.loads((out / "robustness_matrix.json").read_text())
    d = load_dataset("mnist5k")
    idx = torch.as_tensor(matrix["indices"] if "indices" in matrix else matrix["profile"]["test_indices"])
    with torch.no_grad():
        acc = float((model(d.test_x[idx]).argmax(1) == d.test_y[idx]).float().mean())
    assert acc == pytest.approx(matrix["metrics"]["matrix/natural"])


def test_report_writes_the_tables(sweep):
    from orchestrator.report import report_command

    tmp, db, uri, results = sweep
    report_command("fast", str(tmp / "report"), uri)
    md = (tmp / "report" / "report.md").read_text()
    assert "plain" in md and "fgsm_at" in md and "pgd10" in md
