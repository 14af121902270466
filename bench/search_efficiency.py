"""Search efficiency: Optuna TPE + ASHA against random search on a continuous space, in trial-iterations.

Both searches run the product's path: a study built in code with ``orchestrator.spec.study.build_study``,
the Tuner from ``orchestrator.sweep.tuner.build_tuner`` with ``make_callbacks`` (MLflow on a
temporary sqlite store), Ray on loopback from ``init_ray``; one extra driver callback counts
compute. The space (docs/performance.md, "Search benchmark"): L2L-DA on mnist5k, λ log-uniform
in [1e-3, 10], ε_step fraction uniform in [0.1, 1], T an integer in [1, 4].

Per-trial budget at the default settings (chosen so the whole run fits ~20 min on 2 cores):
LeNet-5, ε = 0.1 (at 0.3 tiny budgets leave val/worst ≈ 0 everywhere), generator width 4,
batch 32, a clean warm-up of 300 iterations (computed once, shared through the warm-up cache),
then 40 L2L-DA iterations with a report every 10 (4 reports); val/worst on 200 fixed
validation points (natural, PGD10). 12 trials per search, seeds 0–4. TPE starts its model after
4 random trials (``search.n_startup_trials``; Optuna's default of 10 would leave it random for
almost the whole search).

Per search seed s: random search (seed s, the same number of trials, no early stopping, 2 at a
time) and TPE + ASHA (Optuna seed s, grace 1 report, reduction 3, one trial at a time so its
decisions do not depend on timing). best(s) = the best final val/worst either found;
target = best(s) − 0.01. Compute to target = trial-iterations trained until the first trial that
ENDED (finished, or stopped by ASHA) with a final val/worst ≥ target — for TPE + ASHA in the order
results reached the driver, for random search in sample order with every trial at full budget.
Printed: both per seed, the median over seeds of each, and the median of the per-seed ratio
TPE+ASHA / random (target ≤ 0.5). A method that never reaches the target counts as its whole run.

    python bench/search_efficiency.py [--seeds 0,1,2,3,4] [--trials 12] [--startup 4] [--iterations 40] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
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

METRIC = "val/worst"
SPACE = {"lam": {"loguniform": [1e-3, 10.0]}, "eps_step_frac": {"uniform": [0.1, 1.0]}, "T": {"int": [1, 4]}}
BASE = dict(dataset="mnist5k", defense="l2lda", eps=0.1, gen_width=4, batch_size=32, warmup=300, iterations=40,
            steps_per_report=10, val_subset=200, val_columns=["natural", "pgd10"], eval_columns=["natural"],
            test_subset=50, gen_attack_steps=0)


def make_study(kind: str, base: dict, seed: int, trials: int, startup: int | None = None) -> Any:
    from orchestrator.spec.study import build_study

    raw: dict[str, Any] = {"name": f"searcheff-{kind}", "base": base, "space": SPACE, "resources": {"cpu": 1},
                           "checkpoint": {"every": 0, "keep": 1}}
    if kind == "random":
        raw["search"] = {"type": "random", "metric": METRIC, "mode": "max", "num_samples": trials,
                         "max_concurrent": 2, "seed": seed}
    else:
        raw["search"] = {"type": "optuna", "sampler": "tpe", "metric": METRIC, "mode": "max", "num_samples": trials,
                         "max_concurrent": 1, "seed": seed,
                         **({} if startup is None else {"n_startup_trials": startup})}
        # max_t: the adversarial reports only (every trial loads the shared warm-up from the cache).
        raw["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factor": 3,
                            "max_t": -(-base["iterations"] // base["steps_per_report"])}
    return build_study(raw)


def run(study: Any, root: str, tag: str) -> Any:
    """Run the study through the orchestrator's Tuner; returns its compute ledger."""
    from ray import tune

    from orchestrator.sweep.tuner import build_tuner, make_callbacks

    class Ledger(tune.Callback):
        """Trial-iterations trained, in the order results reach the driver; trial start (= sample) order."""

        def __init__(self) -> None:
            self.order: list[str] = []
            self.iters: dict[str, int] = {}
            self.last: dict[str, float] = {}
            self.config: dict[str, dict] = {}
            self.ends: list[tuple[int, str, float]] = []  # (compute so far, trial, final metric)

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id not in self.order:
                self.order.append(trial.trial_id)
            self.config[trial.trial_id] = {k: trial.config[k] for k in SPACE}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.iters[trial.trial_id] = int(result["iteration"]) - study.base["warmup"]
            self.last[trial.trial_id] = float(result[METRIC])

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
    ledger.wall = time.perf_counter() - t0
    if grid.errors:
        raise SystemExit(f"{name}: {len(grid.errors)} trial(s) failed: {grid.errors[0]}")
    return ledger


