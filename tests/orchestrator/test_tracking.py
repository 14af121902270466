"""MLflowCallback against a real sqlite store, driven with fake Tune trials (DESIGN §6).

One tiny real trial (plain LeNet-5 on mnist5k, 30 iterations, 3 reports) provides real
results — train/val metrics and the final robustness matrix with correctness vectors —
and a real checkpoint; the fake trials replay them so the callback sees what Ray would
hand it, without starting Ray.
"""
from __future__ import annotations

import copy
import io
import json
import pickle
import socket
import time
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from _s3 import s3  # noqa: F401  (fixture)
from orchestrator import artifacts as art
from orchestrator.tracking import (MLflowCallback, TrackingUnavailable, check_tracking_uri, failure_reason,
                                   make_client, metric_items, objectives_from_spec, search_all)

SPEC = {"name": "unit", "search": {"metric": ["val/natural", "val/worst"], "mode": ["max", "max"]}}
SPEC_TEXT = "name: unit\nsearch:\n  metric: [val/natural, val/worst]\n"


class FakeCheckpoint:
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


_SESSION: dict = {}  # shared with test_export.py (which imports these fixtures): build once per session


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir):
    """(config, [step results], checkpoint dir) of a real 30-iteration plain LeNet-5 trial."""
    if "tiny_run" not in _SESSION:
        _SESSION["tiny_run"] = _tiny_run(tmp_path_factory, cache_dir)
    return _SESSION["tiny_run"]


def _tiny_run(tmp_path_factory, cache_dir):
    from trainable.experiment.loop import Experiment
    from trainable.training.resources import set_threads
    from trainable.config import TrialConfig

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
    if "store" not in _SESSION:
        d = tmp_path_factory.mktemp("mlflow")
        uri = f"sqlite:///{d}/mlflow.db"
        make_client(uri).search_experiments()  # create the schema once
        _SESSION["store"] = uri
    return _SESSION["store"]


def replay(cb: MLflowCallback, trial: FakeTrial, results: list[dict], steps: range | None = None,
           complete: bool = True) -> None:
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
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = search_all(client, [exp.experiment_id], "")
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = {r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("role") == "trial"}
    return client, parents, children


def test_sweep_records_parent_children_metrics_and_artifacts(store, tiny_run, tmp_path):
    config, results, ckpt = tiny_run
    make_sweep(store, "unit-sweep", tiny_run, tmp_path)
    client, parents, children = runs_of(store, "unit-sweep")
    assert len(parents) == 1 and set(children) == {"a0001", "b0002", "c0003"}
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["status"] == "FINISHED"
    for tag in ("tool_version", "torch_version", "ray_version", "sweep_name", "storage_path", "driver_threads"):
        assert parent.data.tags.get(tag), tag
    assert parent.data.tags["objective.metric"] == "val/natural"
    assert json.loads(parent.data.tags["objectives"]) == [["val/natural", "max"], ["val/worst", "max"]]
    parent_files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "sweep_table.parquet", "pareto.png"} <= parent_files

    a = children["a0001"]
    assert a.info.status == "FINISHED" and a.data.tags["status"] == "FINISHED"
    assert a.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert a.data.tags["checkpoint_path"] == ckpt and a.data.tags["node_ip"] == "127.0.0.2"
    assert a.data.params["lr"] == "0.01" and a.data.params["eval_columns"] == "natural,fgsm"
    hist = client.get_metric_history(a.info.run_id, "val/natural")
    assert [m.step for m in hist] == [1, 2, 3]
    assert [m.value for m in hist] == pytest.approx([r["val/natural"] for r in results])
    assert a.data.metrics["matrix/natural"] == pytest.approx(results[-1]["matrix/natural"])
    for k in ("train/loss", "time/iter_s", "iteration", "check/perturbation"):
        assert k in a.data.metrics, k
    for k in ("pid", "time_total_s", "timestamp", "training_iteration", "done"):
        assert k not in a.data.metrics, k
    files = {f.path for f in client.list_artifacts(a.info.run_id)}
    assert {"robustness_matrix.json", "robustness_matrix.parquet", "robustness_heatmap.png", "loss_curves.png"} <= files

    d = Path(client.download_artifacts(a.info.run_id, "", str(tmp_path / "dl")))
    mj = json.loads((d / "robustness_matrix.json").read_text())
    assert mj["metrics"]["matrix/fgsm"] == pytest.approx(results[-1]["matrix/fgsm"]) and mj["profile"]["columns"]
    table = pq.read_table(d / "robustness_matrix.parquet")
    assert table.column_names == ["index", "natural", "fgsm"] and table.num_rows == 100
    assert str(table.schema.field("fgsm").type) == "bool"
    correct = results[-1]["matrix"]["correct"]
    assert table.column("fgsm").to_pylist() == [bool(v) for v in correct["fgsm"]]
    worst = np.logical_and(table.column("natural").to_numpy(zero_copy_only=False),
                           table.column("fgsm").to_numpy(zero_copy_only=False)).mean()
    assert worst == pytest.approx(results[-1]["matrix/worst"])  # recomputable from the vectors
    assert (d / "robustness_heatmap.png").read_bytes()[:4] == b"\x89PNG"

    c = children["c0003"]
    assert c.info.status == "FAILED" and c.data.tags["status"] == "FAILED"
    assert c.data.tags["failure_reason"] == "DivergenceError: train/loss became nan by iteration 20"
    assert c.data.tags["failure_type"] == "diverged"

    pd = Path(client.download_artifacts(parent.info.run_id, "sweep_table.parquet", str(tmp_path / "pdl")))
    sweep = pq.read_table(pd).to_pylist()
    assert len(sweep) == 3
    by_id = {r["trial_id"]: r for r in sweep}
    assert by_id["a0001"]["matrix/natural"] == pytest.approx(results[-1]["matrix/natural"])
    assert by_id["b0002"]["lr"] == pytest.approx(0.05) and by_id["c0003"]["status"] == "FAILED"
    assert by_id["c0003"]["matrix/natural"] is None


