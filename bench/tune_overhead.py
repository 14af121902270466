"""Orchestration overhead: samples/s of one trial inside Ray Tune (with MLflow tracking) vs the plain runner.

Target: Ray / plain ≥ 0.97 in the steady state with a checkpoint every report (the spec's
default, docs/architecture.md, tracking: delivery). Both sides run the same TrialConfig on one
torch thread (the Tune trial gets 1 CPU, so L2LDATrainable sets torch's threads to 1; the
plain side sets threads=1). The Ray side is the product's path: Ray on loopback started by
``orchestrator.sweep.connect.init_ray``, the Tuner from ``build_tuner`` with the callbacks of
``make_callbacks`` (JSON/CSV loggers and the MLflow callback writing to a temporary sqlite
store), checkpoints as the study asks. Rounds alternate plain / Ray so that load on a shared
machine hits both alike.

Three figures per side (training samples = iterations × batch):
  * loop       — the training loop's own ``time/samples_per_s`` (median over reports);
  * steady     — samples per wall second between consecutive reports (driver-side clock for
                 Ray: it includes validation, the result's trip to the driver, the MLflow
                 callback, loggers and checkpoints; the first report is excluded on both
                 sides) — the headline ratio;
  * end-to-end — all training samples over the trial's whole wall time (Ray: Tuner.fit,
                 i.e. actor start-up, dataset load and the final matrix included).

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

# What orchestrator.sweep.run.run_study sets before building a Tuner.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import torch  # noqa: E402

from trainable.config import TrialConfig  # noqa: E402
from trainable.experiment.loop import Experiment  # noqa: E402


def plain(cfg: dict) -> dict[str, list[float] | float]:
    """The plain runner's loop (what trainable.experiment.run does), timed per report."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    exp = Experiment(TrialConfig.from_dict({**cfg, "threads": 1}))
    loop, stamps, iters = [], [], []
    while not exp.done:
        out = exp.step()
        stamps.append(time.perf_counter())
        loop.append(out["time/samples_per_s"])
        iters.append(out["iteration"])
    return {"loop": loop, "stamps": stamps, "iters": iters, "wall": time.perf_counter() - t0}


def in_ray(cfg: dict, spec_extra: dict, root: str, tag: str) -> dict[str, list[float] | float]:
    """One trial through the orchestrator's Tuner (MLflow callback on a temporary sqlite store)."""
    from ray import tune

    from orchestrator.spec.study import build_study
    from orchestrator.sweep.tuner import build_tuner, make_callbacks

    class Clock(tune.Callback):
        """Driver-side arrival time of each result (after the callbacks listed before it)."""

        def __init__(self) -> None:
            self.loop: list[float] = []
            self.stamps: list[float] = []
            self.iters: list[float] = []
            self.threads: list[float] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.stamps.append(time.perf_counter())
            self.loop.append(result["time/samples_per_s"])
            self.iters.append(result["iteration"])
            self.threads.append(result.get("node/threads", float("nan")))

    study = build_study({"name": "overhead", "base": {k: v for k, v in cfg.items() if k != "seed"},
                         "space": {"seed": cfg.get("seed", 0)}, "resources": {"cpu": 1}, **spec_extra})
    storage = os.path.join(root, "runs")
    name = f"overhead-{tag}"
    clock = Clock()
    callbacks = make_callbacks(study, tracking_uri=f"sqlite:///{os.path.join(root, 'mlflow.db')}", name=name,
                               storage=storage, resume=False) + [clock]
    t0 = time.perf_counter()
    tuner = build_tuner(study, name=name, storage=storage, callbacks=callbacks, reporter=False)
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    if grid.errors:
        raise SystemExit(f"the Ray trial failed: {grid.errors[0]}")
    if any(t != 1 for t in clock.threads):
        raise SystemExit(f"the Ray trial ran with {clock.threads} torch threads, not 1")
    return {"loop": clock.loop, "stamps": clock.stamps, "iters": clock.iters, "wall": wall}


def steady(run: dict, batch: int) -> float:
    """Samples per wall second between the first and the last report."""
    st, it = run["stamps"], run["iters"]
    return (it[-1] - it[0]) * batch / (st[-1] - st[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defense", default="pgd10_at")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--steps-per-report", type=int, default=50)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=1,
                    help="reports between Ray checkpoints (the spec's default is 1; 0: only at the end)")
    args = ap.parse_args()
    if args.iterations < 2 * args.steps_per_report:
        ap.error("--iterations must cover at least two reports")
    root = tempfile.mkdtemp(prefix="l2lda-overhead-")
    # Small validation and test subsets: the comparison is about the loop around training.
    cfg = dict(dataset="mnist5k", defense=args.defense, warmup=0, iterations=args.iterations,
               steps_per_report=args.steps_per_report, batch_size=args.batch, val_subset=100,
               val_columns=["natural", "pgd10"], eval_columns=["natural", "pgd10"], test_subset=100,
               gen_width=16, T=5, cache_dir=os.path.join(root, "cache"))
    spec_extra = {"checkpoint": {"every": args.checkpoint_every, "keep": 2}}

    from orchestrator.sweep.connect import init_ray

    import ray

    init_ray(None, log=lambda m: None)
    sides: dict[str, list[dict]] = {"plain": [], "ray": []}
    try:
        for r in range(args.rounds):
            sides["plain"].append(plain(cfg))
            sides["ray"].append(in_ray(cfg, spec_extra, root, str(r)))
    finally:
        ray.shutdown()

    total = args.iterations * args.batch
    fig: dict[str, dict[str, float]] = {}
    for side, runs in sides.items():
        fig[side] = {
            "loop": statistics.median(v for run in runs for v in run["loop"][1:]),
            "steady": statistics.median(steady(run, args.batch) for run in runs),
            "e2e": statistics.median(total / run["wall"] for run in runs),
        }
    print(f"config: {args.defense}, LeNet-5/mnist5k, batch {args.batch}, {args.iterations} iterations, "
          f"{args.steps_per_report} per report, checkpoint every {args.checkpoint_every} report(s), "
          f"1 torch thread, {args.rounds} alternating rounds; MLflow on a temporary sqlite store")
    print(f"{'samples/s':26s} {'plain':>9s} {'Ray+MLflow':>11s} {'ratio':>7s}")
    labels = {"loop": "training loop only", "steady": "steady state (headline)", "e2e": "end to end incl. start-up"}
    for k, label in labels.items():
        print(f"{label:26s} {fig['plain'][k]:9.1f} {fig['ray'][k]:11.1f} {fig['ray'][k] / fig['plain'][k]:7.3f}")
    ratio = fig["ray"]["steady"] / fig["plain"]["steady"]
    print(f"ratio Ray / plain (steady state): {ratio:.3f}  (target ≥ 0.97: {'met' if ratio >= 0.97 else 'MISSED'})")


if __name__ == "__main__":
    main()
