"""MLflowCallback against a real sqlite store, driven with fake Tune trials (DESIGN §6): a sweep's
parent and child runs with their metrics and artifacts, resume into the same runs, a store that is
down for a while or for good, a hook that breaks, a full queue.

The session fixture ``tiny_run`` (one tiny real trial: plain LeNet-5 on mnist5k, 30 iterations, 3
reports) provides real results — train/val metrics and the final robustness matrix with
correctness vectors — and a real checkpoint; the fake trials of tests/_fake_runs.py replay them so
the callback sees what Ray would hand it, without starting Ray.
"""
from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from _fake_runs import SPEC, SPEC_TEXT, FakeTrial, make_sweep, replay, runs_of
from orchestrator.tracking import MLflowCallback, make_client


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
