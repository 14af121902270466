"""A trial's run as a researcher reads it (orchestrator/tracking/models.py, records.py): named after
its swept values, holding the resolved config and the dataset, its classifier a LoggedModel MLflow
loads — also when the checkpoint is on S3 storage — and the device it used."""
from __future__ import annotations

import json

import pytest
import torch

from _fake_runs import LR_GRID_SPEC, SPEC, SPEC_TEXT, FakeCheckpoint, FakeTrial, replay, runs_of
from orchestrator.tracking import MLflowCallback


def test_child_runs_are_named_and_hold_the_resolved_config_dataset_and_model(store, tiny_run, tmp_path):
    config, results, ckpt = tiny_run
    cb = MLflowCallback(store, "unit-names", LR_GRID_SPEC, "", "sweep-n", flush_interval=0.0, retry_delays=())
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
