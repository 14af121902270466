"""The sweep's outcome on its parent run (orchestrator/tracking/outcome.py): one tie-break rule for
the best trial — in the summary, on the parent run and in export alike — and the matrix of every
trial in the parent's note."""
from __future__ import annotations

import copy

import pytest

from _fake_runs import LR_GRID_SPEC, FakeCheckpoint, FakeTrial, replay, runs_of
from orchestrator.tracking import MLflowCallback


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
    cb = MLflowCallback(store, "unit-tie", LR_GRID_SPEC, "", "sweep-tie", flush_interval=0.0, retry_delays=(),
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
