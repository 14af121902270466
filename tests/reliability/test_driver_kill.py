"""Driver interrupted (issue 6 §2), the real-signal version of tests/orchestrator/test_tune.py's resume test:
`l2lda-tune` (its own process group, its own local Ray) gets SIGINT mid-sweep and, one second
later — before a graceful shutdown can finish — SIGKILL. `l2lda-tune --resume` then finishes
the Optuna study: the trial that had finished keeps its record and is not rerun, the searcher
proposes no extra trial, MLflow holds one child run per trial and the sweep table counts each once.
"""
from __future__ import annotations

import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from _ray_fixtures import cli_cmd, cli_env, mlflow_runs, run_cli
from _specs import RESUME_SPECS  # the resumable Optuna study (2 trials, one at a time, 10 reports each)
from _faults import children_of, kill_group, steps_of, trial_results, wait_for

pytestmark = pytest.mark.slow


def test_sigint_then_sigkill_then_resume(tmp_path):
    spec = tmp_path / "resumable.yaml"
    spec.write_text(RESUME_SPECS["optuna"].replace("CACHE", str(tmp_path / "cache")))
    db, sweep = tmp_path / "mlflow.db", tmp_path / "runs" / "sw"
    args = ["--space", str(spec), "--name", "sw", "--storage", str(tmp_path / "runs")]
    driver = subprocess.Popen(cli_cmd(*args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: any(r.data.tags.get("status") == "FINISHED" for r in children_of(db, "resumable")),
                 600, "the first trial to finish", every=1.0, alive=driver)
        # the second trial is training and has reported twice
        wait_for(lambda: len(trial_results(sweep)) == 2 and min(map(len, trial_results(sweep).values())) >= 2,
                 300, "two reports of the second trial", alive=driver)
        driver.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert driver.poll() is None, "the driver ended on SIGINT within a second; SIGKILL would test nothing"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        assert driver.returncode == -signal.SIGKILL
    finally:
        kill_group(driver)  # the driver's local Ray (fate-shared with it) and anything else left
    before = children_of(db, "resumable")
    finished = [r for r in before if r.data.tags.get("status") == "FINISHED"]
    assert len(before) == 2 and len(finished) == 1, [r.data.tags for r in before]
    first = finished[0]
    first_reports = len(trial_results(sweep)[next(d for d in trial_results(sweep) if first.data.tags["trial_id"] in d)])
    interrupted = [r for r in before if r is not first][0]
    n_before = len(steps_of(db, interrupted.info.run_id, "iteration"))
    print(f"driver kill: before resume 2 trial runs (1 FINISHED, 1 {interrupted.info.status}), "
          f"{n_before} reports of the interrupted trial")

    p = run_cli(*args, "--resume", cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = mlflow_runs(db, "resumable")
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and len({r.data.tags["trial_id"] for r in children}) == 2  # no third Optuna trial
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.info.run_id for r in children} == {r.info.run_id for r in before}  # runs reused, not recreated
    for r in children:
        hist = steps_of(db, r.info.run_id, "iteration")
        assert [s for s, _ in hist] == list(range(1, 11)), hist  # one history, each report once
        assert hist[-1][1] == 600
    # the finished trial was not run again: its Tune log is unchanged, its params (Optuna's proposal) kept
    logs = trial_results(sweep)
    assert len(logs) == 2
    first_log = logs[next(d for d in logs if first.data.tags["trial_id"] in d)]
    assert len(first_log) == first_reports == 10 and first_log[-1]["done"] is True
    again = next(r for r in children if r.info.run_id == first.info.run_id)
    assert again.data.params == first.data.params and again.data.metrics == first.data.metrics
    # the sweep table counts each trial once
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    table = pq.read_table(client.download_artifacts(parents[0].info.run_id, "sweep_table.parquet",
                                                    str(tmp_path / "dl"))).to_pylist()
    assert sorted(row["trial_id"] for row in table) == sorted(r.data.tags["trial_id"] for r in children)
    assert all(row["status"] == "FINISHED" for row in table)
    print(f"driver kill: after resume 1 parent, 2 trial runs FINISHED, 10 reports each; sweep table "
          f"{len(table)} rows")
