"""Shared helpers for the benchmarks: trained models cached on disk, side-by-side timing."""
from __future__ import annotations

import hashlib
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from trainable.attacks.primitives import EvalContext
from trainable.config import TrialConfig
from trainable.evaluation import robustness_matrix
from trainable.experiment.loop import Experiment

CACHE = Path(os.environ.get("L2LDA_BENCH_CACHE", ".cache/l2lda-tune/bench"))


def trained_experiment(defense: str, iterations: int, warmup: int = 300, **kw) -> Experiment:
    """A LeNet-5 on mnist5k trained once and cached (checkpoint under CACHE). The bench's torch
    thread count stays as the bench set it (an Experiment sets its own CPU share)."""
    threads = torch.get_num_threads()
    try:
        return _trained(defense, iterations, warmup, **kw)
    finally:
        torch.set_num_threads(threads)


def _trained(defense: str, iterations: int, warmup: int, **kw) -> Experiment:
    cfg = TrialConfig.from_dict(dict(defense=defense, iterations=iterations, warmup=warmup,
                                     steps_per_report=max(1, iterations + warmup), cache_dir=str(CACHE), **kw))
    key = CACHE / f"{defense}-{iterations}-{warmup}-{hashlib.sha256(cfg.to_json().encode()).hexdigest()[:10]}"
    if (key / "state.pt").is_file():
        return Experiment.from_checkpoint(key)
    exp = Experiment(cfg, log=print)
    print(f"[bench] training {defense} LeNet-5 for {warmup}+{iterations} iterations (cached in {key})", flush=True)
    while not exp.done:
        exp.train(500)
    exp.save(key)
    return exp


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each fn, run alternately so drift and load hit all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for k, fn in fns.items():  # warm-up call each
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    print(f"[bench] torch threads: {torch.get_num_threads()}")


def accuracy_under(model: torch.nn.Module, exp: Experiment, columns: tuple[str, ...], eps: float) -> dict[str, float]:
    """Accuracy (a fraction) of `model` under each column on `exp`'s fixed test points, no masking checks:
    how the fidelity benches score the tool's model and their reference loop's alike."""
    idx = torch.as_tensor(exp.test_idx)
    x, y = exp.data.test_x[idx], exp.data.test_y[idx]
    ctx = EvalContext(cfg=exp.cfg, data=exp.data, device=exp.device, seed=0)
    res = robustness_matrix(model, x, y, columns=columns, eps=eps, ctx=ctx, indices=exp.test_idx, masking=False)
    return {c: res.metrics[f"matrix/{c}"] for c in columns}
