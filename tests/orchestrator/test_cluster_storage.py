"""A sweep across two nodes with remote storage, end to end (docs/architecture.md, cluster).

A two-node Ray cluster on loopback whose worker node starts in another working directory (and,
where this machine allows a private mount namespace, sees a different folder at one path), and
an S3-compatible server (moto) on 127.0.0.1 started by the test:

* `--storage s3://…`: one trial runs on the worker node, with the relative cache path resolved
  on the driver; its checkpoint lands in the bucket, its classifier becomes an MLflow
  LoggedModel, and `export` fetches the checkpoint and writes an export a CPU-only process loads;
* `--storage <local path>` that the worker node does not see: exit 2 before any trial, in one
  line naming the node.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _loopback_cluster import NODE_IP, start_loopback_cluster
from _ray_fixtures import REPO, mlflow_runs, run_cli

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
base: {{dataset: mnist5k, defense: fgsm_at, batch_size: 20, warmup: 4, iterations: 4, steps_per_report: 4,
       val_subset: 20, val_columns: [natural], cache_dir: rel-cache, threads: 1}}
space: {{seed: {{grid: [0]}}}}
search: {{type: grid, metric: val/natural, mode: max}}
resources: {{cpu: 1}}
checkpoint: {{every: 1, keep: 1}}
evaluation: {{columns: [natural], test_subset: 20}}
"""


def _namespace_wrap(hidden: Path) -> list[str] | None:
    """A wrapper that starts a command in a private mount namespace with an empty tmpfs over
    `hidden` (a node that does not share that folder), or None where this machine forbids it."""
    wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount -t tmpfs l2lda-test {hidden} && exec \"$@\"", "sh"]
    try:
        ok = subprocess.run([*wrap, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return wrap if ok else None


def test_two_nodes_s3_storage_logged_model_export_and_unseen_local_storage(tmp_path, s3):
    driver, worker, hidden = tmp_path / "driver", tmp_path / "worker", tmp_path / "hidden"
    for d in (driver, worker, hidden):
        d.mkdir()
    wrap = _namespace_wrap(hidden)
    t0 = time.monotonic()
    # The head holds no CPU for trials: the trial runs on the worker node, in its own working directory.
    with start_loopback_cluster(tmp_path, head_cpus=0, worker_cwd=worker, worker_wrap=wrap, **s3) as c:
        spec = driver / "s3.yaml"
        spec.write_text(SPEC.format(name="cluster-s3"))
        db = driver / "mlflow.db"
        p = run_cli("--space", str(spec), "--address", c["address"], "--storage", "s3://l2lda/runs",
                    "--name", "s3sweep", "--tracking-uri", f"sqlite:///{db}", cwd=driver, timeout=600,
                    RAY_AUTH_MODE="disabled", **s3)
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
        runs = mlflow_runs(db, "cluster-s3")
        (child,) = [r for r in runs if r.data.tags.get("role") == "trial"]
        tags = child.data.tags
        assert tags.get("status") == "FINISHED", tags
        assert tags.get("node_ip") == NODE_IP and tags.get("device") == "cpu", tags
        assert tags.get("checkpoint_path", "").startswith("s3://l2lda/runs/s3sweep/"), tags
        assert tags.get("model_id"), f"no LoggedModel: {tags}; {p.stdout[-2000:]}"
        # the relative cache path was resolved on the driver, not in the worker's directory
        assert list((driver / "rel-cache" / "warmup").glob("*.pt")), p.stdout[-2000:]
        assert not (worker / "rel-cache").exists()

        from mlflow import MlflowClient

        model = MlflowClient(f"sqlite:///{db}").get_logged_model(tags["model_id"])
        assert str(getattr(model.status, "name", model.status)).endswith("READY"), model.status

        e = run_cli("export", "--experiment", "cluster-s3", "--out", str(driver / "best"),
                    "--tracking-uri", f"sqlite:///{db}", cwd=driver, timeout=300, **s3)
        assert e.returncode == 0, e.stdout[-3000:] + e.stderr[-3000:]
        meta = json.loads((driver / "best" / "export.json").read_text())
        assert meta["checkpoint"]["path"].startswith("s3://l2lda/runs/s3sweep/")
        code = ("import torch; from trainable.weights import load_export; m = load_export(%r); "
                "print(tuple(m(torch.rand(2, 1, 28, 28)).shape), torch.cuda.is_available())" % str(driver / "best"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
        assert out.stdout.strip() == "(2, 10) False", out.stderr[-2000:]

        if wrap is not None:  # the worker node sees an empty folder at `hidden`
            p2 = run_cli("--space", str(spec), "--address", c["address"], "--storage", str(hidden / "runs"),
                         "--name", "unseen", "--tracking-uri", f"sqlite:///{driver / 'mlflow2.db'}", cwd=driver,
                         timeout=300, RAY_AUTH_MODE="disabled", **s3)
            err = p2.stderr.strip().splitlines()
            assert p2.returncode == 2, p2.stdout[-3000:] + p2.stderr[-3000:]
            assert err and err[-1].startswith(f"l2lda-tune: error: node {NODE_IP}"), p2.stderr[-2000:]
            assert "is not visible here" in err[-1]
            assert not (hidden / "runs" / "unseen").exists()  # the claimed sweep folder was removed again
    print(f"two-node S3 sweep test: {time.monotonic() - t0:.0f} s; storage check by namespace: {wrap is not None}")
