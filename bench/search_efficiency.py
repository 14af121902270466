"""Search efficiency: Optuna TPE with ASHA against the full grid, in trial-iterations to a near-best trial.

Issue 7, item 5 (target: TPE+ASHA needs ≤ 0.4× the grid's compute). Both searches run the
product's path: a study built in code with ``orchestrator.spec.build_study``, the Tuner from
``orchestrator.tune_runner.build_tuner`` with ``make_callbacks`` (MLflow on a temporary sqlite
store), Ray on loopback from ``init_ray``. One extra driver callback counts compute.

The space (what fits this 2-core machine, see bench/README.md): PGD10-AT on mnist5k, LeNet-5,
ε = 0.1, from scratch (no warm-up), batch 50, 150 iterations, a report every 25 iterations;
4 learning rates × 2 momenta = 8 configurations (PGD10-AT's step is fixed at ε/4, so
``eps_step_frac`` would not change it). L2L-DA, even with a narrow generator,
costs ~0.4–1.1 s per iteration here, so 8 × 150 iterations of it would not leave time for the
second search within 15 minutes; at ε = 0.3 PGD-AT from scratch learns nothing in 150
iterations (every trial at val/worst 0, a degenerate benchmark), at ε = 0.1 the grid spreads.

Compute is counted in trial-iterations (iterations the trials trained, whatever the
scheduler did with them). The grid's best = the best final val/worst over its trials; the
target = that − 0.01 (one point). TPE+ASHA's figure = trial-iterations trained, in the order
results reached the driver, until the first trial that ENDED (finished or stopped by ASHA)
with a final val/worst ≥ target — what the summary and `export` would then pick. Trials run
one at a time (max_concurrent 1), so ASHA's decisions and the figure do not depend on timing;
on the CPU every trial is deterministic too.

    python bench/search_efficiency.py [--quick] [--search-seeds 0] [--grid-concurrent 2]
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

# What orchestrator.tune_runner.run_study sets before building a Tuner.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

METRIC = "val/worst"

FULL = dict(
    base=dict(dataset="mnist5k", defense="pgd10_at", eps=0.1, warmup=0, iterations=150, steps_per_report=25,
              batch_size=50, val_subset=300, val_columns=["natural", "pgd10"], eval_columns=["natural"],
              test_subset=100),
    space={"lr": [0.01, 0.03, 0.1, 0.2], "momentum": [0.5, 0.9]},
)
# --quick: the same kind of space, 4 configurations × 100 iterations on 200 validation points.
QUICK = dict(
    base={**FULL["base"], "iterations": 100, "val_subset": 200},
    space={"lr": [0.01, 0.1], "momentum": [0.5, 0.9]},
)


def make_study(kind: str, setup: dict, cache: str, seed: int, num_samples: int, concurrent: int) -> Any:
    from orchestrator.spec import build_study

    raw: dict[str, Any] = {
        "name": f"searcheff-{kind}",
        "base": {**setup["base"], "cache_dir": cache},
        "resources": {"cpu": 1},
        "checkpoint": {"every": 1, "keep": 1},
    }
    if kind == "grid":
        raw["space"] = {k: {"grid": v} for k, v in setup["space"].items()}
        raw["search"] = {"type": "grid", "metric": METRIC, "mode": "max", "max_concurrent": concurrent, "seed": seed}
    else:
        raw["space"] = {k: {"choice": v} for k, v in setup["space"].items()}
        raw["search"] = {"type": "optuna", "sampler": "tpe", "metric": METRIC, "mode": "max",
                         "num_samples": num_samples, "max_concurrent": 1, "seed": seed}
        raw["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factor": 3}
    return build_study(raw)


def run(study: Any, root: str, tag: str) -> dict[str, Any]:
    """Run the study through the orchestrator's Tuner; returns the compute ledger."""
    from ray import tune

    from orchestrator.tune_runner import build_tuner, make_callbacks, summarize

    class Ledger(tune.Callback):
        """Trial-iterations trained so far, in the order results reach the driver."""

        def __init__(self) -> None:
            self.iters: dict[str, int] = {}
            self.last: dict[str, float] = {}
            self.config: dict[str, dict] = {}
            self.reports: list[tuple[int, str, float]] = []  # (compute so far, trial, metric)
            self.ends: list[tuple[int, str, float]] = []  # (compute so far, trial, final metric)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.iters[trial.trial_id] = int(result["iteration"])
            self.last[trial.trial_id] = float(result[METRIC])
            self.config[trial.trial_id] = {k: trial.config[k] for k in study.params}
            self.reports.append((sum(self.iters.values()), trial.trial_id, self.last[trial.trial_id]))

        def on_trial_complete(self, iteration, trials, trial, **info):
            tid = trial.trial_id
            self.ends.append((sum(self.iters.values()), tid, self.last.get(tid, float("nan"))))

    ledger = Ledger()
    storage = os.path.join(root, "runs")
    name = f"{study.name}-{tag}"
    callbacks = make_callbacks(study, tracking_uri=f"sqlite:///{os.path.join(root, 'mlflow.db')}", name=name,
                               storage=storage, resume=False) + [ledger]
    t0 = time.perf_counter()
    grid = build_tuner(study, name=name, storage=storage, callbacks=callbacks, reporter=False).fit()
    wall = time.perf_counter() - t0
    print(summarize(grid, study, wall_s=wall), flush=True)
    if grid.errors:
        raise SystemExit(f"{name}: {len(grid.errors)} trial(s) failed: {grid.errors[0]}")
    return {"ledger": ledger, "wall": wall, "total": sum(ledger.iters.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 configurations × 100 iterations (a few minutes)")
    ap.add_argument("--search-seeds", default="0", help="comma-separated Optuna seeds, one TPE+ASHA run each")
    ap.add_argument("--num-samples", type=int, default=0, help="TPE trials (default: the grid's size)")
    ap.add_argument("--grid-concurrent", type=int, default=2, help="grid trials at a time (1 CPU each)")
    args = ap.parse_args()
    setup = QUICK if args.quick else FULL
    seeds = [int(s) for s in args.search_seeds.split(",") if s.strip()]
    root = tempfile.mkdtemp(prefix="l2lda-searcheff-")
    cache = os.path.join(root, "cache")
    n_grid = 1
    for v in setup["space"].values():
        n_grid *= len(v)
    n_samples = args.num_samples or n_grid

    import ray

    from orchestrator.tune_runner import init_ray

    init_ray(None, log=lambda m: None)
    t_start = time.perf_counter()
    try:
        g = run(make_study("grid", setup, cache, 0, 1, args.grid_concurrent), root, "grid")
        finals = {tid: v for _, tid, v in g["ledger"].ends}
        best = max(finals.values())
        target = best - 0.01
        tpe_runs = []
        for seed in seeds:
            r = run(make_study("tpe", setup, cache, seed, n_samples, 1), root, f"tpe{seed}")
            led = r["ledger"]
            hit = next(((c, tid, v) for c, tid, v in led.ends if v >= target), None)
            hit_any = next(((c, tid, v) for c, tid, v in led.reports if v >= target), None)
            tpe_runs.append((seed, r, hit, hit_any))
    finally:
        ray.shutdown()

    b = setup["base"]
    print(f"\nspace: {b['defense']} on {b['dataset']}, eps {b['eps']}, batch {b['batch_size']}, "
          f"{b['iterations']} iterations ({b['steps_per_report']} per report), {b['val_subset']} validation points; "
          + " × ".join(f"{k} {v}" for k, v in setup["space"].items()) + f" = {n_grid} configurations")
    print("grid trials (final " + METRIC + "):")
    for tid, v in finals.items():
        print(f"  {g['ledger'].config[tid]}  {v:.3f}")
    print(f"grid: {g['total']} trial-iterations, best {METRIC} {best:.3f} → target ≥ {target:.3f}; wall {g['wall']:.0f} s")
    ratios = []
    for seed, r, hit, hit_any in tpe_runs:
        led = r["ledger"]
        keys = list(setup["space"])
        trials = ", ".join("/".join(f"{led.config[t][k]:g}" for k in keys) + f":{led.iters[t]}it:{v:.3f}"
                           for _, t, v in led.ends)
        print(f"TPE+ASHA seed {seed}: {len(led.ends)} trials ({'/'.join(keys)}:iterations:final {METRIC}) {trials}")
        print(f"  total {r['total']} trial-iterations ({r['total'] / g['total']:.2f}× grid); wall {r['wall']:.0f} s")
        if hit is None:
            print(f"  never ended a trial within one point of the grid's best (target MISSED for this seed)")
            ratios.append(float("inf"))
        else:
            ratio = hit[0] / g["total"]
            ratios.append(ratio)
            print(f"  reached {hit[2]:.3f} (trial {led.config[hit[1]]}) after {hit[0]} trial-iterations: "
                  f"{ratio:.2f}× the grid's compute (target ≤ 0.4: {'met' if ratio <= 0.4 else 'MISSED'})")
        if hit_any is not None:
            print(f"  (first report of any trial within one point: after {hit_any[0]} trial-iterations, "
                  f"{hit_any[0] / g['total']:.2f}× grid)")
    print(f"total wall {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
