"""A real two-node Ray cluster on loopback (DESIGN §8): head on 127.0.0.2, a second node on
127.0.0.3, token authentication off (RAY_AUTH_MODE=disabled on every process). A sweep runs
through it once with `--address` and once submitted to the head's job server with
`ray job submit`; each child run records its node, and trials ran on both nodes."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from _ray_fixtures import REPO, cli_cmd, cli_env, free_port, mlflow_runs, run_cli

pytestmark = pytest.mark.slow

HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"

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


def _ray_bin() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _start(args: list[str], env: dict, log: Path, cwd: Path | None = None,
           wrap: list[str] | None = None) -> subprocess.Popen:
    # --block keeps the node's processes under this one process group, so the test stops
    # exactly what it started (never `ray stop`, which would stop every Ray on the machine).
    cmd = [_ray_bin(), "start", "--block", *args]
    if wrap:  # e.g. a private mount namespace: `sh -c '<mount …> && exec "$@"' sh ray start …`
        cmd = [*wrap, *cmd]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=cwd)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _alive_nodes(address: str, env: dict) -> int:
    code = ("import ray; ray.init(address=%r, _node_ip_address=%r, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % (address, HEAD_IP))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    try:
        return int(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return 0


@contextlib.contextmanager
def start_loopback_cluster(tmp: Path, *, head_cpus: int = 1, worker_cwd: Path | None = None,
                           worker_wrap: list[str] | None = None, **extra_env: str) -> Iterator[dict]:
    """Head on 127.0.0.2 and a second node on 127.0.0.3, one CPU each (the head `head_cpus`); yields
    the address, the job server's URL, the environment and the two `ray start --block` processes
    (`head`, `worker`). The worker node may start in another working directory (`worker_cwd`) and
    under a wrapper command (`worker_wrap`); `extra_env` goes to every node."""
    port, dash = free_port(HEAD_IP), free_port(HEAD_IP)
    env = cli_env(RAY_AUTH_MODE="disabled", **extra_env)
    head = _start(["--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", f"--num-cpus={head_cpus}", "--num-gpus=0",
                   "--include-dashboard=true", f"--dashboard-host={HEAD_IP}", f"--dashboard-port={dash}",
                   "--disable-usage-stats"], env, tmp / "head.log")
    nodes = [head]
    address = f"{HEAD_IP}:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and _alive_nodes(address, env) < 1:
            assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
            time.sleep(2)
        worker = _start([f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=1", "--num-gpus=0",
                         "--disable-usage-stats"], env, tmp / "node.log", cwd=worker_cwd, wrap=worker_wrap)
        nodes.append(worker)
        while time.time() < deadline and _alive_nodes(address, env) < 2:
            assert worker.poll() is None, (tmp / "node.log").read_text()[-3000:]
            time.sleep(2)
        assert _alive_nodes(address, env) == 2, "the second node did not join"
        yield {"address": address, "dashboard": f"http://{HEAD_IP}:{dash}", "tmp": tmp, "env": env,
               "head": head, "worker": worker}
    finally:
        for p in reversed(nodes):
            _stop(p)
        # `ray start` recorded this cluster as the machine's current one; once it is gone, a
        # later plain ray.init() would try to attach to the dead address (`ray stop` removes it).
        current = Path("/tmp/ray/ray_current_cluster")
        try:
            if current.read_text().strip() == address:
                current.unlink()
        except OSError:
            pass


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
    cmd = [_ray_bin(), "job", "submit", "--address", c["dashboard"], "--runtime-env-json", json.dumps(runtime_env),
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
