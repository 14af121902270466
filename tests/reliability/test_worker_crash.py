"""Worker crash (issue 6 §1): the process running a trial is SIGKILLed mid-training.

With ``failure.max_failures: 2`` Tune starts a new actor, restores the last checkpoint and
the trial finishes: the iteration count continues from the checkpoint (never from zero),
the actor's pid changes, and the trial's MLflow run ends FINISHED with one metric history
(each report step once) and the failure recorded as tags.
"""
from __future__ import annotations

import io
import os
import signal
import threading

import pytest

from _faults import children_of, steps_of, tiny_spec, trial_results, wait_for
from orchestrator.sweep import run as runner
from orchestrator.spec.study import build_study

pytestmark = pytest.mark.slow

ITERS, PER_REPORT = 1200, 120  # 10 reports of ~1 s: room to kill after the third one


def test_sigkilled_trial_resumes_from_its_checkpoint(ray_session, tmp_path):
    raw = tiny_spec(tmp_path, "rel-crash", {"seed": 0}, failure=2,
                    base={"iterations": ITERS, "steps_per_report": PER_REPORT})
    study = build_study(raw)
    db, sweep = tmp_path / "mlflow.db", tmp_path / "runs" / "crash"
    killed: dict = {}

    def killer() -> None:
        def third_report():
            for rows in trial_results(sweep).values():
                if len(rows) >= 3 and not rows[-1].get("done") and list(sweep.glob("*/checkpoint_*/state.pt")):
                    return rows[-1]
            return None

        try:
            row = wait_for(third_report, 300, "the trial's third report")
        except AssertionError as exc:
            killed["error"] = str(exc)
            return
        pid = int(row["node/pid"])
        assert pid != os.getpid()
        killed.update(pid=pid, iteration=row["iteration"], step=row["training_iteration"])
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    buf = io.StringIO()
    grid = runner.run_study(study, name="crash", storage=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{db}",
                                 reporter=False, out=buf)
    t.join(timeout=10)
    assert "pid" in killed, killed.get("error", "the killer thread did not run")
    print(f"worker crash: killed pid {killed['pid']} after report {killed['step']} (iteration {killed['iteration']})")

    # Tune: the trial finished despite the crash.
    (r,) = list(grid)
    assert r.error is None, r.error
    assert r.metrics["done"] is True and r.metrics["iteration"] == ITERS
    rows = next(iter(trial_results(sweep).values()))
    pids = [int(x["node/pid"]) for x in rows]
    after = [x for x in rows if int(x["node/pid"]) != killed["pid"]]
    assert killed["pid"] in pids and after, "no report came from a new actor"
    # Continued from the checkpoint: the new actor's first report is not the first report of a fresh trial.
    first_after = after[0]
    assert first_after["iteration"] > PER_REPORT and first_after["iteration"] >= killed["iteration"] - PER_REPORT
    assert first_after["training_iteration"] == first_after["iteration"] // PER_REPORT
    assert [x["iteration"] for x in after] == list(range(int(first_after["iteration"]), ITERS + 1, PER_REPORT))

    # MLflow: one run, FINISHED, one history with each step once, failure recorded.
    (run,) = children_of(db, "rel-crash")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "FINISHED"
    assert run.data.tags.get("num_failures") == "1" and run.data.tags.get("last_failure")
    assert "/checkpoint_" in run.data.tags.get("restored_from", ""), run.data.tags  # from its last checkpoint
    hist = steps_of(db, run.info.run_id, "iteration")
    assert [s for s, _ in hist] == list(range(1, ITERS // PER_REPORT + 1)), hist
    assert [v for _, v in hist] == [float(PER_REPORT * s) for s in range(1, ITERS // PER_REPORT + 1)]
    for key in ("val/natural", "train/loss"):
        steps = [s for s, _ in steps_of(db, run.info.run_id, key)]
        assert steps == list(range(1, ITERS // PER_REPORT + 1)), (key, steps)
    assert "matrix/pgd10" in run.data.metrics
    print(f"worker crash: 1 trial, 1 run, {len(hist)} reports of each metric, "
          f"{len(run.data.metrics)} metrics; pids {sorted(set(pids))}")
