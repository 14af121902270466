"""AutoAttack cost: our `autoattack` column alone against the official AutoAttack, same model and points.

Three runs on the same PGD10-AT LeNet-5 and the same test points, one torch thread, in one
process, alternating when --repeats > 1 (medians):

* ours alone — a matrix of `natural, autoattack`: each stage on the survivors of the earlier ones;
* ours with stage columns — `natural, apgd_ce, apgd_t, fab_t, square, autoattack`: every stage on
  every clean-correct point (the stage columns), the cascade served from them; this is also the
  sum of our own stages run on all points;
* the reference — the official AutoAttack (Croce & Hein's code, `pip install pyautoattack`, the
  `bench` extra), `version="standard"`, the same ε and batch size, the model as the user hands
  it over (NCHW). Without it installed the reference is "ours with stage columns" and the script
  says so;
* for the record, the official code handed the weights stored NHWC — the layout our matrix
  evaluates LeNet-5 in on a CPU (docs/performance.md): how much of our margin is that layout.

Target: ours alone ≤ 0.7× the reference's time, accuracies within 1.5 points. The script also
checks that the `autoattack` vector is identical, example by example, in the first two runs.

    python bench/autoattack_cost.py                    # 1000 points, Square 5000 queries
    python bench/autoattack_cost.py --n 500 --repeats 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import set_threads, trained_experiment  # noqa: E402
from trainable.attacks.primitives import EvalContext  # noqa: E402
from trainable.evaluation import robustness_matrix  # noqa: E402

STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def official(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int) -> float | None:
    """Robust accuracy under the official AutoAttack (standard version); None when it is not installed."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        return None
    adversary = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=0, device=x.device)
    out = adversary.run_standard_evaluation(x, y, batch_size=batch)
    x_adv = out[0] if isinstance(out, tuple) else out  # pyautoattack returns (x_adv, y_adv)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=1000, help="test points")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=1500, help="PGD10-AT training iterations of the model")
    ap.add_argument("--square-queries", type=int, default=5000, help="Square's queries (AutoAttack standard: 5000)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating rounds (medians)")
    ap.add_argument("--no-official-nhwc", action="store_true",
                    help="skip the fourth run: the official AutoAttack given the classifier stored NHWC")
    args = ap.parse_args()
    set_threads(args.threads)
    exp = trained_experiment("pgd10_at", iterations=args.iterations, warmup=300)
    clf = exp.classifier.eval()
    x, y = exp.data.test_x[: args.n], exp.data.test_y[: args.n]
    eps = exp.cfg.eps
    ctx = EvalContext(cfg=exp.cfg.replace(square_queries=args.square_queries), data=exp.data, device=exp.device,
                      seed=0)
    print(f"[autoattack] {torch.get_num_threads()} torch thread(s); PGD10-AT LeNet-5 ({args.iterations} iterations), "
          f"{len(y)} test points, eps {eps}, "
          f"batch {args.batch}, Square {args.square_queries} queries; load at start {load()}", flush=True)

    results: dict[str, object] = {}

    def ours_alone() -> float:
        r = robustness_matrix(clf, x, y, columns=("natural", "autoattack"), eps=eps, ctx=ctx,
                              batch_size=args.batch, masking=False)
        results["alone"] = r
        return r.metrics["matrix/autoattack"]

    def ours_with_stages() -> float:
        r = robustness_matrix(clf, x, y, columns=("natural", *STAGES, "autoattack"), eps=eps, ctx=ctx,
                              batch_size=args.batch, masking=False)
        results["stages"] = r
        return r.metrics["matrix/autoattack"]

    def official_nhwc() -> float | None:
        # Where our speed comes from: the official code handed the same weights stored NHWC, the
        # layout our matrix evaluates LeNet-5 in on a CPU (docs/performance.md, "Evaluation layout").
        clf.to(memory_format=torch.channels_last)
        try:
            return official(clf, x, y, eps, args.batch)
        finally:
            clf.to(memory_format=torch.contiguous_format)

    runs = {"ours alone": ours_alone, "ours with stage columns": ours_with_stages,
            "official AutoAttack": lambda: official(clf, x, y, eps, args.batch)}
    if not args.no_official_nhwc:
        runs["official, weights NHWC"] = official_nhwc
    # Work that load cannot change: examples through the classifier, with an input gradient (≈ 3 forward
    # passes each: forward + backward) or forward only — counted by a hook, the same for both codes.
    work = {"grad": 0, "fwd": 0}

    def count(_m: torch.nn.Module, args: tuple) -> None:
        x_in = args[0]
        work["grad" if torch.is_grad_enabled() and x_in.requires_grad else "fwd"] += int(x_in.shape[0])

    hook = clf.register_forward_pre_hook(count)
    units: dict[str, float] = {}
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    acc: dict[str, float | None] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            work.update(grad=0, fwd=0)
            t, c = time.perf_counter(), time.process_time()
            acc[name] = fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            units[name] = 3 * work["grad"] + work["fwd"]
            print(f"  {name}: {times[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU, accuracy {acc[name]}, "
                  f"{work['grad']:,} gradient + {work['fwd']:,} forward-only examples; load {load()}", flush=True)
    hook.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    same = np.array_equal(results["alone"].correct["autoattack"], results["stages"].correct["autoattack"])
    attacked = results["alone"].profile["composites"]["autoattack"]["attacked"]
    reference = "official AutoAttack" if acc["official AutoAttack"] is not None else "ours with stage columns"
    if reference != "official AutoAttack":
        print("pyautoattack is not installed: the reference is the sum of our own stages on all points")
    print(f"\nmedians over {args.repeats} round(s); load at end {load()}")
    # One thread: the process's CPU time is its work; wall time also counts the waits a loaded machine adds.
    print(f"{'run':<26} {'wall s':>8} {'CPU s':>8} {'accuracy':>9} {'wall / ref':>11} {'CPU / ref':>10} "
          f"{'work / ref':>11}")
    for name in runs:
        if acc[name] is None:
            continue
        print(f"{name:<26} {med[name]:>8.1f} {med_cpu[name]:>8.1f} {100 * acc[name]:>8.2f}% "
              f"{med[name] / med[reference]:>11.3f} {med_cpu[name] / med_cpu[reference]:>10.3f} "
              f"{units[name] / units[reference]:>11.3f}")
    print("work = 3 × examples through the classifier with an input gradient + forward-only examples")
    print(f"stage by stage, points attacked alone: {attacked}")
    stages_t = results["stages"].timings
    print("stage columns on all points: " + ", ".join(f"{s} {stages_t.get(f'column/{s}', 0.0):.1f} s" for s in STAGES))
    print(f"autoattack vector identical alone and with stage columns: {same}")
    gap = abs(acc["ours alone"] - acc[reference]) * 100
    ratio = med["ours alone"] / med[reference]
    ratio_cpu = med_cpu["ours alone"] / med_cpu[reference]
    print(f"ours alone / {reference}: {ratio:.3f} wall, {ratio_cpu:.3f} CPU, "
          f"{units['ours alone'] / units[reference]:.3f} work (target ≤ 0.7), accuracy gap {gap:.2f} points (≤ 1.5)")


if __name__ == "__main__":
    main()
