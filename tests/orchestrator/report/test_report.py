"""`l2lda-tune report` (orchestrator/report/): a tiny MLflow study, paired comparisons by hand, and the
defense registry deciding Table 1."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from orchestrator.artifacts import write_matrix_parquet
from orchestrator.report.build import make_report, report_command
from orchestrator.report.collect import ReportError


def _log_trial(client, exp_id, tmp_path, defense, seed, acc, flags=(), recursive=True, extra=None, collapsed=False):
    run = client.create_run(exp_id, tags={"role": "trial", "trial_name": f"{defense}_{seed}_{recursive}"})
    rid = run.info.run_id
    for k, v in {"defense": defense, "seed": seed, "eps": 0.3, "recursive": recursive, "diversity": True,
                 "device": "cpu", **(extra or {})}.items():
        client.log_param(rid, k, str(v))
    metrics = {f"matrix/{c}": v for c, v in acc.items()}
    metrics.update({f"transfer/{s}/pgd10": acc["pgd10"] + 0.1 for s in "ABC"})
    metrics["transfer/min"] = acc["pgd10"] + 0.1
    for f in ("more_steps_help", "pfree_gap"):
        metrics[f"check/{f}"] = 1.0 if f in flags else 0.0
    for k, v in metrics.items():
        client.log_metric(rid, k, v)
    if defense == "l2lda":  # the training-time generator check, as the trial reports it
        train = {"check/generator_collapsed": float(collapsed), "train/acc_adv": 0.97 if collapsed else 0.4,
                 "train/acc_clean": 0.975}
        for k, v in train.items():
            client.log_metric(rid, k, v)
    mj = {"n": 200, "metrics": metrics,
          "profile": {"n": 200, "eps_curve": [{"eps": 0.1, "accuracy": 0.8}, {"eps": 1.0, "accuracy": 0.0}]},
          "checks": {"masking": {f: {"fired": True, "detail": f"{f} detail"} for f in flags}}}
    d = tmp_path / rid
    d.mkdir()
    (d / "robustness_matrix.json").write_text(json.dumps(mj))
    client.log_artifact(rid, str(d / "robustness_matrix.json"))
    # Correctness vectors: the first round(acc · 200) test points survive each column.
    correct = {c: np.arange(200) < round(200 * v) for c, v in acc.items() if c not in ("min", "worst")}
    write_matrix_parquet({"metrics": metrics, "correct": correct, "indices": np.arange(200) * 5,
                          "profile": {"n": 200, "eps": 0.3}}, d / "robustness_matrix.parquet")
    client.log_artifact(rid, str(d / "robustness_matrix.parquet"))
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
                       recursive=rec, collapsed=(seed, rec) == (1, False))
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
    # the one collapsed generator is named, with its train accuracies, and no other trial is
    assert "## Generator checks" in md and len(written["generator_checks"]) == 1
    assert "l2lda (recursive=False)**, seed 1" in written["generator_checks"][0] and "97.0% vs clean 97.5%" in written["generator_checks"][0]
    t2 = pq.read_table(out / "table2.parquet").to_pylist()
    cell = next(c for c in t2 if c["row"] == "pgd10_at" and c["column"] == "pgd100")
    assert cell["seeds"] == 2 and cell["n_points"] == 400
    assert cell["ci_low"] < cell["mean"] < cell["ci_high"]
    t3 = pq.read_table(out / "table3.parquet").to_pylist()
    assert {c["column"] for c in t3} >= {"A/pgd10", "B/pgd10", "C/pgd10", "min"}
    assert pq.read_table(out / "table1.parquet").num_rows > 0
    assert (out / "heatmap.png").stat().st_size > 0 and written["eps_curves"]
    # Paired comparisons from the collected vectors: R on vs off loses 10 points per seed (b = 20, c = 0).
    r = next(e for e in written["paired_comparisons"] if e["table"] == "table1")
    assert (r["a"], r["b"], r["mcnemar_b"], r["mcnemar_c"], r["seeds"]) == ("R=✓", "R=✗", 20, 0, 2)
    assert r["significant"] and "**Paired comparisons**" in md and (out / "paired.parquet").is_file()
    with pytest.raises(ReportError, match="not found"):
        report_command("no-such-study", str(out), uri)
    with pytest.raises(ReportError, match="no finished trial"):
        make_report([], out, "empty")


# ------------------------------------------------------------------ paired comparisons (no MLflow)
N = 20


def test_report_joins_studies_and_puts_the_l2l_star_row_in_table1(tmp_path):
    """`--experiment table1_cpu --experiment l2lstar_cpu`: one report, L2L* paired in Table 1."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    t1 = client.create_experiment("t1", artifact_location=(tmp_path / "m1").as_uri())
    st = client.create_experiment("star", artifact_location=(tmp_path / "m2").as_uri())
    base = {"natural": 0.98, "pgd10": 0.6, "pgd100": 0.5, "min": 0.5, "worst": 0.5}
    for seed in (0, 1):
        for rec in (True, False):
            _log_trial(client, t1, tmp_path, "l2lda", seed, {k: v - 0.1 * (not rec) for k, v in base.items()},
                       recursive=rec, extra={"use_delta": True, "use_label": True, "grad_norm": True})
        _log_trial(client, st, tmp_path, "l2l_star", seed, {k: v - 0.3 for k, v in base.items()}, recursive=False,
                   extra={"use_delta": False, "use_label": False, "grad_norm": False})
    written = report_command(["t1", "star"], str(tmp_path / "out"), uri)
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# Robustness report: t1 + star")
    t1rows = {c["row"] for c in pq.read_table(tmp_path / "out" / "table1.parquet").to_pylist()}
    assert t1rows == {"R=✓", "R=✗", "L2L*"}
    # Table 2 names the L2L-DA rows by R only: L2L*'s own flags do not split them.
    t2rows = {c["row"] for c in pq.read_table(tmp_path / "out" / "table2.parquet").to_pylist()}
    assert t2rows == {"l2lda (recursive=True)", "l2lda (recursive=False)", "l2l_star"}
    # L2L-DA first in its pairs with L2L*: Δ = L2L-DA − L2L* (30 points = 60 of 200 test points per seed, b = 120 over 2 seeds).
    e = next(e for e in written["paired_comparisons"] if e["table"] == "table1" and e["b"] == "L2L*" and e["a"] == "R=✓")
    assert (e["mcnemar_b"], e["mcnemar_c"], e["seeds"]) == (120, 0, 2) and e["significant"]
    assert e["diff_mean"] == pytest.approx(0.3) and e["differs"] == "defense"
    with pytest.raises(ReportError, match="not found"):
        report_command(["t1", "nope"], str(tmp_path / "out"), uri)


