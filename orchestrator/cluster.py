"""A sweep across nodes (docs/architecture.md, cluster; docs/reliability.md, cluster).

What the driver settles before any trial starts, so a multi-node sweep fails in seconds and
in one line rather than after the first reports of every trial:

* paths: ``data_root`` and ``cache_dir`` are made absolute on the driver (a worker node has
  its own working directory);
* every node that can hold a trial runs one small Ray task: datasets that download are
  fetched there once, under a file lock (trials on that node then find them), datasets that
  do not are checked; with ``--address`` a local storage path must be visible from the node;
  with a GPU share, CUDA must be usable there;
  the first node that fails is named in a :class:`NodeCheckError` (exit 2);
* the placement wait asks the autoscaler for the bundles it waits for;
* checkpoints on remote storage (``s3://…``) are fetched through pyarrow's filesystems for the
  MLflow LoggedModel and ``export``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from trainable.config import TrialConfig
from trainable.text import quote

PATH_KEYS = ("data_root", "cache_dir")
PROBE_PREFIX = ".l2lda-node-probe-"


class NodeCheckError(RuntimeError):
    """A node of the cluster cannot run the sweep's trials (a dataset, the storage); one line, exit 2."""


# ------------------------------------------------------------------------------------ paths
def driver_paths(cfg: Mapping[str, Any], start: str | os.PathLike | None = None) -> dict[str, Any]:
    """`cfg` with `data_root` and `cache_dir` absolute, resolved against the driver's working
    directory (their defaults included): every trial on every node then means the same folder."""
    base = Path(start or os.getcwd())
    out = dict(cfg)
    for key in PATH_KEYS:
        value = out.get(key, getattr(TrialConfig, key))
        if isinstance(value, str):
            p = Path(os.path.expanduser(value))
            out[key] = str(p if p.is_absolute() else (base / p).resolve())
    return out


# ------------------------------------------------------------------------- per-node checks
def sweep_datasets(study: Any) -> list[tuple[str, str, bool]]:
    """(dataset, absolute data_root, download) of every dataset the study's trials read that
    has files on disk (the bundled mnist5k has none)."""
    from trainable.data.registry import DATASETS

    base = driver_paths(study.base)
    names = {base.get("dataset", "mnist5k")}
    p = study.params.get("dataset")
    if p is not None:
        names |= {v for v in p.values if isinstance(v, str)}
    return sorted((n, base["data_root"], bool(base.get("download", False))) for n in names
                  if n in DATASETS and DATASETS[n].check is not None)


def node_check(datasets: list[tuple[str, str, bool]], probe: tuple[str, str] | None,
               gpu: float = 0.0) -> str | None:
    """What one node finds wrong, else None (runs in a Ray task on that node, holding a trial's
    GPU share when `gpu`, so it sees what a trial would)."""
    from trainable.data.sources import prepare_dataset

    if gpu > 0:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
            return (f"a trial gets {gpu:g} GPU here, but CUDA is not usable (torch.cuda.is_available() is "
                    f"{torch.cuda.is_available()}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")

    for name, root, download in datasets:
        try:
            prepare_dataset(name, root, download)
        except Exception as exc:  # a node that cannot reach the source, a missing copy, a read-only root
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"dataset {name!r} under {root}: {first[:300]}"
    if probe is not None:
        folder, token = probe
        path = Path(folder) / f"{PROBE_PREFIX}{token}"
        try:
            seen = path.read_text()
        except OSError as exc:
            return (f"--storage {folder} is not visible here ({exc.strerror or exc}); with --address the storage must "
                    f"be a folder every node shares at the same path, or a URI such as s3://bucket/runs")
        if seen != token:
            return f"--storage {folder} here is another folder than the driver's (the probe file differs)"
        mine = Path(folder) / f"{PROBE_PREFIX}{token}.{uuid.uuid4().hex[:8]}"
        try:
            mine.write_text("ok")
            mine.unlink()
        except OSError as exc:
            return f"--storage {folder} is not writable here ({exc.strerror or exc})"
    return None


def _node_label(node: Mapping[str, Any]) -> str:
    ip = node.get("NodeManagerAddress") or "?"
    host = node.get("NodeManagerHostname") or ""
    return f"{ip} ({host})" if host and host != ip else str(ip)


