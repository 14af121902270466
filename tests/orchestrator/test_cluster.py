"""A real two-node Ray cluster on loopback (DESIGN §8): head on 127.0.0.2, a second node on
127.0.0.3, token authentication off (RAY_AUTH_MODE=disabled on every process). A sweep runs
through it once with `--address` and once submitted to the head's job server with
`ray job submit`; each child run records its node, and trials ran on both nodes."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from _loopback_cluster import HEAD_IP, NODE_IP, ray_bin, start_loopback_cluster
from _ray_fixtures import REPO, cli_cmd, mlflow_runs, run_cli

pytestmark = pytest.mark.slow

SPEC = """\
name: {name}
base: {{dataset: mnist5k, defense: plain, batch_size: 50, warmup: 0, iterations: 200, steps_per_report: 100,
       val_subset: 50, val_columns: [natural], cache_dir: {cache}, threads: 1}}
space: {{seed: {{grid: [0, 1, 2, 3]}}}}
search: {{type: grid, metric: val/natural, mode: max}}
resources: {{cpu: 1}}
checkpoint: {{every: 1, keep: 1}}
evaluation: {{columns: [natural, fgsm], test_subset: 20}}
"""


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    with start_loopback_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def _check_both_nodes(db: Path, experiment: str) -> None:
    runs = mlflow_runs(db, experiment)
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(children) == 4, [r.data.tags for r in runs]
    assert all(r.data.tags.get("status") == "FINISHED" for r in children)
    nodes = {r.data.tags.get("node_ip") for r in children}
    assert nodes == {HEAD_IP, NODE_IP}, nodes


def test_sweep_attached_with_address(loopback_cluster, tmp_path):
    c = loopback_cluster
    spec = tmp_path / "cl.yaml"
    spec.write_text(SPEC.format(name="cluster-address", cache=tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    p = run_cli("--space", str(spec), "--address", c["address"], "--storage", str(tmp_path / "runs"),
                "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path, timeout=600, RAY_AUTH_MODE="disabled")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"attaching to Ray cluster at {c['address']}" in p.stdout
    _check_both_nodes(db, "cluster-address")


def test_sweep_through_ray_job_submit(loopback_cluster, tmp_path):
    c = loopback_cluster
    spec = tmp_path / "cl.yaml"
    spec.write_text(SPEC.format(name="cluster-job", cache=tmp_path / "cache"))
    db = tmp_path / "mlflow.db"
    runtime_env = {"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
                                "RAY_AIR_NEW_OUTPUT": "0", "RAY_USAGE_STATS_ENABLED": "0"}}
    entry = [*cli_cmd("--space", str(spec), "--address", "auto", "--storage", str(tmp_path / "runs"),
                      "--tracking-uri", f"sqlite:///{db}")]
    cmd = [ray_bin(), "job", "submit", "--address", c["dashboard"], "--runtime-env-json", json.dumps(runtime_env),
           "--", *entry]
    # The head's job agent comes up a little after the cluster answers; Ray says so with a 500
    # ("No available agent to submit job, please try again later"): retry that, and only that.
    for _ in range(10):
        p = subprocess.run(cmd, cwd=tmp_path, env=c["env"], capture_output=True, text=True, timeout=600)
        out = p.stdout + p.stderr
        if p.returncode == 0 or "No available agent to submit job" not in out:
            break
        time.sleep(3)
    assert p.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    assert "best trial:" in out
    _check_both_nodes(db, "cluster-job")
