"""Node loss (issue 6 §4): a two-node Ray cluster on loopback (tests/_loopback_cluster.py's
`start_loopback_cluster`: head 127.0.0.2, worker 127.0.0.3, one CPU each) runs a 2-trial sweep
through `l2lda-tune --address`; once the trial on the worker node has checkpointed, that node
is stopped. Its trial is rescheduled on the head, continues from its checkpoint, and the
sweep completes: both trials FINISHED, one MLflow run each with one metric history.
"""
from __future__ import annotations

import subprocess

import pytest

from _faults import kill_group, steps_of, tiny_spec, trial_results, wait_for, write_spec
from _loopback_cluster import HEAD_IP, NODE_IP, alive_nodes, start_loopback_cluster, stop_node
from _ray_fixtures import cli_cmd, cli_env, mlflow_runs

pytestmark = pytest.mark.slow

ITERS, PER_REPORT = 1200, 120


def test_worker_node_stopped_mid_sweep(tmp_path):
    raw = tiny_spec(tmp_path, "rel-nodeloss", {"seed": {"grid": [0, 1]}}, failure=3,
                    base={"iterations": ITERS, "steps_per_report": PER_REPORT})
    spec = write_spec(tmp_path / "nodeloss.yaml", raw)
    db, sweep = tmp_path / "mlflow.db", tmp_path / "runs" / "nl"
    with start_loopback_cluster(tmp_path) as c:
        driver = subprocess.Popen(cli_cmd("--space", str(spec), "--address", c["address"], "--name", "nl",
                                          "--storage", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{db}"),
                                  cwd=tmp_path, env=cli_env(RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            def on_worker_with_checkpoint():
                for name, rows in trial_results(sweep).items():
                    if (len(rows) >= 2 and rows[-1].get("node_ip") == NODE_IP and not rows[-1].get("done")
                            and list((sweep / name).glob("checkpoint_*/state.pt"))):
                        return name, rows[-1]
                return None

            moved, last = wait_for(on_worker_with_checkpoint, 600, "a checkpointed trial on the worker node",
                                   alive=driver)
            stop_node(c["worker"])  # SIGTERM to `ray start --block`'s group, SIGKILL after 30 s
            assert alive_nodes(c["address"], c["env"]) == 1
            out, _ = driver.communicate(timeout=900)
        finally:
            kill_group(driver)
    assert driver.returncode == 0, out[-4000:]
    print(f"node loss: stopped {NODE_IP} after report {last['training_iteration']} of {moved} "
          f"(iteration {last['iteration']})")

    rows = trial_results(sweep)[moved]
    on_head = [r for r in rows if r["node_ip"] == HEAD_IP]
    assert on_head and all(r["node_ip"] == NODE_IP for r in rows[: rows.index(on_head[0])])
    # continued from its checkpoint on the head, not from zero
    assert on_head[0]["iteration"] > PER_REPORT and on_head[-1]["iteration"] == ITERS and on_head[-1]["done"]

    runs = mlflow_runs(db, "rel-nodeloss")
    children = {r.data.tags["trial_name"]: r for r in runs if r.data.tags.get("role") == "trial"}
    assert len(children) == 2 and len([r for r in runs if r.data.tags.get("role") == "sweep"]) == 1
    for name, r in children.items():
        assert r.info.status == "FINISHED", r.data.tags
        steps = steps_of(db, r.info.run_id, "iteration")
        assert [s for s, _ in steps] == list(range(1, ITERS // PER_REPORT + 1)), steps
    run = next(r for n, r in children.items() if moved.startswith(n))
    assert run.data.tags["nodes"] == f"{NODE_IP},{HEAD_IP}" and run.data.tags["node_ip"] == HEAD_IP
    assert int(run.data.tags["num_failures"]) >= 1 and "/checkpoint_" in run.data.tags["restored_from"]
    print(f"node loss: after: 2 trial runs FINISHED, {ITERS // PER_REPORT} reports each; moved trial ran on "
          f"{run.data.tags['nodes']}; failures {run.data.tags['num_failures']}")
