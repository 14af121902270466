"""`l2lda-tune report` on a tiny MLflow study (issue 5)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from orchestrator.report import ReportError, make_report, report_command


def _log_trial(client, exp_id, tmp_path, defense, seed, acc, flags=(), recursive=True):
    run = client.create_run(exp_id, tags={"role": "trial", "trial_name": f"{defense}_{seed}_{recursive}"})
    rid = run.info.run_id
    for k, v in {"defense": defense, "seed": seed, "eps": 0.3, "recursive": recursive, "diversity": True,
                 "device": "cpu"}.items():
        client.log_param(rid, k, str(v))
    metrics = {f"matrix/{c}": v for c, v in acc.items()}
    metrics.update({f"transfer/{s}/pgd10": acc["pgd10"] + 0.1 for s in "ABC"})
    metrics["transfer/min"] = acc["pgd10"] + 0.1
    for f in ("more_steps_help", "pfree_gap"):
        metrics[f"check/{f}"] = 1.0 if f in flags else 0.0
    for k, v in metrics.items():
        client.log_metric(rid, k, v)
    mj = {"n": 200, "metrics": metrics,
          "profile": {"n": 200, "eps_curve": [{"eps": 0.1, "accuracy": 0.8}, {"eps": 1.0, "accuracy": 0.0}]},
          "checks": {"masking": {f: {"fired": True, "detail": f"{f} detail"} for f in flags}}}
    d = tmp_path / rid
    d.mkdir()
    (d / "robustness_matrix.json").write_text(json.dumps(mj))
    client.log_artifact(rid, str(d / "robustness_matrix.json"))
    client.set_terminated(rid, "FINISHED")


def test_report_writes_three_tables_flags_and_figures(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("study", artifact_location=(tmp_path / "mlruns").as_uri())
    base = {"natural": 0.98, "fgsm": 0.9, "pgd10": 0.85, "pgd100": 0.8, "apgd_ce": 0.76, "autoattack": 0.72,
            "min": 0.72, "worst": 0.7}
    for seed in (0, 1):
        _log_trial(client, exp_id, tmp_path, "pgd10_at", seed, {k: v - 0.01 * seed for k, v in base.items()},
                   flags=("pfree_gap",) if seed == 1 else ())
        for rec in (True, False):
            _log_trial(client, exp_id, tmp_path, "l2lda", seed, {k: v - 0.05 * (not rec) for k, v in base.items()},
                       recursive=rec)
    unfinished = client.create_run(exp_id, tags={"role": "trial"})  # RUNNING: must be ignored
    client.log_metric(unfinished.info.run_id, "matrix/natural", 0.1)

    out = tmp_path / "report"
    written = report_command("study", str(out), uri)
    md = (out / "report.md").read_text()
    assert "Table 1" in md and "Table 2" in md and "Table 3" in md
    assert "R=✓" in md and "R=✗" in md  # the varying ablation flag makes Table 1's rows
    assert "| pgd10_at | 2 | 97.5 ± 0.7" in md  # natural over seeds 0.98 / 0.97 (percent)
    assert "not the paper's C&W" in md
    assert "pfree_gap" in md and "pfree_gap detail" in md and len(written["warnings"]) == 1
    t2 = pq.read_table(out / "table2.parquet").to_pylist()
    cell = next(c for c in t2 if c["row"] == "pgd10_at" and c["column"] == "pgd100")
    assert cell["seeds"] == 2 and cell["n_points"] == 400
    assert cell["ci_low"] < cell["mean"] < cell["ci_high"]
    t3 = pq.read_table(out / "table3.parquet").to_pylist()
    assert {c["column"] for c in t3} >= {"A/pgd10", "B/pgd10", "C/pgd10", "min"}
    assert pq.read_table(out / "table1.parquet").num_rows > 0
    assert (out / "heatmap.png").stat().st_size > 0 and written["eps_curves"]
    with pytest.raises(ReportError, match="not found"):
        report_command("no-such-study", str(out), uri)
    with pytest.raises(ReportError, match="no finished trial"):
        make_report([], out, "empty")
