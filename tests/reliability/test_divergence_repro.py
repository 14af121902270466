"""Divergence (issue 6 §3) and reproducibility (§8), through Ray Tune and the MLflow callback.

One tiny grid study, lr ∈ {0.05, 1e30} with gradient clipping out of the way: the second
trial's loss turns NaN at its first report. The study runs twice (two sweeps, one store):
the diverged trial ends ERROR (Tune) / FAILED with its reason tagged (MLflow) while the other
trial finishes, `export` picks a finished trial, and the healthy trial's robustness matrix —
metrics and per-example correctness vectors — is identical in both sweeps (CPU, same seed).
"""
from __future__ import annotations

import io
import math

import pytest

from _faults import children_of, tiny_spec
from orchestrator.sweep import run as runner
from orchestrator.spec.study import build_study

HEALTHY, DIVERGENT = 0.05, 1e30


@pytest.fixture(scope="module")
def two_sweeps(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diverge")
    raw = tiny_spec(tmp, "rel-diverge", {"lr": {"grid": [HEALTHY, DIVERGENT]}}, base={"grad_clip": 1e30})
    study = build_study(raw)
    db = tmp / "mlflow.db"
    out, grids = [], []
    for sweep in ("first", "second"):
        buf = io.StringIO()
        grids.append(runner.run_study(study, name=sweep, storage=str(tmp / "runs"),
                                           tracking_uri=f"sqlite:///{db}", reporter=False, out=buf))
        out.append(buf.getvalue())
    return {"tmp": tmp, "db": db, "study": study, "grids": grids, "out": out}


def _by_lr(grid) -> dict[float, object]:
    return {r.config["lr"]: r for r in grid}


def test_diverged_trial_errors_with_reason_others_finish(two_sweeps):
    for grid, summary in zip(two_sweeps["grids"], two_sweeps["out"]):
        res = _by_lr(grid)
        assert len(res) == 2
        bad, good = res[DIVERGENT], res[HEALTHY]
        assert bad.error is not None and "DivergenceError" in str(bad.error)
        assert good.error is None and good.metrics.get("done") is True
        assert math.isfinite(good.metrics["matrix/worst"])
        assert "1 failed" in summary and "DivergenceError: train/loss became nan" in summary
    children = children_of(two_sweeps["db"], "rel-diverge")
    assert len(children) == 4  # 2 sweeps × 2 trials, one run each
    for r in children:
        lr = float(r.data.params["lr"])
        if lr == DIVERGENT:
            assert r.info.status == "FAILED" and r.data.tags["status"] == "FAILED"
            assert r.data.tags["failure_reason"].startswith("DivergenceError: train/loss became nan")
            assert r.data.tags["failure_type"] == "diverged"
            assert not any(k.startswith("matrix/") for k in r.data.metrics)
        else:
            assert r.info.status == "FINISHED" and "failure_reason" not in r.data.tags
            assert {"matrix/natural", "matrix/fgsm", "matrix/pgd10", "matrix/worst"} <= set(r.data.metrics)


def test_sweep_with_a_diverged_trial_still_exports_its_best(two_sweeps):
    from orchestrator.export import export_command
    from trainable.weights.export_dir import load_export

    out = two_sweeps["tmp"] / "best"
    summary = export_command("rel-diverge", out, tracking_uri=f"sqlite:///{two_sweeps['db']}", log=None)
    chosen = [r for r in children_of(two_sweeps["db"], "rel-diverge") if r.info.run_id == summary["run_id"]]
    assert len(chosen) == 1 and float(chosen[0].data.params["lr"]) == HEALTHY
    model = load_export(out)
    assert not model.training


def test_same_spec_and_seed_give_the_same_matrix_twice(two_sweeps):
    a, b = (_by_lr(g)[HEALTHY].metrics for g in two_sweeps["grids"])
    cols = ["natural", "fgsm", "pgd10"]
    for k in [*(f"matrix/{c}" for c in cols), "matrix/min", "matrix/worst", "val/natural", "train/loss"]:
        assert a[k] == b[k], k
    assert a["matrix"]["indices"] == b["matrix"]["indices"]
    for c in cols:
        assert list(a["matrix"]["correct"][c]) == list(b["matrix"]["correct"][c]), c
