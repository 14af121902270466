"""A real (tiny) sweep in the default suite: Ray Tune → MLflow → export → load → report.

The smoke study end to end through the CLI is `slow` (minutes); this is the same path with
budgets of a few iterations, so every CI run exercises the orchestrator for real.
"""
from __future__ import annotations

import json

import pytest
import torch

from _ray_fixtures import mlflow_runs
from orchestrator.sweep import run as runner
from orchestrator.spec.study import build_study


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
    results = runner.run_study(study, name="fast-1", storage=str(tmp / "runs"), tracking_uri=uri, reporter=False)
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
    from orchestrator.report.build import report_command

    tmp, db, uri, results = sweep
    report_command("fast", str(tmp / "report"), uri)
    md = (tmp / "report" / "report.md").read_text()
    assert "plain" in md and "fgsm_at" in md and "pgd10" in md


def _serve_ui(uri: str, cwd) -> tuple:
    """`mlflow ui` on 127.0.0.1 with a free port against the sweep's store; (process, base URL)."""
    import subprocess
    import sys
    import time
    import urllib.request

    from _ray_fixtures import cli_env, free_port

    port = free_port("127.0.0.1")
    log = open(cwd / "mlflow-ui.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=cwd, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow ui exited ({proc.returncode}): {(cwd / 'mlflow-ui.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(1.0)
    proc.kill()
    raise AssertionError("mlflow ui did not answer /health within 240 s")


def test_mlflow_ui_shows_named_runs_params_and_matrix(sweep, tmp_path):
    """The sweep's store in a real `mlflow ui`, loaded in headless Chromium: the experiment
    opens as training runs with the runs named after what ran, the swept parameter and
    `matrix/worst` as columns, and a child run's page lists its params and matrix."""
    import os
    import shutil
    import signal
    from pathlib import Path

    from _browser import Browser, find_chromium

    binary, why = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {why}")
        pytest.skip(why)
    tmp, db, uri, results = sweep
    runs = mlflow_runs(db, "fast")
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    names = sorted(c.info.run_name for c in children)
    assert names == ["fgsm_at", "plain"]  # the defense is what this study sweeps
    exp_id = children[0].info.experiment_id
    child = next(c for c in children if c.info.run_name == "fgsm_at")
    proc, base = _serve_ui(uri, tmp_path)
    browser = Browser(binary, tmp_path / "chromium", width=2200, height=1100)
    stable = Path(__file__).resolve().parents[1] / ".test-artifacts" / "mlflow-ui"
    try:
        browser.navigate(f"{base}/#/experiments/{exp_id}/runs")
        browser.wait_for_text("Training runs", "fast-1")  # the training-runs view, with the sweep's parent run
        assert browser.click_css("[role=row] button[data-component-id*='runnamecellrenderer']") >= 1  # expand it
        browser.wait_for_text(*names, "mnist5k")  # the child runs, their Dataset column filled
        for column in ("defense", "matrix/worst", "matrix/natural"):  # as a user adds columns
            assert browser.click_text("Columns")
            browser.wait_for_text("Metrics (")
            assert browser.type_into("input[placeholder='Search columns']", column)
            browser.wait_for_text(column)
            assert browser.click_text(column), column
            browser.click_text("Columns")
        text = browser.wait_for_text("matrix/worst", "matrix/natural", "defense", *names)
        assert text.count("fgsm_at") >= 2  # its run name and its `defense` cell
        shot = browser.screenshot(tmp_path / "mlflow-runs.png")
        browser.navigate(f"{base}/#/experiments/{exp_id}/runs/{child.info.run_id}")
        text = browser.wait_for_text("fgsm_at", "matrix/worst", "Parameters (", "eps_step", "lam", "clf_grad_clip",
                                     "Logged models (1)", "Datasets", "mnist5k")
        assert f"matrix/worst\n{child.data.metrics['matrix/worst']:g}" in text
        shot_run = browser.screenshot(tmp_path / "mlflow-run.png")
    finally:
        browser.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
    stable.mkdir(parents=True, exist_ok=True)
    for p in (shot, shot_run):
        shutil.copyfile(p, stable / p.name)
    print(f"MLflow UI screenshots: {stable / shot.name}, {stable / shot_run.name}")
