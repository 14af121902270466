"""Per-iteration time of one trial inside Ray Tune next to the same config in the plain runner.

Issue 4 asks for this number: the Ray adapter must not slow training down. Both sides run
the same TrialConfig on one thread (the trial gets 1 CPU, so L2LDATrainable sets torch's
threads to 1); rounds alternate plain / Ray so that load on a shared machine hits both alike.
The figure compared is the training loop's own `time/iter_s` (median over reports), so Ray's
actor start-up is excluded; it is printed separately.

    python bench/tune_overhead.py [--defense pgd10_at] [--iterations 300] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import torch  # noqa: E402

from trainable.config import TrialConfig  # noqa: E402
from trainable.runner import Experiment  # noqa: E402


def plain(cfg: dict) -> tuple[list[float], float]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    exp = Experiment(TrialConfig.from_dict({**cfg, "threads": 1}))
    per_iter = []
    while not exp.done:
        per_iter.append(exp.step()["time/iter_s"])
    return per_iter, time.perf_counter() - t0


def in_ray(cfg: dict, storage: str, tag: str) -> tuple[list[float], float]:
    from ray import tune

    from orchestrator.spec import build_study
    from orchestrator.tune_runner import build_tuner

    class Collect(tune.Callback):
        def __init__(self) -> None:
            self.per_iter: list[float] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.per_iter.append(result["time/iter_s"])

    study = build_study({"name": "overhead", "base": {k: v for k, v in cfg.items() if k != "seed"},
                         "space": {"seed": cfg.get("seed", 0)}, "resources": {"cpu": 1},
                         "checkpoint": {"every": 0, "keep": 1}})
    cb = Collect()
    t0 = time.perf_counter()
    tuner = build_tuner(study, name=f"overhead-{tag}", storage=storage, callbacks=[cb], reporter=False)
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return cb.per_iter, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defense", default="pgd10_at")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--steps-per-report", type=int, default=50)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="l2lda-overhead-")
    cfg = dict(dataset="mnist5k", defense=args.defense, warmup=0, iterations=args.iterations,
               steps_per_report=args.steps_per_report, batch_size=args.batch, val_subset=50,
               val_columns=["natural"], eval_columns=["natural"], test_subset=50, gen_width=16, T=5,
               cache_dir=os.path.join(cache, "cache"))
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.2", include_dashboard=False, num_cpus=1,
             log_to_driver=False, logging_level="ERROR")
    res: dict[str, list[float]] = {"plain": [], "ray": []}
    walls: dict[str, list[float]] = {"plain": [], "ray": []}
    try:
        for r in range(args.rounds):
            p, wp = plain(cfg)
            q, wq = in_ray(cfg, os.path.join(cache, "runs"), str(r))
            res["plain"] += p[1:]  # the first report pays one-off costs on both sides
            res["ray"] += q[1:]
            walls["plain"].append(wp)
            walls["ray"].append(wq)
    finally:
        ray.shutdown()
    mp, mr = statistics.median(res["plain"]), statistics.median(res["ray"])
    print(f"config: {args.defense}, LeNet-5/mnist5k, batch {args.batch}, {args.iterations} iterations, 1 thread")
    print(f"plain runner : {mp * 1e3:7.1f} ms/iteration (median of {len(res['plain'])} reports); "
          f"trial wall {statistics.median(walls['plain']):.1f} s")
    print(f"inside Ray   : {mr * 1e3:7.1f} ms/iteration (median of {len(res['ray'])} reports); "
          f"trial wall incl. Ray start-up {statistics.median(walls['ray']):.1f} s")
    print(f"ratio Ray / plain: {mr / mp:.3f}")


if __name__ == "__main__":
    main()
