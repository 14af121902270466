"""Trial packing: aggregate samples/s of 4 trials sharing a device against 1 trial owning it.

Issue 7, item 6 (target with a GPU: 4 trials at 0.25 GPU give ≥ 3× the samples/s of 1 trial at
1 GPU). The trials are the smoke study's L2L-DA trial (search_spaces/smoke.yaml: mnist5k,
LeNet-5, generator width 16, T = 5, batch 50) scaled up to longer runs, four seeds for the
packed case; they run through the product's path (``build_study`` → ``build_tuner`` with the
MLflow callback on a temporary sqlite store, Ray on loopback from ``init_ray``; the trainable
caps each fractional trial's CUDA memory to its share and sets torch's threads to its CPU share).

Without a GPU the script runs the same comparison on the CPU — 4 trials at 0.5 CPU each (one
torch thread each, two trials per core) against 1 trial at 2 CPUs (two threads) — and says
plainly that the GPU figure was not measured: the CPU ratio says nothing about GPU packing.

Aggregate samples/s is measured on the driver's clock over the window in which every trial of
the case was training (from the last trial's first report to the first trial's last report;
each trial's iteration count is interpolated between its reports), so actor start-up and
staggered starts are not counted as throughput.

    python bench/gpu_packing.py [--iterations N] [--steps-per-report K] [--cpu]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# What orchestrator.sweep.run.run_study sets before building a Tuner.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def smoke_base(iterations: int, steps_per_report: int, cache: str) -> dict[str, Any]:
    """The smoke study's shared config, L2L-DA, scaled to `iterations` adversarial iterations."""
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    base = dict(raw["base"])
    base.pop("seed", None)
    base.update(defense="l2lda", warmup=0, iterations=iterations, steps_per_report=steps_per_report,
                val_subset=50, val_columns=["natural"], eval_columns=["natural"], test_subset=50, cache_dir=cache)
    return base


def interp(stamps: list[float], iters: list[float], t: float) -> float:
    """A trial's iteration count at driver time t (linear between reports)."""
    if t <= stamps[0]:
        return iters[0]
    for (t0, i0), (t1, i1) in zip(zip(stamps, iters), zip(stamps[1:], iters[1:])):
        if t <= t1:
            return i0 + (i1 - i0) * (t - t0) / (t1 - t0)
    return iters[-1]


def run_case(label: str, base: dict, seeds: list[int], cpu: float, gpu: float, root: str) -> dict[str, Any]:
    from ray import tune

    from orchestrator.spec.study import build_study
    from orchestrator.sweep.tuner import build_tuner, make_callbacks

    class Clock(tune.Callback):
        def __init__(self) -> None:
            self.series: dict[str, tuple[list[float], list[float]]] = {}
            self.threads: dict[str, float] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            st, it = self.series.setdefault(trial.trial_id, ([], []))
            st.append(time.perf_counter())
            it.append(float(result["iteration"]))
            self.threads[trial.trial_id] = result.get("node/threads", float("nan"))

    study = build_study({"name": f"packing-{label}", "base": base, "space": {"seed": {"grid": seeds}},
                         "search": {"type": "grid", "max_concurrent": len(seeds)},
                         "resources": {"cpu": cpu, "gpu": gpu}, "checkpoint": {"every": 0, "keep": 1}})
    clock = Clock()
    storage = os.path.join(root, "runs")
    callbacks = make_callbacks(study, tracking_uri=f"sqlite:///{os.path.join(root, 'mlflow.db')}",
                               name=study.name, storage=storage, resume=False) + [clock]
    t0 = time.perf_counter()
    grid = build_tuner(study, name=study.name, storage=storage, callbacks=callbacks, reporter=False).fit()
    wall = time.perf_counter() - t0
    if grid.errors:
        raise SystemExit(f"{label}: a trial failed: {grid.errors[0]}")
    series = list(clock.series.values())
    if any(len(st) < 2 for st, _ in series):
        raise SystemExit(f"{label}: every trial needs at least two reports (raise --iterations)")
    t_a = max(st[0] for st, _ in series)
    t_b = min(st[-1] for st, _ in series)
    if t_b <= t_a:
        raise SystemExit(f"{label}: the trials never trained at the same time (raise --iterations)")
    samples = sum(interp(st, it, t_b) - interp(st, it, t_a) for st, it in series) * base["batch_size"]
    return {"rate": samples / (t_b - t_a), "window": t_b - t_a, "wall": wall, "trials": len(series),
            "threads": sorted(set(clock.threads.values()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=0, help="adversarial iterations per trial (default 400 GPU, 60 CPU)")
    ap.add_argument("--steps-per-report", type=int, default=0, help="default 50 GPU, 5 CPU")
    ap.add_argument("--cpu", action="store_true", help="the CPU comparison even when a GPU is present")
    args = ap.parse_args()
    import torch

    use_gpu = torch.cuda.is_available() and not args.cpu
    iterations = args.iterations or (400 if use_gpu else 60)
    spr = args.steps_per_report or (50 if use_gpu else 5)
    root = tempfile.mkdtemp(prefix="l2lda-packing-")
    base = smoke_base(iterations, spr, os.path.join(root, "cache"))

    import ray

    from orchestrator.sweep.connect import init_ray

    init_ray(None, log=lambda m: None)
    try:
        ncpu = int(ray.cluster_resources().get("CPU", 1))
        if use_gpu:
            per = max(1.0, float(ncpu // 4))
            cases = [("packed", [0, 1, 2, 3], per, 0.25), ("single", [0], per, 1.0)]
        else:
            cases = [("packed", [0, 1, 2, 3], 0.5, 0.0), ("single", [0], 2.0, 0.0)]
            if ncpu < 2:
                raise SystemExit(f"the CPU comparison needs 2 CPUs in Ray, found {ncpu}")
        res = {label: run_case(label, base, seeds, cpu, gpu, root) for label, seeds, cpu, gpu in cases}
    finally:
        ray.shutdown()

    device = torch.cuda.get_device_name(0) if use_gpu else "CPU"
    print(f"smoke study scaled up: L2L-DA (width {base['gen_width']}, T {base['T']}), LeNet-5/mnist5k, "
          f"batch {base['batch_size']}, {iterations} iterations per trial; device: {device}")
    for (label, seeds, cpu, gpu), (_, r) in zip(cases, res.items()):
        share = f"{gpu:g} GPU + {cpu:g} CPU" if use_gpu else f"{cpu:g} CPU"
        print(f"  {label:6s}: {len(seeds)} trial(s) at {share} each (torch threads {r['threads']}): "
              f"{r['rate']:8.1f} samples/s aggregate over a {r['window']:.0f} s window (sweep wall {r['wall']:.0f} s)")
    ratio = res["packed"]["rate"] / res["single"]["rate"]
    if use_gpu:
        print(f"GPU packing ratio (4 × 0.25 GPU) / (1 × 1 GPU): {ratio:.2f}  "
              f"(target ≥ 3: {'met' if ratio >= 3 else 'MISSED'})")
    else:
        print(f"CPU packing ratio (4 × 0.5 CPU) / (1 × 2 CPU): {ratio:.2f}  — a CPU figure only")
        print("GPU figure NOT MEASURED: no GPU on this machine (the ≥ 3× target is for 4 trials at 0.25 GPU).")


if __name__ == "__main__":
    main()
