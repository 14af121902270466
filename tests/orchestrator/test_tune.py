"""Ray Tune side: the trainable restores bit for bit, sweeps run through Tune and land in MLflow,
every shipped study runs (with reduced budgets), the smoke study end to end through the CLI,
and an interrupted sweep finishes with --resume without duplicates."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from _ray_fixtures import cli_cmd, cli_env, mlflow_runs, run_cli
from _specs import RESUME_SPECS
from orchestrator.sweep import run as runner
from orchestrator.spec.load import load_spec, shipped_studies
from orchestrator.spec.study import build_study

TINY = dict(dataset="mnist5k", batch_size=10, warmup=2, iterations=4, steps_per_report=2, gen_width=4, T=2,
            val_subset=10, gen_attack_steps=2, gen_attack_samples=1, square_queries=10)


def _tiny_trainable_config(tmp_path: Path, **kw) -> dict:
    return {**TINY, "defense": "l2lda", "eval_columns": ["natural", "fgsm"], "test_subset": 10,
            "cache_dir": str(tmp_path / "cache"), **kw}


# ------------------------------------------------------------------- trainable
def test_trainable_checkpoint_restores_bit_for_bit(tmp_path, monkeypatch):
    """save_checkpoint → load_checkpoint in a new trainable continues exactly (CPU)."""
    import ray.tune.trainable.trainable as ray_trainable

    from trainable.trainable import L2LDATrainable

    monkeypatch.setattr(ray_trainable, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))
    cfg = _tiny_trainable_config(tmp_path, iterations=6)
    a = L2LDATrainable(config=cfg)
    first = a.train()
    assert first["iteration"] == 2 and not first.get("done")
    assert {"train/loss", "val/natural", "val/pgd10", "val/worst", "time/iter_s", "hostname", "node_ip"} <= set(first)
    ck = tmp_path / "ck"
    ck.mkdir()
    assert a.save_checkpoint(str(ck)) is None
    assert {p.name for p in ck.iterdir()} >= {"config.json", "meta.json"}
    rest_a = [a.train() for _ in range(3)]
    b = L2LDATrainable(config=cfg)
    b.load_checkpoint(str(ck))
    rest_b = [b.train() for _ in range(3)]
    for ra, rb in zip(rest_a, rest_b):
        assert ra["iteration"] == rb["iteration"]
        for k in ra:
            if k.startswith(("train/", "val/", "matrix/")) and k != "train/lr":
                assert ra[k] == rb[k], k
    last = rest_b[-1]
    assert last["done"] is True and last["iteration"] == 8
    assert "matrix" in last and set(last["matrix"]["correct"]) == {"natural", "fgsm"}
    assert last["matrix/natural"] == rest_a[-1]["matrix/natural"]
    a.stop()
    b.stop()


def test_trainable_threads_follow_the_cpu_share(tmp_path, monkeypatch):
    import ray.tune.trainable.trainable as ray_trainable

    from trainable.trainable import L2LDATrainable, trial_resources_share

    assert trial_resources_share({"CPU": 2, "GPU": 0.25}) == (2.0, 0.25)
    monkeypatch.setattr(ray_trainable, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))
    t = L2LDATrainable(config=_tiny_trainable_config(tmp_path, defense="plain", threads=1))
    assert t.experiment.threads == 1 and t.cfg.threads == 1
    # relative paths resolve against the worker's starting directory, not the trial directory
    assert os.path.isabs(t.cfg.cache_dir) and os.path.isabs(t.cfg.data_root)
    t.stop()


# ---------------------------------------------------------------- Tune sweeps
def _reduce(study_name: str, tmp: Path) -> dict:
    """A shipped study with tiny budgets: one value per grid, one sample, mnist5k, CPU."""
    s = load_spec(study_name)
    raw = copy.deepcopy(s.raw)
    base = raw.setdefault("base", {})
    for k in ("model", "download", "data_root", "channels_last"):
        base.pop(k, None)
    space = raw.setdefault("space", {})
    for k, v in {**TINY, "cache_dir": str(tmp / "cache"), "device": "cpu", "transfer_iterations": 2,
                 "val_subset": 10}.items():
        if k not in space:
            base[k] = v
    for k, v in list(space.items()):
        if isinstance(v, dict) and "grid" in v:
            space[k] = {"grid": v["grid"][:1]}
    search = raw.setdefault("search", {})
    search["num_samples"] = 1
    search.pop("max_concurrent", None)
    if search.get("storage"):
        search["storage"] = f"sqlite:///{tmp / 'optuna.db'}"
    raw["resources"] = {"cpu": 1, "gpu": 0}
    ev = raw.setdefault("evaluation", {})
    ev["test_subset"] = 10
    if raw.get("scheduler", {}).get("type") == "asha":
        raw["scheduler"] = {"type": "asha", "grace_period": 1}
    return raw


@pytest.mark.slow
@pytest.mark.parametrize("name", shipped_studies())
def test_every_shipped_study_runs_one_iteration(name, tmp_path, ray_session):
    raw = _reduce(name, tmp_path)
    study = build_study(raw, text=load_spec(name).text, source=name)
    db = tmp_path / "mlflow.db"
    results = runner.run_study(study, name=f"{name}-reduced", storage=str(tmp_path / "runs"),
                                    tracking_uri=f"sqlite:///{db}", reporter=False)
    assert len(results) == study.trial_count() == 1
    for r in results:
        assert r.error is None, r.error
        assert r.metrics.get("done") is True
        assert "matrix/worst" in r.metrics and r.checkpoint is not None
        for col in study.base["eval_columns"]:
            if col != "transfer":
                assert f"matrix/{col}" in r.metrics, col
    runs = mlflow_runs(db, study.name)
    assert sorted(r.data.tags.get("role") for r in runs) == ["sweep", "trial"]


@pytest.mark.slow
def test_optuna_sweep_with_conditions_and_rdb_storage(tmp_path, ray_session):
    """Optuna TPE over a conditional space, 3 trials 2 at a time; the Optuna study lands in sqlite."""
    import optuna

    raw = {
        "name": "tiny-optuna",
        "base": {**{k: v for k, v in TINY.items() if k != "T"}, "defense": "l2lda", "cache_dir": str(tmp_path / "cache")},
        "space": {"diversity": {"choice": [True, False]},
                  "lam": {"loguniform": [1e-3, 1.0], "when": {"diversity": True}},
                  "T": {"int": [1, 3]}},
        "search": {"type": "optuna", "metric": "val/worst", "mode": "max", "num_samples": 3, "max_concurrent": 2,
                   "seed": 0, "storage": f"sqlite:///{tmp_path / 'optuna.db'}"},
        "scheduler": {"type": "asha", "grace_period": 1},
        "resources": {"cpu": 1},
        "evaluation": {"columns": ["natural", "fgsm"], "test_subset": 10},
    }
    study = build_study(raw)
    db = tmp_path / "mlflow.db"
    results = runner.run_study(study, name="opt", storage=str(tmp_path / "runs"),
                                    tracking_uri=f"sqlite:///{db}", reporter=False)
    assert len(results) == 3 and all(r.error is None for r in results)
    for r in results:
        c = r.config
        assert 1 <= c["T"] <= 3
        assert (c["lam"] is None) == (not c["diversity"])
    ostudy = optuna.load_study(study_name="tiny-optuna", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(ostudy.trials) == 3
    runs = mlflow_runs(db, "tiny-optuna")
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(children) == 3 and all(r.data.tags.get("node_ip") == "127.0.0.2" for r in children)


# ---------------------------------------------------------------- smoke via CLI
MATRIX_COLUMNS = ["natural", "fgsm", "pgd10", "pgd100", "cw100", "cw1000", "l2lda", "advgan", "gap",
                  "apgd_ce", "apgd_t", "square", "autoattack"]


@pytest.mark.slow
def test_smoke_study_end_to_end_through_the_cli(tmp_path):
    """`l2lda-tune --space smoke` as a user runs it: its own local Ray, sqlite MLflow in the cwd."""
    t0 = time.perf_counter()
    p = run_cli("--space", "smoke", "--storage", str(tmp_path / "runs"), cwd=tmp_path, timeout=1500)
    wall = time.perf_counter() - t0
    print(f"smoke study wall time: {wall:.0f} s")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "best trial:" in p.stdout and "checkpoint:" in p.stdout
    runs = mlflow_runs(tmp_path / "mlflow.db", "smoke")
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"spec.yaml", "sweep_table.parquet",
                                                                             "pareto.png"}
    defenses = set()
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags.get("status") == "FINISHED"
        assert r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
        defenses.add(r.data.params["defense"])
        for col in MATRIX_COLUMNS:
            assert f"matrix/{col}" in r.data.metrics, col
        assert {"matrix/min", "matrix/worst", "val/worst", "train/loss"} <= set(r.data.metrics)
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"robustness_matrix.json", "robustness_matrix.parquet", "robustness_heatmap.png",
                "loss_curves.png"} <= arts, arts
        assert r.data.tags.get("node_ip") == "127.0.0.2" and r.data.tags.get("checkpoint_path")
        assert Path(r.data.tags["checkpoint_path"]).is_dir()
    assert defenses == {"l2lda", "pgd10_at"}


# ---------------------------------------------------------------------- resume
def _trial_children(db: Path) -> list:
    try:
        return [r for r in mlflow_runs(db, "resumable") if r.data.tags.get("role") == "trial"]
    except Exception:  # the store is being created by the driver
        return []


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RESUME_SPECS))
def test_interrupted_sweep_finishes_with_resume(kind, tmp_path):
    spec = tmp_path / "resumable.yaml"
    spec.write_text(RESUME_SPECS[kind].replace("CACHE", str(tmp_path / "cache")))
    db = tmp_path / "mlflow.db"
    args = ["--space", str(spec), "--name", "sw", "--storage", str(tmp_path / "runs")]
    driver = subprocess.Popen(cli_cmd(*args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None:
            if any(r.data.tags.get("status") == "FINISHED" for r in _trial_children(db)):
                break
            time.sleep(1)
        assert driver.poll() is None, "the sweep ended before it could be interrupted:\n" + driver.stdout.read()[-3000:]
        time.sleep(4)  # the second trial is training now
        driver.send_signal(signal.SIGINT)
        try:
            first_out, _ = driver.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            driver.kill()
            first_out, _ = driver.communicate()
    finally:
        if driver.poll() is None:
            driver.kill()
    before = _trial_children(db)
    finished_before = [r for r in before if r.data.tags.get("status") == "FINISHED"]
    assert len(finished_before) == 1, first_out[-3000:]
    first_id = finished_before[0].data.tags["trial_id"]

    p = run_cli(*args, "--resume", cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    children = _trial_children(db)
    assert len(children) == 2, [r.data.tags for r in children]
    assert len({r.data.tags["trial_id"] for r in children}) == 2
    assert all(r.data.tags.get("status") == "FINISHED" for r in children)
    assert len([r for r in mlflow_runs(db, "resumable") if r.data.tags.get("role") == "sweep"]) == 1
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    for r in children:
        hist = client.get_metric_history(r.info.run_id, "iteration")
        steps = [m.step for m in hist]
        assert len(steps) == len(set(steps)) == 10, steps  # one history, each report once
        assert max(m.value for m in hist) == 600
    # the trial that had finished was not run again: its Tune result log has each report once
    trial_dirs = [d for d in (tmp_path / "runs" / "sw").iterdir() if d.is_dir()]
    assert len(trial_dirs) == 2, trial_dirs
    first_dir = [d for d in trial_dirs if f"_{first_id}_" in d.name]
    assert len(first_dir) == 1
    lines = (first_dir[0] / "result.json").read_text().strip().splitlines()
    assert len(lines) == 10 and json.loads(lines[-1])["done"] is True
