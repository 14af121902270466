"""A sweep started by the commit before the orchestrator's packages (be3b295) resumes with today's
code, through the product's own path (`l2lda-tune --resume`; docs/architecture.md, resume).

The fixture (tests/fixtures/sweep_be3b295/, its README says how it was made) holds two sweeps
stopped part-way by SIGINT, each with one trial finished and one checkpointed mid-way:
``random`` (four trials), whose variant generator still holds two trials to create, their
conditional parameters as Ray's placeholders for the space's ``sample_from`` bodies (resolved on
resume with the study's space built again), and ``optuna`` (two), whose searcher state pickles
``orchestrator.tune_runner.DefineByRun`` and ``orchestrator.spec.Param``; both pickle
``orchestrator.tracking.MLflowCallback`` and ``orchestrator.progress.MatrixCLIReporter`` in
``tuner.pkl``.

Relocation: Ray's state is restored from wherever the sweep folder is now (Tuner.restore takes
the path), the callback's tracking URI is the relative ``sqlite:///mlflow.db`` (resolved in the
working directory), and the trials' absolute ``data_root``/``cache_dir`` are never read by these
trials (bundled mnist5k, the `plain` defense shares no warm-up). Two absolute paths would be
written to, and the test rewrites both in its copy: the MLflow experiment's artifact location
(and its runs' artifact URIs), a ``file://`` URI of the folder the fixture was made in; and the
storage path of the trials a random search has yet to create — Ray moves the trials it restores
to where the sweep is now, but the variant generator's pickled state (``basic-variant-state``)
keeps the StorageContext of the sweep's first start, so the test points it at the copy as Ray
does for restored trials. A sweep resumed where it was started needs neither.
The database is stored gzipped (MLflow's empty schema alone is most of a megabyte).
"""
from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from _ray_fixtures import mlflow_runs, run_cli
from orchestrator.spec.load import load_spec

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "sweep_be3b295"


def _relocate_mlflow(work: Path) -> Path:
    """Unpack the MLflow database and point the experiment's and its runs' artifact locations at the
    copy; returns the folder the fixture was made in."""
    with gzip.open(work / "mlflow.db.gz", "rb") as src, open(work / "mlflow.db", "wb") as out:
        shutil.copyfileobj(src, out)
    (work / "mlflow.db.gz").unlink()
    db = sqlite3.connect(work / "mlflow.db")
    try:
        (old,) = db.execute("SELECT artifact_location FROM experiments WHERE name = 'resumable'").fetchone()
        old_root = old[: old.index("/mlruns/")]
        new_root = work.as_uri()
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old_root, new_root))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old_root, new_root))
        db.commit()
    finally:
        db.close()
    return Path(old_root.removeprefix("file://"))


def _relocate_variant_generator(sweep: Path) -> None:
    """Point the trials a random search has yet to create at the copy (see the module's docstring)."""
    from ray import cloudpickle  # what Ray writes it with (it holds an argparse parser's local function)

    for f in sweep.glob("basic-variant-state-*.json"):  # a pickle, despite its name
        state = cloudpickle.loads(f.read_bytes())
        for it in state["_iterators"]:
            it.unresolved_spec["storage"].storage_fs_path = sweep.parent.as_posix()
        f.write_bytes(cloudpickle.dumps(state))


# random: an interrupted trial and two new ones to run, 40 to 90 s on 2 loaded cores; optuna: one, about 25 s
@pytest.mark.parametrize("kind", [pytest.param("random", marks=pytest.mark.slow), "optuna"])
def test_a_sweep_started_before_the_split_resumes_and_completes(kind, tmp_path):
    work = tmp_path / kind
    shutil.copytree(FIXTURE / kind, work)
    old_root = _relocate_mlflow(work)
    study = load_spec(work / "spec.yaml")
    n_trials, reports = study.trial_count(), study.reports_per_trial()
    iterations = int(study.base["iterations"])
    sweep = work / "runs" / "sw"
    _relocate_variant_generator(sweep)
    trials = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(trials) == 2 and n_trials >= 2
    finished_before = [t for t in trials if json.loads((t / "result.json").read_text().splitlines()[-1]).get("done")]
    assert len(finished_before) == 1, "the fixture holds one finished and one interrupted trial"
    children = [r for r in mlflow_runs(work / "mlflow.db", "resumable") if r.data.tags.get("role") == "trial"]
    assert sorted(r.data.tags["status"] for r in children) == ["FINISHED", "INTERRUPTED"]
    runs_before = {r.data.tags["trial_id"]: r.info.run_id for r in children}
    before_lines = (finished_before[0] / "result.json").read_text()
    old_existed = old_root.exists()

    p = run_cli("--space", "spec.yaml", "--name", "sw", "--storage", "runs", "--resume", cwd=work, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resuming sweep sw" in p.stdout

    # Ray: every trial of the study, each with every report once; the two from before kept their
    # folders and the finished one was not run again.
    after = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(after) == n_trials and set(trials) <= set(after)
    for t in after:
        results = [json.loads(line) for line in (t / "result.json").read_text().splitlines()]
        assert [r["training_iteration"] for r in results] == list(range(1, reports + 1)), t.name
        assert results[-1]["done"] is True and results[-1]["iteration"] == iterations
        assert {"matrix/natural", "matrix/fgsm", "val/natural"} <= set(results[-1])
    assert (finished_before[0] / "result.json").read_text() == before_lines
    # MLflow: one parent run; the two trial runs from before reused (not duplicated); all FINISHED,
    # each with one history.
    from mlflow import MlflowClient

    runs = mlflow_runs(work / "mlflow.db", "resumable")
    assert len([r for r in runs if r.data.tags.get("role") == "sweep"]) == 1
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(children) == n_trials and len({r.data.tags["trial_id"] for r in children}) == n_trials
    assert all(r.data.tags.get("status") == "FINISHED" for r in children), [r.data.tags for r in children]
    assert {r.data.tags["trial_id"]: r.info.run_id for r in children}.items() >= runs_before.items()
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "iteration")]
        assert sorted(steps) == list(range(1, reports + 1)), steps
        assert "matrix/worst" in r.data.metrics
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert parent.data.tags.get("status") == "FINISHED"
    assert parent.data.tags.get("trials.finished") == str(n_trials)
    # nothing was written where the fixture was made
    assert old_root.exists() == old_existed