def _rec(defense, seed, correct_upto=None, rec=True, div=True, points=range(N), vectors=True, first=0):
    """A trial record as `collect` makes it: worst case correct on points [first, correct_upto)."""
    idx = np.asarray(list(points))
    worst = np.zeros(len(idx), bool)
    worst[first:correct_upto] = True
    correct = {"natural": np.ones(len(idx), bool), "pgd10": worst}
    metrics = {"matrix/natural": 1.0, "matrix/pgd10": worst.mean(), "matrix/min": worst.mean(),
               "matrix/worst": worst.mean()}
    return {"run_id": f"{defense}-{seed}-{rec}-{div}", "name": f"{defense}_{seed}_{rec}_{div}",
            "params": {"defense": defense, "seed": str(seed), "recursive": str(rec), "diversity": str(div)},
            "metrics": metrics, "n": len(idx), "eps": 0.3, "masking": {}, "eps_curve": [],
            "matrix": {"indices": idx, "correct": correct, "profile": {"eps": 0.3}} if vectors else None}


def _synthetic():
    recs = []
    for s in (0, 1):
        recs += [_rec("l2lda", s, 15), _rec("l2lda", s, 5, rec=False), _rec("l2lda", s, 15, div=False, first=1),
                 _rec("pgd10_at", s, 10)]
    recs.append(_rec("l2lda", 0, 4, rec=False, div=False, vectors=False))  # an old run: metrics only
    return recs


