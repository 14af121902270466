"""A sweep's nodes, checked before any trial (docs/reliability.md, cluster), on one machine:
driver-resolved paths, the per-node dataset fetch under a lock, the storage probe, the
autoscaler request, checkpoints on S3-compatible storage fetched through pyarrow, and what a
trial records about its device."""
from __future__ import annotations

import os
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from orchestrator import tune_runner
from orchestrator.sweep import connect

try:  # imported here so that each test, not the module, fails where the module is missing
    from orchestrator import cluster
except ImportError:  # pragma: no cover
    cluster = None
from orchestrator.spec.study import build_study

TINY = {"dataset": "mnist5k", "defense": "plain", "batch_size": 16, "warmup": 0, "iterations": 2,
        "steps_per_report": 2, "val_subset": 10, "val_columns": ["natural"], "eval_columns": ["natural"],
        "test_subset": 10, "threads": 1}


def _study(base: dict | None = None, **sections):
    raw = {"name": "nodes", "base": {**TINY, **(base or {})}, "space": {"seed": {"grid": [0, 1]}}, **sections}
    return build_study(raw)


# ------------------------------------------------------------------------------ paths
def test_trial_paths_are_resolved_on_the_driver(tmp_path, monkeypatch):
    """Relative data_root and cache_dir were resolved against each worker's own working directory."""
    monkeypatch.chdir(tmp_path)
    space = tune_runner.param_space(_study({"cache_dir": "cache/here"}))
    assert space["cache_dir"] == str(tmp_path / "cache" / "here")
    assert space["data_root"] == str(tmp_path / "data")  # the default too: a worker has another cwd
    shared = tune_runner.DefineByRun(_study({"data_root": "~/d"}, search={"type": "optuna"},
                                            **{"space": {"lr": {"choice": [0.1, 0.2]}}})).shared
    assert shared["data_root"] == os.path.expanduser("~/d")


# --------------------------------------------------------------------------- downloads
def test_concurrent_downloads_into_one_root_take_turns(tmp_path, monkeypatch):
    """Four trials with `download: true` fetched into one data_root at once and corrupted it."""
    import torchvision.datasets as tvd

    from trainable.data.registry import DATASETS
    from trainable.data.sources import MNIST

    active, most = [0], [0]
    lock = threading.Lock()

    class FakeMNIST:  # torchvision's MNIST as a slow download sees it
        def __init__(self, root, train=True, download=False):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    threads = [threading.Thread(target=MNIST.datasets, args=(DATASETS["mnist"], str(tmp_path / "data"), True))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    assert (tmp_path / "data" / ".l2lda-download.lock").exists()


def test_each_node_fetches_before_the_trials_and_a_failure_names_the_node(tmp_path, ray_session):
    """The dataset pre-flight ran on the driver only and was skipped when downloading; a node that
    cannot fetch now fails the sweep before any trial, naming the node."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    study = _study({"dataset": "mnist", "download": True, "data_root": str(blocker / "data")})
    said: list[str] = []
    with pytest.raises(cluster.NodeCheckError) as exc:
        cluster.check_nodes(study, str(tmp_path / "runs"), None, log=said.append)
    msg = str(exc.value)
    assert msg.startswith("node 127.0.0.2") and "dataset 'mnist'" in msg and "\n" not in msg
    assert said and "fetching mnist on 1 node" in said[0]


def test_prepare_checks_files_when_not_downloading(tmp_path):
    from trainable.data import DatasetMissingError
    from trainable.data.sources import prepare_dataset

    with pytest.raises(DatasetMissingError, match="download: true"):
        prepare_dataset("mnist", str(tmp_path / "none"), False)
    prepare_dataset("mnist5k", str(tmp_path / "none"), True)  # bundled: nothing to fetch
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------- storage
def test_local_storage_with_an_address_must_be_the_same_folder_on_every_node(tmp_path, ray_session):
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.check_nodes(_study(), str(runs), "127.0.0.2:6379", log=lambda m: None)  # this node sees it
    assert not list(runs.iterdir())  # the probe is gone
    # what a node without the driver's folder reports
    assert "is not visible here" in cluster.node_check([], (str(tmp_path / "elsewhere"), "tok"))
    (runs / f"{cluster.PROBE_PREFIX}tok").write_text("other")
    assert "another folder than the driver's" in cluster.node_check([], (str(runs), "tok"))


def test_a_node_without_usable_cuda_fails_a_gpu_study_before_any_trial(monkeypatch):
    """A trial given a GPU share on a node where CUDA is unusable trained on the CPU, silently."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = cluster.node_check([], None, gpu=0.25)
    assert msg.startswith("a trial gets 0.25 GPU here, but CUDA is not usable"), msg
    assert cluster.node_check([], None, gpu=0.0) is None


# -------------------------------------------------------------------------- autoscaling
def test_placement_wait_asks_the_autoscaler_for_the_bundles(monkeypatch):
    """Polling ray.nodes() creates no resource demand: an autoscaling cluster with no GPU worker
    never added one and the sweep ended with a placement error."""
    import ray
    import ray.autoscaler.sdk as sdk

    asked: list = []
    monkeypatch.setattr(sdk, "request_resources", lambda num_cpus=None, bundles=None, **k: asked.append(bundles))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 16.0}}])
    study = _study(resources={"cpu": 2, "gpu": 0.25}, search={"max_concurrent": 3})
    with pytest.raises(connect.PlacementError, match="resources.gpu 0.25"):
        connect.wait_for_placement(study, "head:6379", 0.0, log=lambda m: None)
    assert asked == [[{"CPU": 2.0, "GPU": 0.25}] * 2]  # the grid has two trials, max_concurrent 3
    cluster.release_bundles()
    assert asked[-1] == []