def test_resume_reuses_parent_and_child_runs_with_one_history(store, tiny_run):
    config, results, ckpt = tiny_run
    first = MLflowCallback(store, "unit-resume", SPEC, SPEC_TEXT, "sweep-r", flush_interval=0.0, retry_delays=())
    first.setup()
    t = FakeTrial("r0001", config, checkpoint=ckpt)
    replay(first, t, results, steps=range(1, 3), complete=False)  # driver interrupted after step 2
    first.sync()  # the writer thread has created the runs
    state = first.get_state()
    assert state and state["trial_runs"]["r0001"]
    # Ctrl-C: Tune ends the experiment with the trial still RUNNING (atexit does the same
    # for other exits): queued records are written and the runs marked interrupted.
    first.on_experiment_end(trials=[t])
    client, parents, children = runs_of(store, "unit-resume")
    assert parents[0].data.tags["status"] == "INTERRUPTED" and parents[0].info.status == "KILLED"
    assert children["r0001"].data.tags["status"] == "INTERRUPTED"

    # Ray pickles the callback into tuner.pkl: that must work and drop the client.
    clone = pickle.loads(pickle.dumps(first))
    assert clone._client is None

    # Resume by tags (a brand-new callback, resume=True); the restored trial replays step 2.
    second = MLflowCallback(store, "unit-resume", SPEC, SPEC_TEXT, "sweep-r", resume=True, flush_interval=0.0,
                            retry_delays=())
    second.setup()
    replay(second, FakeTrial("r0001", config, checkpoint=ckpt), results, steps=range(2, 4))
    second.on_experiment_end(trials=[])
    # Resume through Ray's callback state (set_state before setup), as Tuner.restore does.
    third = MLflowCallback(store, "unit-resume", SPEC, SPEC_TEXT, "sweep-r", flush_interval=0.0, retry_delays=())
    third.set_state(second.get_state())
    third.setup()
    replay(third, FakeTrial("r0001", config, checkpoint=ckpt), results, steps=range(3, 4))
    third.on_experiment_end(trials=[])

    client, parents, children = runs_of(store, "unit-resume")
    assert len(parents) == 1 and len(children) == 1
    run = children["r0001"]
    assert run.info.status == "FINISHED" and parents[0].info.status == "FINISHED"
    for key in ("val/natural", "train/loss", "matrix/natural"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == sorted(set(steps)), key  # no step logged twice
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/natural")] == [1, 2, 3]
    table = Path(client.download_artifacts(parents[0].info.run_id, "sweep_table.parquet"))
    assert pq.read_table(table).num_rows == 1


class FlakyClient:
    """Wraps an MlflowClient; while `down` is set every call raises like an unreachable server."""

    def __init__(self, inner) -> None:
        self.inner, self.down, self.calls = inner, False, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*a, **k):
            self.calls += 1
            if self.down:
                raise ConnectionError("Connection refused")
            return attr(*a, **k)

        return call