def _pair(entries, table, a, b):
    return next(e for e in entries if e["table"] == table and e["a"] == a and e["b"] == b)


def test_paired_section_hand_computed(tmp_path):
    import pyarrow.parquet as pq

    written = make_report(_synthetic(), tmp_path, "synthetic")
    md = (tmp_path / "report.md").read_text()
    entries = written["paired_comparisons"]
    assert md.count("**Paired comparisons**") == 2  # Tables 1 and 2 (no transfer columns: no Table 3)
    # "R helps": the flag-on row first; per seed b = 10, c = 0; pooled b = 20, c = 0, p = 2 / 2^20.
    r = _pair(entries, "table1", "R=✓ D=✓", "R=✗ D=✓")
    assert (r["differs"], r["seeds"], r["mcnemar_b"], r["mcnemar_c"], r["n_pairs"]) == ("R", 2, 20, 0, 40)
    assert r["p"] == pytest.approx(2 / 2**20) and r["significant"]
    assert r["diff_mean"] == pytest.approx(0.5) and r["diff_ci_low"] == pytest.approx(0.5)  # std 0 over seeds
    assert [s["p"] for s in r["per_seed"]] == pytest.approx([2 / 2**10] * 2)
    assert "| R=✓ D=✓ | R=✗ D=✓ | R | 2 | +50.0 | [+50.0, +50.0] | 20 | 0 | 1.9e-06 | * | 0.002, 0.002 |" in md
    # "D helps" is not shown here: one point per seed, b = 2, c = 0, p = 0.5 — no mark.
    d = _pair(entries, "table1", "R=✓ D=✓", "R=✓ D=✗")
    assert (d["mcnemar_b"], d["mcnemar_c"], d["p"], d["significant"]) == (2, 0, 0.5, False)
    assert "| R=✓ D=✓ | R=✓ D=✗ | D | 2 | +5.0 | [+5.0, +5.0] | 2 | 0 | 0.500 |  |" in md
    # A run without correctness vectors: the metric difference, one seed, no test.
    m = _pair(entries, "table1", "R=✓ D=✓", "R=✗ D=✗")
    assert m["seeds"] == 1 and m["p"] is None and m["diff_mean"] == pytest.approx(0.75 - 0.2)
    assert "no McNemar test" in m["note"] and "| R=✓ D=✓ | R=✗ D=✗ | R, D | 1 | +55.0 | – | – | – | – |" in md
    # "L2L-DA beats PGD-AT": L2L-DA first, named by the defense alone.
    t2 = _pair(entries, "table2", "l2lda (diversity=True, recursive=True)", "pgd10_at")
    assert (t2["differs"], t2["mcnemar_b"], t2["mcnemar_c"]) == ("defense", 10, 0)
    assert t2["p"] == pytest.approx(2 / 2**10) and t2["significant"]
    # Machine-readable copies.
    js = json.loads((tmp_path / "paired.json").read_text())
    assert len(js) == len(entries) == 6 + 10
    flat = pq.read_table(tmp_path / "paired.parquet").to_pylist()
    row = next(f for f in flat if f["a"] == "R=✓ D=✓" and f["b"] == "R=✗ D=✓")
    assert row["mcnemar_b"] == 20 and row["significant"] and row["p_per_seed"].count(",") == 1


