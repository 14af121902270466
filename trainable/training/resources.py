"""A trial's share of the machine (docs/architecture.md, resources): its threads, its device.

Oversubscribed trials run slower than single-threaded ones, so every process sets torch's
threads (and inductor's compile workers) to its CPU share. A trial given a GPU share gets
exactly one device (Ray exposes one to it), refuses to start without usable CUDA, caps its
CUDA memory to its share less room for the process's own CUDA context, and records what it
used (docs/reliability.md, devices). ``deterministic`` turns cuDNN/cuBLAS nondeterminism off.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from trainable.config import TrialConfig
from trainable.errors import DeviceError, TrialOutOfMemory

# A CUDA context with cuDNN and cuBLAS loaded takes a few hundred MiB that the caching
# allocator's cap does not count: four 0.25 shares capped at a quarter of the card each would
# overcommit it by four contexts (docs/performance.md, the GPU path).
CONTEXT_RESERVE_BYTES = 768 << 20


def cpu_share() -> int:
    """Threads this process may use: OMP_NUM_THREADS if a scheduler set it, else the affinity mask."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def set_threads(n: int, compile_workers: bool = False) -> int:
    """Set torch's intra-op threads to this process's CPU share (oversubscription is slower,
    docs/architecture.md, resources); with `compile_workers`, inductor's compile workers too
    (by default it starts one per visible core in every trial, docs/performance.md)."""
    n = max(1, int(n) or cpu_share())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if compile_workers:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = n
    return n


def set_determinism(on: bool) -> None:
    """`deterministic: true`: cuDNN deterministic without autotuning, no TF32, and torch's
    deterministic algorithms where it has them (a warning where it has none); off restores
    torch's defaults (docs/reliability.md, devices)."""
    if on:
        # cuBLAS needs a fixed workspace for reproducible GEMMs; read when CUDA initialises.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = not on
    torch.use_deterministic_algorithms(on, warn_only=True)


@dataclass(frozen=True)
class Placement:
    """What a trial actually runs on (tags of its run)."""

    device: torch.device
    share: float  # the GPU share Ray gave it (0: none)
    memory_cap: int  # bytes the caching allocator may hold (0: no cap)
    total_memory: int  # bytes on the device (0: not CUDA)

    def tags(self) -> dict[str, str]:
        cap = f"{self.memory_cap / 2**30:.2f} GiB of {self.total_memory / 2**30:.2f} GiB" if self.memory_cap else "none"
        return {"device/name": str(self.device),
                "device/cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
                "device/memory_cap": cap}


def _cuda_usable() -> str | None:
    """None when CUDA can be used here, else why not."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    if torch.cuda.device_count() < 1:
        return "no CUDA device is visible"
    return None


def resolve_device(cfg: TrialConfig) -> torch.device:
    return place(cfg).device


def place(cfg: TrialConfig) -> Placement:
    """The trial's device, checked against its GPU share, with the memory cap applied."""
    share = float(cfg.gpu_fraction)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    if cfg.device == "auto":
        if share > 0:
            why = _cuda_usable()
            if why:
                raise DeviceError(f"this trial was given {share:g} GPU but CUDA is not usable on this node ({why}; "
                                  f"CUDA_VISIBLE_DEVICES={visible}); refusing to train on the CPU instead")
            dev = torch.device("cuda", 0)
        else:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(cfg.device)
        if dev.type == "cuda":
            why = _cuda_usable()
            if why:
                raise DeviceError(f"device: {cfg.device!r} requested but CUDA is not usable on this node ({why}; "
                                  f"CUDA_VISIBLE_DEVICES={visible})")
            if share > 0 and (dev.index or 0) != 0:
                raise DeviceError(f"device: {cfg.device!r} with a GPU share: Ray exposes exactly one device to a "
                                  f"trial, as cuda:0; set device: cuda or auto")
    set_determinism(cfg.deterministic)
    cap = total = 0
    if dev.type == "cuda":
        index = dev.index or 0
        total = int(torch.cuda.get_device_properties(index).total_memory)
        if 0 < share < 1:
            cap = memory_cap(share, total)
            # A fractional trial keeps to its share of the card (docs/architecture.md, resources).
            torch.cuda.set_per_process_memory_fraction(cap / total, index)
    return Placement(dev, share, cap, total)


def memory_cap(share: float, total: int) -> int:
    """Bytes the allocator may hold for a `share` of a `total`-byte card: the share less the
    process's CUDA context, which the cap does not count (never below a tenth of the share)."""
    want = share * total
    return int(max(want - CONTEXT_RESERVE_BYTES, want / 10))


@contextlib.contextmanager
def naming_oom(trial: str, placement: Placement | None) -> Iterator[None]:
    """Turn CUDA's out-of-memory error into one line naming the trial, its share and its cap."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        if placement is None:
            raise
        first = (str(exc).strip().splitlines() or ["out of memory"])[0]
        cap = placement.tags()["device/memory_cap"]
        raise TrialOutOfMemory(
            f"trial {trial} ran out of CUDA memory on {placement.device} within its share of {placement.share:g} GPU "
            f"(memory cap {cap}); give it a larger resources.gpu or a smaller batch_size/eval_batch_size "
            f"({first[:200]})") from None