def cost_tpe(led: Any, target: float) -> tuple[int, bool]:
    hit = next((c for c, _, v in led.ends if v >= target), None)
    return (hit, True) if hit is not None else (sum(led.iters.values()), False)


def cost_random(led: Any, target: float) -> tuple[int, bool]:
    final = {tid: v for _, tid, v in led.ends}
    spent = 0
    for tid in led.order:
        spent += led.iters[tid]
        if final[tid] >= target:
            return spent, True
    return spent, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4", help="search seeds (one random and one TPE+ASHA run each)")
    ap.add_argument("--trials", type=int, default=12, help="trials per search")
    ap.add_argument("--startup", type=int, default=4,
                    help="TPE's random start-up trials (search.n_startup_trials; 0: Optuna's default, 10)")
    ap.add_argument("--iterations", type=int, default=BASE["iterations"], help="L2L-DA iterations per full trial")
    ap.add_argument("--report-every", type=int, default=BASE["steps_per_report"])
    ap.add_argument("--quick", action="store_true", help="smallest settings: 2 seeds × 3 trials × 20 iterations")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    base = {**BASE, "iterations": args.iterations, "steps_per_report": args.report_every}
    trials = args.trials
    if args.quick:
        seeds, trials = seeds[:2], 3
        base.update(iterations=20, warmup=60, val_subset=100)
    root = tempfile.mkdtemp(prefix="l2lda-searcheff-")
    base["cache_dir"] = os.path.join(root, "cache")

    import ray

    from orchestrator.sweep.connect import init_ray
    from trainable.config import TrialConfig
    from trainable.experiment import Experiment

    # The clean warm-up is the same for every trial (its cache key has no L2L-DA parameter):
    # computed once here, so every trial starts at the same point and reports only its own iterations.
    warm = Experiment(TrialConfig.from_dict({**base, "threads": 1}))
    warm.train(base["warmup"] - warm.iteration)
    if warm.warmup_cache is None or not warm.warmup_cache.path.is_file():
        raise SystemExit("warm-up cache not written" + (f" at {warm.warmup_cache.path}" if warm.warmup_cache else ""))
    del warm

    init_ray(None, log=lambda m: None)
    t_start = time.perf_counter()
    results = []
    try:
        for seed in seeds:
            rnd = run(make_study("random", base, seed, trials), root, f"random{seed}")
            tpe = run(make_study("tpe", base, seed, trials, args.startup or None), root, f"tpe{seed}")
            results.append((seed, rnd, tpe))
    finally:
        ray.shutdown()

    print(f"\nspace: L2L-DA on {base['dataset']}, eps {base['eps']}, width {base['gen_width']}, batch "
          f"{base['batch_size']}, warm-up {base['warmup']} (shared), {base['iterations']} iterations "
          f"({base['steps_per_report']} per report), {base['val_subset']} validation points; "
          f"lam loguniform {SPACE['lam']['loguniform']}, eps_step_frac uniform {SPACE['eps_step_frac']['uniform']}, "
          f"T int {SPACE['T']['int']}; {trials} trials per search; TPE start-up trials "
          f"{args.startup or 'Optuna default (10)'}")
    rows = []
    for seed, rnd, tpe in results:
        best = max(v for led in (rnd, tpe) for _, _, v in led.ends)
        target = best - 0.01
        c_r, ok_r = cost_random(rnd, target)
        c_t, ok_t = cost_tpe(tpe, target)
        rows.append((c_r, c_t, c_t / max(c_r, 1)))
        for tag, led in (("random", rnd), ("TPE+ASHA", tpe)):
            trials_s = ", ".join(f"λ {led.config[t]['lam']:.3g}/f {led.config[t]['eps_step_frac']:.2f}/T "
                                 f"{led.config[t]['T']}:{led.iters.get(t, 0)}it:{v:.3f}" for _, t, v in led.ends)
            print(f"seed {seed} {tag:8s} ({sum(led.iters.values())} trial-iterations, wall {led.wall:.0f} s): {trials_s}")
        print(f"seed {seed}: best {METRIC} {best:.3f} → target ≥ {target:.3f}; to target: random {c_r}"
              f"{'' if ok_r else ' (never)'}, TPE+ASHA {c_t}{'' if ok_t else ' (never)'} trial-iterations; "
              f"ratio {c_t / max(c_r, 1):.2f}")
    med_r = statistics.median(r[0] for r in rows)
    med_t = statistics.median(r[1] for r in rows)
    med_ratio = statistics.median(r[2] for r in rows)
    print(f"\nmedian over {len(rows)} seeds: random {med_r:g}, TPE+ASHA {med_t:g} trial-iterations to within one point; "
          f"median per-seed ratio {med_ratio:.2f} (target ≤ 0.5: {'met' if med_ratio <= 0.5 else 'MISSED'}); "
          f"ratio of medians {med_t / max(med_r, 1):.2f}")
    print(f"total wall {time.perf_counter() - t_start:.0f} s; load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
