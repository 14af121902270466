"""Ray for a sweep (docs/architecture.md, resources and Ray on loopback): the address checked,
Ray started or attached to, and whether a trial can ever be placed.

Local sweeps start Ray on loopback (``_node_ip_address="127.0.0.2"``: a plain ``ray.init()``
would talk over the external interface); ``--address`` attaches to a running cluster, after a
check that fails within seconds. Ray is imported only when a sweep starts.
"""
from __future__ import annotations

import ipaddress
import os
import re
import time
from typing import Any, Callable, Mapping

from orchestrator.spec.study import Study
from trainable.text import quote

LOCAL_NODE_IP = "127.0.0.2"


def _node_ip_for(address: str | None) -> str | None:
    """Loopback clusters (docs/architecture.md, resources): the driver must announce the head's loopback address."""
    if os.environ.get("L2LDA_NODE_IP_ADDRESS"):
        return os.environ["L2LDA_NODE_IP_ADDRESS"]
    if not address:
        return LOCAL_NODE_IP
    if address.startswith(("ray://", "http://", "https://")):
        return None
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:
            return None
    host = address.rsplit(":", 1)[0]
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


class PlacementError(RuntimeError):
    """A trial can never be placed (or the cluster cannot be reached); one line, exit 2."""


def _address_origin(address: str, origin: str) -> str:
    return f"RAY_ADDRESS={address}" if origin == "env" else f"--address {address}"


def check_address(address: str | None, origin: str = "option", timeout: float = 3.0) -> str | None:
    """Fail within seconds, in one line naming the address as the user gave it, when the Ray
    cluster at `address` cannot be reached (before anything is created). Returns the address
    to attach to (None: start a local instance)."""
    if address is None or address.strip() in ("", "local"):
        return None
    address = address.strip()
    what = _address_origin(quote(address)[1:-1] if len(address) > 80 else address, origin)
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except Exception:
            found = None
        if not found:
            raise PlacementError(f"{what}: no running Ray cluster on this machine (start one with `ray start --head`, "
                                 f"or leave the address out to run a local instance)")
        return address
    m = re.fullmatch(r"(?:(ray|http|https)://)?(\[[^\]\s]+\]|[^\s:/\[\]]+)(?::(\d+))?/?", address)
    if not m:
        raise PlacementError(f"{what}: not a Ray address (host:port, ray://host:port or auto)")
    scheme, host, port = m.group(1), m.group(2).strip("[]"), m.group(3)
    port_n = int(port) if port else {"ray": 10001, "http": 8265, "https": 443}.get(scheme or "", 6379)
    if not 0 < port_n < 65536:
        raise PlacementError(f"{what}: port {port_n} is out of range")
    import socket

    try:
        with socket.create_connection((host, port_n), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise PlacementError(f"{what}: no Ray cluster answers at {host}:{port_n} ({reason})") from None
    return address


def local_resources() -> dict[str, float]:
    """What a local Ray instance started here would have: CPUs as Ray counts them, GPUs."""
    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())
    except Exception:
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    gpus = 0.0
    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except Exception:
        pass
    return {"CPU": cpus, "GPU": gpus}


def placement_problem(study: Study, nodes: list[Mapping[str, float]]) -> str | None:
    """Why no node in `nodes` (their total resources) can ever hold one trial, else None."""
    need = {"CPU": study.resources.cpu, "GPU": study.resources.gpu}
    for n in nodes:
        if all(float(n.get(k, 0.0)) + 1e-9 >= v for k, v in need.items() if v > 0):
            return None
    best = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    short = [k for k, v in need.items() if v > 0 and float(best.get(k, 0.0)) + 1e-9 < v]
    parts = ", ".join(f"resources.{k.lower()} {need[k]:g}" for k in short) or "its resources"
    have = f"{best.get('CPU', 0.0):g} CPU, {best.get('GPU', 0.0):g} GPU"
    return f"{parts} per trial, but {'the largest node has' if len(nodes) > 1 else 'this machine has'} {have}"


def check_local_placement(study: Study) -> None:
    """With the tool's own local Ray every resource is known: a trial that could never be
    placed is an error before anything starts (Ray would keep it PENDING forever)."""
    res = local_resources()
    problem = placement_problem(study, [res])
    if problem:
        raise PlacementError(f"{problem}: no trial could ever start (lower resources.cpu/gpu, "
                             f"--cpus-per-trial/--gpus-per-trial, or attach to a cluster with --address)")
    dev = str(study.base.get("device", "auto"))
    if dev.startswith("cuda") and res["GPU"] == 0:
        raise PlacementError(f"base.device: {dev!r} but this machine has no CUDA GPU")


def wait_for_placement(study: Study, address: str, timeout: float, log: Callable[[str], None] = print) -> None:
    """On an existing cluster, wait at most `timeout` seconds for a node that can hold one trial;
    then a one-line PlacementError. The trials' bundles are requested from the autoscaler first:
    polling creates no demand, and an autoscaling cluster adds nodes only for one."""
    import ray

    from orchestrator.cluster import request_bundles

    try:
        request_bundles(study)
    except Exception as exc:  # a cluster without an autoscaler takes the request and ignores it; never fatal
        log(f"autoscaler: resources not requested ({type(exc).__name__}: {exc})")
    deadline = time.monotonic() + timeout
    said = False
    while True:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        problem = placement_problem(study, nodes)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise PlacementError(f"Ray cluster at {address}: {problem}; waited {timeout:g} s for a node that fits "
                                 f"(--placement-timeout)")
        if not said:
            log(f"waiting up to {timeout:g} s for a node that can hold a trial ({problem})")
            said = True
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def init_ray(address: str | None, log: Callable[[str], None] = print) -> bool:
    """Start (or attach to) Ray; returns True when this call started it (and must shut it down)."""
    import signal

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    if hasattr(ray, "LoggingConfig"):  # workers too: per-checkpoint INFO lines would drown the progress table
        kwargs["logging_config"] = ray.LoggingConfig(log_level="WARNING")
    node_ip = _node_ip_for(address)
    if node_ip:
        kwargs["_node_ip_address"] = node_ip
    if address:
        log(f"attaching to Ray cluster at {address}" + (f" (driver on {node_ip})" if node_ip else ""))
        ray.init(address=address, **kwargs)
    else:
        # A loopback-only local instance: token authentication protects clusters shared over a
        # network and only gets in the way here (docs/architecture.md, resources).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # SIGTERM sent to the whole process group (timeout, docker, systemd, Kubernetes) must
        # reach the driver only, which then stops the trials itself: Ray's processes inherit a
        # blocked SIGTERM as they already inherit a blocked SIGINT (docs/reliability.md). They
        # still die with the driver (Ray's kernel fate-sharing), and are stopped with SIGKILL.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            # "local": always a new instance; Ray's default would attach to a cluster started with
            # `ray start` on this machine (`--address auto` does that on purpose).
            ray.init(address="local", include_dashboard=False, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        node = getattr(ray._private.worker, "_global_node", None)
        if node is not None and hasattr(node, "kill_all_processes"):
            kill = node.kill_all_processes
            node.kill_all_processes = lambda *a, **k: kill(*a, **{**k, "allow_graceful": False})
    return True
