"""The MLflow record of a trial that Tune recovers after a crash (issue 6 §1, fast version of
test_worker_crash.py with tests/_fake_runs.py's fake trials): the recovery is tagged with the
reason and the checkpoint it continues from, re-reported steps are not logged twice, and the
run ends FINISHED."""
from __future__ import annotations

from _fake_runs import SPEC, SPEC_TEXT, FakeTrial, replay, runs_of
from orchestrator.tracking import MLflowCallback


def test_recovered_trial_keeps_one_run_and_names_its_checkpoint(store, tiny_run, tmp_path):
    config, results, ckpt = tiny_run
    cb = MLflowCallback(store, "rel-recover", SPEC, SPEC_TEXT, "sweep-rec", flush_interval=0.0, retry_delays=())
    cb.setup()
    t = FakeTrial("k0001", config, checkpoint=ckpt)
    replay(cb, t, results, steps=range(1, 3), complete=False)
    cb.on_checkpoint(iteration=0, trials=[t], trial=t, checkpoint=t.checkpoint)
    err = tmp_path / "error.txt"
    err.write_text("Failure # 1\nray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n")
    t.error_file, t.num_failures = str(err), 1
    cb.on_trial_recover(iteration=0, trials=[t], trial=t)
    cb.sync()  # the writer thread has written the recovery
    _, _, children = runs_of(store, "rel-recover")
    assert children["k0001"].data.tags["status"] == "RECOVERING"
    t.status = "RUNNING"
    replay(cb, t, results, steps=range(2, 4))  # the new actor re-reports step 2, then finishes
    cb.on_experiment_end(trials=[t])
    client, parents, children = runs_of(store, "rel-recover")
    run = children["k0001"]
    assert len(children) == 1 and run.info.status == "FINISHED"
    assert run.data.tags["restored_from"] == ckpt and run.data.tags["num_failures"] == "1"
    assert run.data.tags["last_failure"].startswith("ActorDiedError: ")
    for key in ("iteration", "val/natural", "train/loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