def test_store_outage_queues_records_and_writes_them_later(store, tiny_run):
    config, results, ckpt = tiny_run
    lines: list[str] = []
    cb = MLflowCallback(store, "unit-outage", SPEC, SPEC_TEXT, "sweep-o", flush_interval=0.0, retry_delays=(0.0,),
                        log=lines.append)
    flaky = FlakyClient(make_client(store))
    cb._client = flaky
    cb.setup()
    t = FakeTrial("o0001", config, checkpoint=ckpt)
    flaky.down = True
    replay(cb, t, results)  # the whole trial while the store is down: nothing raises
    cb.sync()  # the writer thread has tried to write them
    assert cb._pending() > 0
    assert sum("unavailable" in ln for ln in lines) == 1
    flaky.down = False
    cb._next_try = 0.0
    cb.on_experiment_end(trials=[t])
    assert cb._pending() == 0 and not any("lost" in ln for ln in lines)
    client, parents, children = runs_of(store, "unit-outage")
    run = children["o0001"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/natural")] == [1, 2, 3]
    assert run.info.status == "FINISHED"
    assert "robustness_matrix.parquet" in {f.path for f in client.list_artifacts(run.info.run_id)}


def test_store_gone_for_good_reports_lost_records_in_one_line(store, tiny_run):
    config, results, ckpt = tiny_run
    lines: list[str] = []
    cb = MLflowCallback(store, "unit-lost", SPEC, SPEC_TEXT, "sweep-l", flush_interval=0.0, retry_delays=(0.0, 0.0),
                        log=lines.append)
    flaky = FlakyClient(make_client(store))
    cb._client = flaky
    cb.setup()
    t = FakeTrial("l0001", config, checkpoint=ckpt)
    replay(cb, t, results[:1], complete=False)
    flaky.down = True
    replay(cb, t, results, steps=range(2, 4))
    cb.on_experiment_end(trials=[t])
    lost = [ln for ln in lines if "lost" in ln]
    assert len(lost) == 1 and "\n" not in lost[0]
    n = int(lost[0].split("mlflow: ")[1].split()[0])
    assert n >= 10  # metrics of steps 2-3, artifacts, status changes


def test_unreachable_server_is_one_line_error_before_anything():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.perf_counter()
    with pytest.raises(TrackingUnavailable) as ei:
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2.0)
    assert time.perf_counter() - t0 < 5
    msg = str(ei.value)
    assert "unreachable" in msg and "\n" not in msg and str(port) in msg
    with pytest.raises(TrackingUnavailable, match="file store"):
        check_tracking_uri("file:///tmp/mlruns")
    with pytest.raises(TrackingUnavailable, match="in-memory"):
        check_tracking_uri("sqlite://")