def test_paired_refuses_different_test_points_and_ambiguous_seeds(tmp_path):
    from orchestrator.report.paired import compare_rows

    recs = [_rec("plain", 0, 5), _rec("pgd10_at", 0, 10, points=range(100, 100 + N))]
    written = make_report(recs, tmp_path, "mismatch")
    (e,) = written["paired_comparisons"]
    assert e["a"] == "pgd10_at" and e["p"] is None and "different test points" in e["note"]
    assert "different test points" in (tmp_path / "report.md").read_text()
    amb = compare_rows("t", "a", "b", [_rec("plain", 0, 5), _rec("plain", 0, 6)], [_rec("pgd10_at", 0, 5)])
    assert "two runs with seed 0" in amb["note"] and amb["p"] is None


def test_pipeline_footnote_only_when_rows_were_trained_differently():
    from orchestrator.report.tables import pipeline_note

    def rec(defense, augment, clip):
        return {"params": {"defense": defense, "augment": str(augment), "clf_grad_clip": str(clip),
                           "lr_decay_at": "0.5"}}

    same = {"pgd10_at": [rec("pgd10_at", False, 0.0)], "fgsm_at": [rec("fgsm_at", False, 0.0)]}
    assert pipeline_note(same) == ""
    mixed = {"pgd10_at": [rec("pgd10_at", False, 0.0)], "l2lda": [rec("l2lda", True, 1.0)]}
    note = pipeline_note(mixed)
    assert "different pipelines" in note and "l2lda: augment=True, clf_grad_clip=1.0" in note
    assert "pgd10_at: augment=False, clf_grad_clip=0.0" in note


def test_tables_whose_rows_ran_on_cuda_without_deterministic_are_marked(tmp_path):
    """`deterministic: true` is a param; a table whose rows ran on CUDA without it says so."""
    cuda = [dict(_rec("l2lda", s, 15), device="cuda:0") for s in (0, 1)]
    exact = [dict(_rec("pgd10_at", s, 10), device="cuda:0") for s in (0, 1)]
    for r in exact:
        r["params"] = {**r["params"], "deterministic": "True"}
    cpu = [dict(_rec("plain", s, 5), device="cpu") for s in (0, 1)]
    make_report(cuda + exact + cpu, tmp_path, "det")
    md = (tmp_path / "report.md").read_text()
    (line,) = [x for x in md.splitlines() if x.startswith("⚠ Not deterministic:")]
    assert line.startswith("⚠ Not deterministic: l2lda ran on CUDA without `deterministic: true`"), line
    make_report(exact + cpu, tmp_path / "exact", "det")
    assert "Not deterministic" not in (tmp_path / "exact" / "report.md").read_text()
    # an execution setting: it never splits rows
    mixed = [dict(r, params={**r["params"], "deterministic": str(i % 2 == 0)}) for i, r in enumerate(cpu)]
    make_report(mixed, tmp_path / "mixed", "det")
    assert "| plain |" in (tmp_path / "mixed" / "report.md").read_text()