# ---------------------------------------------------------------------- remote storage
def test_a_checkpoint_on_s3_is_fetched_for_loading(tmp_path, s3):
    """With s3:// storage no LoggedModel was written and export refused: both now fetch the
    checkpoint through pyarrow's filesystem."""
    import pyarrow.fs as pafs

    from trainable.config import TrialConfig
    from trainable.experiment.loop import Experiment
    from trainable.weights.export_dir import load_checkpoint_modules

    exp = Experiment(TrialConfig.from_dict({**TINY, "cache_dir": str(tmp_path / "cache")}), use_cache=False)
    exp.step()
    exp.save(tmp_path / "ck")
    fs, inner = pafs.FileSystem.from_uri("s3://l2lda/runs/sweep/trial/checkpoint_000001")
    pafs.copy_files(str(tmp_path / "ck"), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    with cluster.local_checkpoint("s3://l2lda/runs/sweep/trial/checkpoint_000001") as where:
        cfg, clf, _gen, meta = load_checkpoint_modules(where)
        fetched = where
    assert not fetched.exists()  # the temporary copy is removed
    assert meta["iteration"] == 2 and cfg.dataset == "mnist5k"
    ref = exp.classifier.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in clf.state_dict().items())
    with pytest.raises(FileNotFoundError, match="not found on its storage"):
        with cluster.local_checkpoint("s3://l2lda/runs/sweep/missing"):
            pass


def test_remote_checkpoints_are_queued_for_a_logged_model():
    from orchestrator.tracking.writer import Writer

    w = Writer.__new__(Writer)
    w.log_models = True
    w._side = types.SimpleNamespace(render=lambda *a, **k: None)
    w._stage_dir = lambda *parts: Path("/nonexistent")
    run = types.SimpleNamespace(tags={}, last_step={}, history={}, status=None, model_checkpoint=None,
                                terminate=None, key="k", run_name="r")
    w._finish_trial(run, {"status": "FINISHED", "tags": {"checkpoint_path": "s3://l2lda/runs/s/t/checkpoint_000001"}})
    assert run.model_checkpoint == "s3://l2lda/runs/s/t/checkpoint_000001"


# -------------------------------------------------------------------------- the trial
def test_a_trial_reports_its_device_and_names_itself_on_out_of_memory(tmp_path, monkeypatch):
    import ray.tune.trainable.trainable as ray_trainable

    from trainable.training import resources as res
    from trainable.trainable import L2LDATrainable

    monkeypatch.setattr(ray_trainable, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))
    t = L2LDATrainable(config={**TINY, "iterations": 6, "cache_dir": str(tmp_path / "cache")})
    first = t.train()
    assert first["device/name"] == "cpu" and first["device/memory_cap"] == "none"
    assert "device/cuda_visible_devices" in first

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    t.experiment.step = oom
    t.experiment.placement = res.Placement(torch.device("cuda", 0), 0.25, 19 * 2**30, 80 * 2**30)
    with pytest.raises(res.TrialOutOfMemory, match=r"trial .* ran out of CUDA memory on cuda:0 within its share "
                                                    r"of 0.25 GPU"):
        t.train()
    t.stop()
