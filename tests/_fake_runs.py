"""Fake Tune trials replaying a real trial's results into the MLflow callback, without Ray.

The session fixture ``tiny_run`` (tests/conftest.py) provides the real results and checkpoint;
``replay`` hands them to an ``MLflowCallback`` the way Tune would, ``make_sweep`` records a
three-trial sweep, ``runs_of`` reads a sweep's runs back and ``fake_trial_run`` records a lone
trial run with a checkpoint (what ``export`` reads)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

from orchestrator.tracking import MLflowCallback, make_client, search_all

# The two-objective study (val/natural, val/worst) the fake sweeps record, and its YAML.
SPEC = {"name": "unit", "search": {"metric": ["val/natural", "val/worst"], "mode": ["max", "max"]}}
SPEC_TEXT = "name: unit\nsearch:\n  metric: [val/natural, val/worst]\n"
# A study sweeping lr on a grid: its trial runs are named plain-lr<value>.
LR_GRID_SPEC = {"name": "unit-tie", "space": {"lr": {"kind": "grid", "values": [0.01, 0.02, 0.03]}},
                "search": {"metric": "val/worst", "mode": "max"}}


class FakeCheckpoint:
    """The attributes of a Ray Checkpoint that the callback reads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.filesystem = None


class FakeTrial:
    """The attributes of ray.tune.experiment.Trial that the callback reads."""

    def __init__(self, trial_id: str, config: dict, checkpoint: str | None = None, error_file: str | None = None):
        self.trial_id = trial_id
        self.trial_name = f"L2LDATrainable_{trial_id}"
        self.config = config
        self.checkpoint = FakeCheckpoint(checkpoint) if checkpoint else None
        self.error_file = error_file
        self.status = "RUNNING"
        self.placement_group_factory = None
        self.num_failures = 0

    def __str__(self) -> str:
        return self.trial_name


def ray_result(step: int, res: dict, trial_id: str, config: dict) -> dict:
    """What Ray adds to a Trainable's step() result."""
    out = copy.deepcopy(res)
    out.update({"training_iteration": step, "trial_id": trial_id, "hostname": "node-a", "node_ip": "127.0.0.2",
                "pid": 1234, "time_this_iter_s": 0.1, "time_total_s": 0.1 * step, "timestamp": int(time.time()),
                "date": "today", "config": config, "done": bool(res.get("done", False))})
    return out


def replay(cb: MLflowCallback, trial: FakeTrial, results: list[dict], steps: range | None = None,
           complete: bool = True) -> None:
    """Hand `results` (steps `steps`, default all) to `cb` as Tune would for `trial`; with `complete`,
    its checkpoint and its end too."""
    cb.on_trial_start(iteration=0, trials=[trial], trial=trial)
    steps = steps or range(1, len(results) + 1)
    for s in steps:
        cb.on_trial_result(iteration=s, trials=[trial], trial=trial,
                           result=ray_result(s, results[s - 1], trial.trial_id, trial.config))
    if complete:
        if trial.checkpoint:
            cb.on_checkpoint(iteration=0, trials=[trial], trial=trial, checkpoint=trial.checkpoint)
        trial.status = "TERMINATED"
        cb.on_trial_complete(iteration=0, trials=[trial], trial=trial)


def make_sweep(uri: str, experiment: str, tiny_run, tmp_path: Path, sweep_name: str = "sweep-1") -> list[FakeTrial]:
    """A sweep of three trials: two finish (the second with shifted metrics), one fails."""
    config, results, ckpt = tiny_run
    cb = MLflowCallback(uri, experiment, SPEC, SPEC_TEXT, sweep_name, storage_path=str(tmp_path / "ray"),
                        flush_interval=0.0, retry_delays=())
    cb.setup(total_num_samples=3)
    a = FakeTrial("a0001", dict(config, lr=0.01), checkpoint=ckpt)
    b = FakeTrial("b0002", dict(config, lr=0.05), checkpoint=ckpt)
    worse = copy.deepcopy(results)
    for r in worse:  # trial b: lower validation numbers, so export must choose a
        for k in list(r):
            if k.startswith("val/"):
                r[k] = r[k] - 0.05
    err = tmp_path / "error.txt"
    err.write_text("Failure # 1 (occurred at 2026-11-24)\nray::L2LDATrainable.train()\n  File \"x.py\", line 1\n"
                   "trainable.errors.DivergenceError: train/loss became nan by iteration 20\n")
    c = FakeTrial("c0003", dict(config, lr=9.0), error_file=str(err))
    replay(cb, a, results)
    replay(cb, b, worse)
    replay(cb, c, results[:2], complete=False)
    c.status = "ERROR"
    cb.on_trial_error(iteration=0, trials=[a, b, c], trial=c)
    cb.on_experiment_end(trials=[a, b, c])
    return [a, b, c]


def runs_of(uri: str, experiment: str):
    """(client, parent runs, {trial_id: trial run}) of `experiment` in store `uri`."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = search_all(client, [exp.experiment_id], "")
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = {r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("role") == "trial"}
    return client, parents, children


def fake_trial_run(uri: str, experiment: str, ckpt: str, status: str = "FINISHED") -> str:
    """A trial run of `experiment` in store `uri` with checkpoint `ckpt` and one val/worst, ended `status`
    (created without a sweep: the experiment too when it is missing). Returns its run id."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    eid = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(eid, tags={"role": "trial", "trial_id": "t1", "checkpoint_path": ckpt})
    client.log_metric(run.info.run_id, "val/worst", 0.5, step=1)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id
