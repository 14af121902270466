"""The one thin Ray Tune adapter (docs/architecture.md).

:class:`L2LDATrainable` is a class-API ``ray.tune.Trainable`` whose methods call the
plain :class:`trainable.experiment.Experiment`: ``setup`` builds it from the trial's flat
config (``TrialConfig.from_dict``: an unknown key is an error), ``step`` runs
``steps_per_report`` iterations and returns ``train/…``, ``val/…`` and ``time/…``
metrics (the finishing step adds the test robustness matrix — ``matrix/<column>`` and
the correctness vectors as data under ``'matrix'`` — and ``done: True``), and
``save_checkpoint``/``load_checkpoint`` write and read the experiment's own files
(safetensors/``weights_only`` torch files plus JSON; nothing is pickled), returning
None, so a restored trial continues bit for bit on the CPU.

Workers only train and write checkpoints; the driver renders every artifact from the
returned data (docs/architecture.md, tracking). While the finishing step runs the test
matrix (minutes, during which Tune receives no result), the trial posts where it stands —
column, examples done, elapsed, an estimate of what is left — to a small named actor,
:class:`ProgressBoard`, that the driver's progress table reads (docs/architecture.md,
progress). Ray's reporting API has changed several times: this is the
only module in ``trainable/`` that imports Ray.
"""
from __future__ import annotations

import logging
import math
import os
import platform
from typing import Any

import ray
from ray import tune

from trainable.config import TrialConfig
from trainable.experiment.loop import Experiment
from trainable.training.resources import naming_oom

logger = logging.getLogger("l2lda_tune.trial")

# Config keys holding paths: the driver makes them absolute before the sweep (a worker node
# has its own working directory, docs/architecture.md, cluster). A relative path that still
# reaches a trial (a bare tune.Tuner) is resolved against the directory the worker started in,
# never against the trial directory Tune moves it into.
_PATH_KEYS = ("data_root", "cache_dir")


# The driver creates the board before the sweep starts (orchestrator.sweep.run); a trial run
# without it (a bare tune.Tuner) posts nothing.
PROGRESS_BOARD = "l2lda_tune_matrix_progress"


@ray.remote(num_cpus=0)
class ProgressBoard:
    """trial id → the latest matrix progress record (trainable.evaluation.Progress.to_dict(); a
    finished matrix's record says ``finished``)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}

    def put(self, trial_id: str, record: dict[str, Any]) -> None:
        self._records[trial_id] = record

    def get(self, trial_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        if trial_ids is None:
            return dict(self._records)
        return {t: self._records[t] for t in trial_ids if t in self._records}


def progress_board(create: bool = False) -> Any:
    """The sweep's ProgressBoard handle (created if `create`), or None where there is none."""
    if not ray.is_initialized():
        return None
    if create:
        return ProgressBoard.options(name=PROGRESS_BOARD, get_if_exists=True).remote()
    try:
        return ray.get_actor(PROGRESS_BOARD)
    except ValueError:
        return None


def trial_resources_share(resources: Any) -> tuple[float, float]:
    """(CPU, GPU) of a trial from Tune's PlacementGroupFactory or a resources dict."""
    if resources is None:
        return 0.0, 0.0
    bundles = getattr(resources, "bundles", None)
    if bundles is None and isinstance(resources, dict):
        bundles = [resources]
    cpu = sum(float(b.get("CPU", 0) or 0) for b in bundles or [])
    gpu = sum(float(b.get("GPU", 0) or 0) for b in bundles or [])
    return cpu, gpu


def node_info() -> dict[str, str]:
    """Where this trial runs: the tracking callback records it on the trial's run (cluster use)."""
    try:
        ip = ray.util.get_node_ip_address()
    except Exception:  # outside a Ray worker the address may not be resolvable
        ip = ""
    return {"hostname": platform.node(), "node_ip": ip, "node/pid": str(os.getpid())}


class L2LDATrainable(tune.Trainable):
    """A Tune trial: one :class:`Experiment` (classifier, defense, optimisers, RNGs).

    The config is the flat trial dict (YAML base ∪ sampled space), validated by
    :meth:`TrialConfig.from_dict`; inputs are images in [0, 1] and budgets are ℓ∞ in
    pixel space (paper §4, docs/method.md).
    """

    def setup(self, config: dict[str, Any]) -> None:
        cfg = TrialConfig.from_dict(config)
        cpu, gpu = trial_resources_share(getattr(self, "trial_resources", None))
        changes: dict[str, Any] = {}
        # Oversubscribed trials run slower than single-threaded ones (docs/architecture.md, resources): use
        # exactly the CPU share the scheduler gave this trial unless the config says otherwise.
        if cfg.threads == 0:
            changes["threads"] = max(1, int(math.floor(cpu))) if cpu >= 1 else 1
        if cfg.gpu_fraction == 0 and gpu > 0:
            # The trial's GPU share: a fraction caps its CUDA memory; any share refuses to train
            # on the CPU when CUDA is unusable (docs/reliability.md, devices).
            changes["gpu_fraction"] = gpu
        base_dir = os.environ.get("TUNE_ORIG_WORKING_DIR") or os.getcwd()
        for key in _PATH_KEYS:
            value = getattr(cfg, key)
            expanded = os.path.expanduser(value)
            if not os.path.isabs(expanded):
                changes[key] = os.path.join(base_dir, expanded)
        if changes:
            cfg = cfg.replace(**changes)
        self.cfg = cfg
        self.experiment = Experiment(cfg, log=logger.info)
        self._node = node_info()
        board = progress_board()
        if board is not None:
            trial_id = self.trial_id

            def post(progress: Any) -> None:  # fire and forget: the matrix never waits on the driver
                board.put.remote(trial_id, progress.to_dict())

            self.experiment.matrix_progress = post

    def step(self) -> dict[str, Any]:
        with naming_oom(f"{self.trial_name} ({self.trial_id})", self.experiment.placement):
            out = self.experiment.step()
        out.update(self._node)
        out.update(self.experiment.placement.tags())  # device, CUDA_VISIBLE_DEVICES, memory cap: run tags
        out["node/threads"] = float(self.experiment.threads)
        return out

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.experiment.save(checkpoint_dir)
        return None

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        # We always return None from save_checkpoint, so Tune hands back the directory.
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"load_checkpoint: expected a checkpoint directory, got {type(checkpoint).__name__}")
        self.experiment.restore(checkpoint)


def with_resources(cpu: float = 1.0, gpu: float = 0.0) -> Any:
    """The trainable wrapped with per-trial resources (`cpu`, `gpu` 0, a fraction or whole GPUs)."""
    return tune.with_resources(L2LDATrainable, {"cpu": float(cpu), "gpu": float(gpu)})