def trial_nodes(study: Any) -> list[dict]:
    """The live nodes that can hold one trial."""
    import ray

    from orchestrator.sweep.connect import placement_problem

    return [n for n in ray.nodes() if n.get("Alive") and placement_problem(study, [n.get("Resources", {})]) is None]


def check_nodes(study: Any, storage: str, address: str | None, log: Callable[[str], None] = print,
                timeout: float | None = None) -> None:
    """On every node that can hold a trial, before any trial: fetch or check the datasets, and
    (with `address` and a local storage path) check the storage is the driver's. The first
    node that fails raises :class:`NodeCheckError` naming it."""
    from orchestrator.sweep.storage import is_local

    datasets = sweep_datasets(study)
    probe_dir = storage if address and is_local(storage) else None
    gpu = float(study.resources.gpu)
    if not datasets and probe_dir is None and gpu == 0:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = trial_nodes(study)
    token = uuid.uuid4().hex
    probe_file = Path(probe_dir) / f"{PROBE_PREFIX}{token}" if probe_dir else None
    what = " and ".join(x for x in (
        ("fetching" if any(d for *_, d in datasets) else "checking") + " " + ", ".join(n for n, *_ in datasets)
        if datasets else "", "checking the storage" if probe_dir else "", "checking CUDA" if gpu else "") if x)
    log(f"nodes: {what} on {len(nodes)} node{'s' if len(nodes) != 1 else ''} before the trials start")
    task = ray.remote(num_cpus=0, num_gpus=gpu, max_retries=0)(node_check)
    try:
        if probe_file is not None:
            probe_file.write_text(token)
        refs = [(n, task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                 .remote(datasets, (probe_dir, token) if probe_dir else None, gpu)) for n in nodes]
        for node, ref in refs:
            try:
                problem = ray.get(ref, timeout=timeout)
            except Exception as exc:  # the task itself died (node lost, import error on the node)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                problem = f"the check could not run there ({type(exc).__name__}: {first[:200]})"
            if problem:
                raise NodeCheckError(f"node {_node_label(node)}: {problem}")
    finally:
        if probe_file is not None:
            probe_file.unlink(missing_ok=True)


# ------------------------------------------------------------------------- autoscaling
def trial_bundle(study: Any) -> dict[str, float]:
    bundle = {"CPU": float(study.resources.cpu)}
    if study.resources.gpu > 0:
        bundle["GPU"] = float(study.resources.gpu)
    return bundle


def concurrent_trials(study: Any) -> int:
    """Trials that run at once: max_concurrent, else every trial the study asks for (at most 64)."""
    total = study.search.num_samples if study.search_type != "grid" else study.grid_size() * study.search.num_samples
    return max(1, min(study.search.max_concurrent or total, total, 64))


def request_bundles(study: Any) -> list[dict[str, float]]:
    """Ask the autoscaler for the trials' bundles (a demand it acts on; ray.nodes() polling is none).
    A cluster without an autoscaler ignores it. Returns what was asked."""
    from ray.autoscaler.sdk import request_resources

    bundles = [trial_bundle(study)] * concurrent_trials(study)
    request_resources(bundles=bundles)
    return bundles


def release_bundles() -> None:
    """Withdraw the demand (it persists until replaced): an idle cluster may scale down again."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])
    except Exception:  # the cluster is gone already
        pass


# ------------------------------------------------------------------------ remote storage
def is_remote(path: str) -> bool:
    return "://" in path


@contextlib.contextmanager
def local_checkpoint(path: str) -> Iterator[Path]:
    """A checkpoint directory on this machine: a local path as it is, a URI (``s3://…``, any
    filesystem pyarrow knows, its credentials and endpoint from the usual environment) copied
    into a temporary folder that is removed afterwards."""
    if not is_remote(path):
        yield Path(path)
        return
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(path)
        info = fs.get_file_info(inner)
    except Exception as exc:
        raise FileNotFoundError(f"checkpoint {quote(path)}: cannot open its storage ({type(exc).__name__}: {exc})") from None
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"checkpoint {quote(path)}: not found on its storage (moved or deleted?)")
    tmp = Path(tempfile.mkdtemp(prefix="l2lda-checkpoint-"))
    try:
        pafs.copy_files(inner, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