def test_sqlite_uri_checks(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/sub/mlflow.db")  # a missing directory is creatable: checked, not made
    assert not (tmp_path / "sub").exists()
    from orchestrator.store import open_tracking_store, remove_new_store

    created = open_tracking_store(f"sqlite:///{tmp_path}/sub/mlflow.db")  # made when the sweep really starts
    assert (tmp_path / "sub" / "mlflow.db").is_file() and created[-1] == (tmp_path / "sub").resolve()
    remove_new_store(created)  # a start that fails later takes it back
    assert not (tmp_path / "sub").exists()
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(TrackingUnavailable, match="not a writable database file"):
        check_tracking_uri(f"sqlite:///{tmp_path}/dir.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrackingUnavailable, match="cannot create directory"):
        check_tracking_uri(f"sqlite:///{tmp_path}/file/sub/mlflow.db")


def test_metric_items_and_helpers():
    r = {"train/loss": 0.5, "val/natural": np.float32(0.25), "iteration": 20.0, "check/ok": True, "pid": 3,
         "training_iteration": 2, "time_total_s": 1.0, "node/pid": "123", "matrix": {"x": 1}, "hostname": "h"}
    assert metric_items(r) == {"train/loss": 0.5, "val/natural": 0.25, "iteration": 20.0, "check/ok": 1.0}
    assert objectives_from_spec({"search": {"metric": "val/worst", "mode": "max"}}) == [("val/worst", "max")]
    assert objectives_from_spec({}) == []

    class T:
        error_file = None
        error_msg = "Traceback (most recent call last):\n  File x\nValueError: bad lam"

    assert failure_reason(T()) == "ValueError: bad lam"


def test_pareto_front_and_sweep_table_types(tmp_path):
    assert sorted(art.pareto_front([(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (float("nan"), 1.0)])) == [0, 1, 3]
    rows = [{"trial_id": "a", "lr": "0.01", "T": "10", "recursive": "True", "matrix/worst": 0.5},
            {"trial_id": "b", "lr": 0.1, "T": 5, "recursive": False}]
    t = art.sweep_table(rows)
    assert t.column_names == ["trial_id", "T", "lr", "recursive", "matrix/worst"]
    assert [str(t.schema.field(c).type) for c in t.column_names] == ["string", "int64", "double", "bool", "double"]
    p = art.write_pareto([{"matrix/natural": 0.9, "matrix/worst": 0.5}], tmp_path / "p.png")
    assert p.read_bytes()[:4] == b"\x89PNG"


def test_a_broken_hook_never_raises_into_tune(store):
    lines: list[str] = []
    cb = MLflowCallback(store, "unit-guard", SPEC, SPEC_TEXT, "sweep-g", flush_interval=0.0, retry_delays=(),
                        log=lines.append)
    cb.setup()

    class Broken:
        trial_id = "g1"
        config = ["not", "a", "mapping"]

    cb.on_trial_result(iteration=1, trials=[], trial=Broken(), result={"training_iteration": 1, "val/natural": 0.5})
    assert len(lines) == 1 and lines[0].startswith("mlflow: on_trial_result failed") and "\n" not in lines[0]
    cb.on_experiment_end(trials=[])
    client, parents, children = runs_of(store, "unit-guard")
    assert parents[0].info.status == "FINISHED"


# --------------------------------------------------------------- issue: runs a researcher can compare
TIE_SPEC = {"name": "unit-tie", "space": {"lr": {"kind": "grid", "values": [0.01, 0.02, 0.03]}},
            "search": {"metric": "val/worst", "mode": "max"}}


def _with_val(results: list[dict], worst: float, natural: float) -> list[dict]:
    out = copy.deepcopy(results)
    for r in out:
        r["val/worst"], r["val/natural"] = worst, natural
    return out


class FakeResult:
    """The attributes of a ray.tune.Result that the summary reads."""

    def __init__(self, trial_id: str, config: dict, metrics: dict, checkpoint: str) -> None:
        self.config, self.error, self.checkpoint = config, None, FakeCheckpoint(checkpoint)
        self.metrics = {**metrics, "trial_id": trial_id}


def test_one_tie_break_rule_in_summary_parent_run_and_export(store, tiny_run, tmp_path):
    """Three trials tie at val/worst; two of them also at val/natural: the higher val/natural
    wins, then the lower trial index — in the summary, on the parent run and in export alike,
    although the winner's run was not the first one created."""
    from orchestrator.sweep.summary import summarize
    from orchestrator.export import best_run, find_experiment
    from orchestrator.spec.study import build_study

    config, results, ckpt = tiny_run
    cb = MLflowCallback(store, "unit-tie", TIE_SPEC, "", "sweep-tie", flush_interval=0.0, retry_delays=(),
                        log_models=False)
    cb.setup()
    plan = [("t_00002", 0.03, 0.04, 0.60), ("t_00000", 0.01, 0.04, 0.50), ("t_00001", 0.02, 0.04, 0.60)]
    trials, fake_results = [], []
    for tid, lr, worst, natural in plan:  # created in this order: t_00002's run is the earliest
        t = FakeTrial(tid, dict(config, lr=lr), checkpoint=ckpt)
        rs = _with_val(results, worst, natural)
        replay(cb, t, rs)
        t.status = "TERMINATED"
        trials.append(t)
        fake_results.append(FakeResult(tid, t.config, {k: v for k, v in rs[-1].items() if k != "matrix"}, ckpt))
    cb.on_experiment_end(trials=trials)

    client, parents, children = runs_of(store, "unit-tie")
    parent = parents[0].data.tags
    assert parent["best.trial_id"] == "t_00001" and parent["best.run_id"] == children["t_00001"].info.run_id
    assert parent["best.run_name"] == children["t_00001"].info.run_name == "plain-lr0.02"
    assert parent["trials.finished"] == "3" and "val/natural" in parent["selection.rule"]
    assert parents[0].data.metrics["best/val/worst"] == pytest.approx(0.04)
    assert children["t_00001"].info.run_id in parent["mlflow.note.content"]
    # the matrix of every trial, as the summary prints it, the best trial's row marked
    note = parent["mlflow.note.content"]
    assert "| worst | flags |" in note and "| best | **plain-lr0.02** |" in note
    assert sum(ln.startswith("|  | plain-lr") for ln in note.splitlines()) == 2

    exp = find_experiment(client, "unit-tie", store)
    run, metric, mode = best_run(client, exp)
    assert (metric, mode) == ("val/worst", "max") and run.data.tags["trial_id"] == "t_00001"

    study = build_study({"name": "unit-tie", "base": {"defense": "plain"}, "space": {"lr": {"grid": [0.01, 0.02, 0.03]}},
                         "search": {"type": "grid", "metric": "val/worst", "mode": "max"}})
    text = summarize(fake_results, study, tracking={"tracking_uri": store, "sweep_name": "sweep-tie",
                                                                "experiment_id": exp.experiment_id,
                                                                "parent_run_id": parents[0].info.run_id})
    assert "best trial: t_00001 " in text
    matrix = text.splitlines()[text.splitlines().index(next(ln for ln in text.splitlines()
                                                             if ln.startswith("robustness matrix"))) + 1:]
    assert matrix[0].split()[:2] == ["trial", "nat"] and "worst" in matrix[0].split()
    assert sorted(ln.split()[0] for ln in matrix[2:5]) == ["*", "t_00000", "t_00002"]
    assert next(ln for ln in matrix[2:5] if ln.startswith("*")).split()[1] == "t_00001"
    assert f"--sweep sweep-tie --out best/ --tracking-uri {store}" in text
    assert f"mlflow ui --backend-store-uri {store}" in text
    assert f"#/experiments/{exp.experiment_id}/runs/{parents[0].info.run_id}" in text


def test_child_runs_are_named_and_hold_the_resolved_config_dataset_and_model(store, tiny_run, tmp_path):
    config, results, ckpt = tiny_run
    cb = MLflowCallback(store, "unit-names", TIE_SPEC, "", "sweep-n", flush_interval=0.0, retry_delays=())
    cb.setup()
    t = FakeTrial("n_00000", dict(config, lr=0.01), checkpoint=ckpt)
    replay(cb, t, results)
    t.status = "TERMINATED"
    cb.on_experiment_end(trials=[t])
    client, parents, children = runs_of(store, "unit-names")
    run = children["n_00000"]
    assert run.info.run_name == "plain-lr0.01" and run.data.tags["trial_id"] == "n_00000"
    # the whole resolved TrialConfig, not only the keys the trial's config named
    for key, value in (("eps", "0.3"), ("lam", "0.02"), ("model", "lenet5"), ("augment", "False"),
                       ("clf_grad_clip", "0.0"), ("eps_step", "0.075"), ("T", "10")):
        assert run.data.params[key] == value, key
    exp = client.get_experiment_by_name("unit-names")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "mnist5k" and len(ds.dataset.digest) == 12
    assert json.loads(ds.dataset.profile) == {"train": 3500, "val": 500, "test": 1000, "val_used": 50,
                                              "test_used": 100}
    # the classifier as a LoggedModel of the run, with the matrix as its metrics, loadable by MLflow
    model_id = run.data.tags["model_id"]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run.info.run_id and str(model.status).endswith("READY")
    got = {m.key: m.value for m in model.metrics}
    assert got["matrix/natural"] == pytest.approx(results[-1]["matrix/natural"])
    assert got["matrix/worst"] == pytest.approx(results[-1]["matrix/worst"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "matrix/worst")] == [3]  # logged once
    import mlflow.pytorch

    from trainable.data import load_dataset

    import mlflow

    mlflow.set_tracking_uri(store)
    net = mlflow.pytorch.load_model(f"models:/{model_id}")
    d = load_dataset("mnist5k")
    idx = torch.as_tensor(results[-1]["matrix"]["indices"])
    with torch.no_grad():
        acc = float((net(d.test_x[idx]).argmax(1) == d.test_y[idx]).float().mean())
    assert acc == pytest.approx(results[-1]["matrix/natural"])


def test_a_full_queue_makes_reports_wait_and_loses_nothing(store, tiny_run):
    """Back-pressure: with room for one record in flight and a slow store, every report still
    arrives, in order, once."""
    config, results, ckpt = tiny_run
    cb = MLflowCallback(store, "unit-queue", SPEC, SPEC_TEXT, "sweep-q", flush_interval=0.0, retry_delays=(),
                        max_queue=1, log_models=False)

    class Slow(FlakyClient):
        def __getattr__(self, name):
            attr = super().__getattr__(name)
            if name != "log_batch":
                return attr
            return lambda *a, **k: (time.sleep(0.05), attr(*a, **k))[1]

    cb._client = Slow(make_client(store))
    cb.setup()
    trials = [FakeTrial(f"q_0000{i}", dict(config, lr=0.01 * (i + 1)), checkpoint=ckpt) for i in range(3)]
    for t in trials:
        replay(cb, t, results)
    cb.on_experiment_end(trials=trials)
    assert cb.lost == 0
    client, parents, children = runs_of(store, "unit-queue")
    assert len(children) == 3
    for run in children.values():
        for key in ("val/natural", "train/loss", "iteration"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
        assert run.info.status == "FINISHED"


def test_a_trial_on_s3_storage_gets_its_logged_model_export_and_device_tags(store, tiny_run, s3, tmp_path):
    """With s3:// storage no LoggedModel was written (silently); the device a trial used was recorded nowhere."""
    import pyarrow.fs as pafs

    config, results, ckpt = tiny_run
    fs, inner = pafs.FileSystem.from_uri("s3://l2lda/runs/sweep-s3/t0/checkpoint_000003")
    pafs.copy_files(ckpt, inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    cb = MLflowCallback(store, "unit-s3", SPEC, SPEC_TEXT, "sweep-s3", flush_interval=0.0, retry_delays=())
    cb.setup()
    t = FakeTrial("s0001", config)
    t.checkpoint = FakeCheckpoint(inner)
    t.checkpoint.filesystem = fs  # what Ray's Checkpoint on S3 carries: a pyarrow S3FileSystem
    device = {"device/name": "cuda:0", "device/cuda_visible_devices": "2", "device/memory_cap": "19.25 GiB of 80.00 GiB"}
    replay(cb, t, [{**r, **device} for r in results])
    cb.on_experiment_end(trials=[t])
    _, _, children = runs_of(store, "unit-s3")
    tags = children["s0001"].data.tags
    assert tags["checkpoint_path"] == "s3://l2lda/runs/sweep-s3/t0/checkpoint_000003"
    assert tags.get("model_id"), tags
    assert (tags["device"], tags["cuda_visible_devices"], tags["memory_cap"]) == ("cuda:0", "2", "19.25 GiB of 80.00 GiB")
    # `export` refused a remote checkpoint; it now fetches it through pyarrow
    from orchestrator.export import export_command
    from trainable.weights import load_export

    summary = export_command("unit-s3", tmp_path / "best", tracking_uri=store, log=None)
    assert summary["checkpoint"] == tags["checkpoint_path"]
    assert load_export(tmp_path / "best")(torch.rand(2, 1, 28, 28)).shape == (2, 10)