def test_report_says_which_tables_it_could_not_build_and_draws_no_progress_bars(tmp_path):
    import subprocess
    import sys

    from mlflow import MlflowClient

    from _ray_fixtures import cli_cmd, cli_env

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("noabl", artifact_location=(tmp_path / "mlruns").as_uri())
    base = {"natural": 0.98, "fgsm": 0.9, "pgd10": 0.85, "pgd100": 0.8, "min": 0.8, "worst": 0.78}
    for seed in (0, 1):
        _log_trial(client, exp_id, tmp_path, "pgd10_at", seed, base)
    env = cli_env()
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)  # the user's default: MLflow would draw bars
    p = subprocess.run(cli_cmd("report", "--experiment", "noabl", "--out", str(tmp_path / "rep"),
                               "--tracking-uri", uri), cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert "Downloading artifacts" not in p.stderr and "it/s" not in p.stderr, p.stderr
    assert "report: table1 not built: no finished L2L-DA trial" in p.stdout
    assert "report: 2 finished trial runs" in p.stdout and "matrices downloaded 2/2" in p.stdout
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Table 1" in md and "Not built: no finished L2L-DA trial" in md
    # one ablation setting only: said so, with the flags it looked at
    recs = [{"run_id": str(i), "name": str(i), "params": {"defense": "l2lda", "recursive": "True", "seed": str(i)},
             "metrics": {"matrix/natural": 0.9, "matrix/worst": 0.5}, "n": 10, "eps": 0.3, "masking": {},
             "eps_curve": [], "matrix": None} for i in range(2)]
    written = make_report(recs, tmp_path / "rep2", "one")
    assert "share every ablation flag" in written["skipped"]["table1"] and "table1" not in written["tables"]


def test_trades_and_mart_are_table2_rows_like_any_defense(tmp_path):
    """Defenses that own their loss are Table 2 rows with their cells, paired with the other defenses."""
    recs = [_rec(d, s, k) for s in (0, 1) for d, k in (("l2lda", 15), ("mart", 12), ("pgd10_at", 10), ("trades", 11))]
    written = make_report(recs, tmp_path, "baselines")
    md = (tmp_path / "report.md").read_text()
    table2 = md[md.index("## Table 2"):]
    table2 = table2[:table2.index("\n\n", table2.index("| defense |"))]  # the table itself
    rows = {line.split("|")[1].strip(): line for line in table2.splitlines() if line.startswith("| ")}
    assert {"trades", "mart", "pgd10_at", "l2lda"} <= set(rows), list(rows)
    assert "| 55.0 ±" in rows["trades"] and "| 60.0 ±" in rows["mart"]  # worst case: 11 and 12 of 20 points
    pairs = {(e["a"], e["b"]) for e in written["paired_comparisons"] if e["table"] == "table2"}
    assert any("trades" in p for p in pairs) and any("mart" in p for p in pairs)


def test_table1_rows_and_flags_come_from_the_defense_registry(tmp_path, monkeypatch):
    """Which defenses Table 1 holds, which flags name the ablated one's rows and what the
    reference rows are called are facts of the defense entries, plug-ins' included."""
    import dataclasses

    from trainable.defenses.registry import DEFENSES

    recs = _synthetic() + [_rec("fgsm_rs_at", s, 12) for s in (0, 1)]  # the example plug-in's defense
    t1 = lambda w: {c["row"] for c in pq.read_table(w["tables"]["table1"]).to_pylist()}  # noqa: E731
    assert t1(make_report(recs, tmp_path / "a", "s")) == {"R=✓ D=✓", "R=✗ D=✓", "R=✓ D=✗", "R=✗ D=✗"}
    # the plug-in's entry puts it in Table 1 under its own name: one reference row, paired with the ablation
    entry = dataclasses.replace(DEFENSES["fgsm_rs_at"], tables=("table1", "table2"), label="FGSM-RS")
    monkeypatch.setitem(DEFENSES._entries, "fgsm_rs_at", entry)
    written = make_report(recs, tmp_path / "b", "s")
    assert t1(written) == {"R=✓ D=✓", "R=✗ D=✓", "R=✓ D=✗", "R=✗ D=✗", "FGSM-RS"}
    assert _pair(written["paired_comparisons"], "table1", "R=✓ D=✓", "FGSM-RS")["differs"] == "defense"
    # L2L-DA's entry ablating only `recursive`: diversity no longer names a row of Table 1, nor of Table 2
    l2lda = dataclasses.replace(DEFENSES["l2lda"], ablation=(("recursive", "R"),))
    monkeypatch.setitem(DEFENSES._entries, "l2lda", l2lda)
    written = make_report(_synthetic(), tmp_path / "c", "s")
    md = (tmp_path / "c" / "report.md").read_text()
    assert "## Table 1 — ablation of L2L-DA" in md
    assert t1(written) == {"R=✓ (diversity=True)", "R=✗ (diversity=True)", "R=✓ (diversity=False)",
                           "R=✗ (diversity=False)"}
