"""A real two-node Ray cluster on loopback (DESIGN §8): head on 127.0.0.2, a second node on
127.0.0.3, token authentication off; each node a `ray start --block` process group the test
stops itself (never `ray stop`, which would stop every Ray on the machine)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from _ray_fixtures import cli_env, free_port

HEAD_IP, NODE_IP = "127.0.0.2", "127.0.0.3"


def ray_bin() -> str:
    """The `ray` executable beside this interpreter (else on PATH)."""
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _start(args: list[str], env: dict, log: Path, cwd: Path | None = None,
           wrap: list[str] | None = None) -> subprocess.Popen:
    # --block keeps the node's processes under this one process group, so the test stops
    # exactly what it started (never `ray stop`, which would stop every Ray on the machine).
    cmd = [ray_bin(), "start", "--block", *args]
    if wrap:  # e.g. a private mount namespace: `sh -c '<mount …> && exec "$@"' sh ray start …`
        cmd = [*wrap, *cmd]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=cwd)


def stop_node(proc: subprocess.Popen) -> None:
    """Stop a `ray start --block` process group: SIGTERM, SIGKILL after 30 s."""
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


def alive_nodes(address: str, env: dict) -> int:
    """How many nodes of the cluster at `address` are alive (0 when it does not answer)."""
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
        while time.time() < deadline and alive_nodes(address, env) < 1:
            assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
            time.sleep(2)
        worker = _start([f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=1", "--num-gpus=0",
                         "--disable-usage-stats"], env, tmp / "node.log", cwd=worker_cwd, wrap=worker_wrap)
        nodes.append(worker)
        while time.time() < deadline and alive_nodes(address, env) < 2:
            assert worker.poll() is None, (tmp / "node.log").read_text()[-3000:]
            time.sleep(2)
        assert alive_nodes(address, env) == 2, "the second node did not join"
        yield {"address": address, "dashboard": f"http://{HEAD_IP}:{dash}", "tmp": tmp, "env": env,
               "head": head, "worker": worker}
    finally:
        for p in reversed(nodes):
            stop_node(p)
        # `ray start` recorded this cluster as the machine's current one; once it is gone, a
        # later plain ray.init() would try to attach to the dead address (`ray stop` removes it).
        current = Path("/tmp/ray/ray_current_cluster")
        try:
            if current.read_text().strip() == address:
                current.unlink()
        except OSError:
            pass
