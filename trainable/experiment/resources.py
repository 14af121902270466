"""A trial's share of the machine (docs/architecture.md, resources): its torch threads and its device.

Oversubscribed trials run slower than single-threaded ones, so every process sets torch's
threads to its CPU share; a trial with a fractional GPU caps its CUDA memory to that share.
"""
from __future__ import annotations

import os

import torch

from trainable.config import TrialConfig


def cpu_share() -> int:
    """Threads this process may use: OMP_NUM_THREADS if a scheduler set it, else the affinity mask."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def set_threads(n: int) -> int:
    """Set torch's intra-op threads to this process's CPU share (oversubscription is slower, docs/architecture.md, resources)."""
    n = max(1, int(n) or cpu_share())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def resolve_device(cfg: TrialConfig) -> torch.device:
    if cfg.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(cfg.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device: {cfg.device!r} requested but CUDA is not available on this node")
    if dev.type == "cuda" and 0 < cfg.gpu_fraction < 1:
        # A fractional trial keeps to its share of the card (docs/architecture.md, resources).
        torch.cuda.set_per_process_memory_fraction(cfg.gpu_fraction, dev.index or 0)
    return dev
