"""A one-trial study with the example plug-in's defense and attack column (tests/plugins/l2lda_tune_toy),
through Ray Tune, MLflow, the masking checks and the report — registered only by entry points."""
from __future__ import annotations

import json

import pytest

from _ray_fixtures import mlflow_runs
from orchestrator.sweep import run as runner
from orchestrator.spec.study import build_study


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, ray_session):  # noqa: F811
    tmp = tmp_path_factory.mktemp("plugin")
    raw = {
        "name": "plugin",
        "base": {"dataset": "mnist5k", "defense": "fgsm_rs_at", "batch_size": 20, "warmup": 4, "iterations": 8,
                 "steps_per_report": 4, "val_subset": 20, "val_columns": ["natural", "rfgsm"],
                 "square_queries": 20, "cache_dir": str(tmp / "cache")},
        "space": {"seed": {"grid": [0]}},
        "search": {"type": "grid", "metric": "val/rfgsm", "mode": "max"},
        "resources": {"cpu": 1},
        "checkpoint": {"every": 1, "keep": 1},
        "evaluation": {"columns": ["natural", "rfgsm", "square"], "test_subset": 40},
    }
    db = tmp / "mlflow.db"
    uri = f"sqlite:///{db}"
    results = runner.run_study(build_study(raw), name="plugin-1", storage=str(tmp / "runs"), tracking_uri=uri,
                                    reporter=False)
    return tmp, db, uri, results


def test_the_plugin_trial_runs_under_ray_and_is_recorded(study_run):
    tmp, db, uri, results = study_run
    assert len(results) == 1 and results[0].error is None
    (child,) = [r for r in mlflow_runs(db, "plugin") if r.data.tags.get("role") == "trial"]
    assert child.info.status == "FINISHED" and child.data.params["defense"] == "fgsm_rs_at"
    m = child.data.metrics
    assert {"val/rfgsm", "matrix/rfgsm", "matrix/square", "check/blackbox_beats_whitebox"} <= set(m)
    assert m["matrix/worst"] <= min(m["matrix/natural"], m["matrix/rfgsm"])


def test_the_masking_checks_read_the_plugin_column(study_run):
    from mlflow import MlflowClient

    tmp, db, uri, results = study_run
    (child,) = [r for r in mlflow_runs(db, "plugin") if r.data.tags.get("role") == "trial"]
    path = MlflowClient(uri).download_artifacts(child.info.run_id, "robustness_matrix.json", str(tmp / "art"))
    checks = json.loads(open(path).read())["checks"]
    assert checks["rfgsm"]["in_ball"] and checks["rfgsm"]["in_range"]
    # rfgsm is the only white-box column: the black-box flag compares Square with it
    assert checks["masking"]["blackbox_beats_whitebox"]["detail"].startswith("rfgsm − square")


def test_the_report_shows_the_plugin_row_and_column(study_run):
    from orchestrator.report.build import report_command

    tmp, db, uri, results = study_run
    report_command("plugin", str(tmp / "report"), uri)
    md = (tmp / "report" / "report.md").read_text()
    table2 = md.split("## Table 2", 1)[1].split("##", 1)[0]
    header = next(line for line in table2.splitlines() if line.startswith("| defense"))
    assert "rfgsm" in header and "square" in header and "fgsm_rs_at" in table2
