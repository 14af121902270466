"""Matrix cost: the robustness matrix against its floor and against the sum of its attacks.

Part `floor`: wall time of the matrix's gradient columns against their floor — the number of
classifier input-gradient steps the columns actually need (counted per example:
early-stopped points cost nothing more) times the measured cost of one such step per
example at the matrix's batch size. Target: matrix / floor ≤ 1.1. Square and the generator
columns are timed and reported on their own.

Part `distinct`: the whole matrix (every column of `--columns`, AutoAttack included, the
`full` evaluation profile's Square budget unless `--square-queries` says otherwise) against
the sum of its distinct attacks, each timed in a matrix of its own. AutoAttack is not a
distinct attack: it is the worst case over APGD-CE, APGD-T, FAB-T and Square
(docs/method.md §Evaluation), so a matrix that does no work twice costs the sum of its
distinct attacks. Target: matrix / sum ≤ 1.05. For reference it also times the autoattack
column alone (each stage on the survivors of the previous ones) against its stages run
alone on every point.

    python bench/matrix_cost.py [--part floor|distinct|both] [--threads 1] [--n 1000]
    python bench/matrix_cost.py --part distinct --n 100 --square-queries 100 --iterations 300   # small
    python bench/matrix_cost.py --part distinct --repeats 3   # the figure: 1000 points, Square 5000
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import set_threads, trained_experiment  # noqa: E402
from orchestrator.evaluate import profile_overrides  # noqa: E402
from trainable.attacks.registry import COLUMNS  # noqa: E402
from trainable.attacks.primitives import EvalContext  # noqa: E402
from trainable.evaluation.matrix import robustness_matrix  # noqa: E402

# The composite columns (each the worst case over its stages), from the column registry.
COMPOSITE_COLUMNS = {n: e.stages for n, e in COLUMNS.items() if e.stages}
GRADIENT_COLUMNS = ("fgsm", "pgd10", "pgd100", "cw100")
# Every attack column that needs no extra training (generator and transfer columns train
# attackers or surrogates first; add them with --columns), AutoAttack included.
FULL_COLUMNS = ("fgsm", "pgd10", "pgd100", "cw100", "cw1000", "apgd_ce", "apgd_t", "fab_t", "square", "autoattack")


class Counting(nn.Module):
    """Counts examples that go through a forward pass with autograd recording (= gradient steps)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.grad_examples = 0

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_examples += x.shape[0]
        return self.inner(x)


def step_cost_per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 20) -> float:
    """Seconds per example of one input-gradient step (forward + backward w.r.t. x) at this batch size."""
    model.eval()
    times = []
    for i in range(repeats + 3):
        xa = x.clone().requires_grad_(True)
        t = time.perf_counter()
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        torch.autograd.grad(loss, xa)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times) / len(x)


def floor_part(exp, x, y, args) -> None:
    model = Counting(exp.classifier)
    ctx = EvalContext(cfg=exp.cfg.replace(gen_attack_steps=100, square_queries=1000), data=exp.data,
                      device=exp.device, generator=None, seed=0)
    per_ex = step_cost_per_example(exp.classifier, x[: args.batch], y[: args.batch])
    t = time.perf_counter()
    res = robustness_matrix(model, x, y, columns=("natural", *GRADIENT_COLUMNS), eps=exp.cfg.eps, ctx=ctx,
                            batch_size=args.batch, masking=False)
    wall = time.perf_counter() - t
    floor = model.grad_examples * per_ex
    print(f"[floor] gradient columns {GRADIENT_COLUMNS} on {len(y)} points, batch {args.batch}")
    print("accuracies: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in res.metrics.items()))
    print(f"example-gradient-steps needed: {model.grad_examples}  (no early stop would need "
          f"{int(res.metrics['matrix/natural'] * len(y)) * (1 + 10 + 100 + 100)})")
    print(f"one input-gradient step: {per_ex * 1e6:.1f} µs/example at batch {args.batch}")
    print(f"matrix wall {wall:.2f} s, floor {floor:.2f} s, ratio {wall / floor:.3f}  (target ≤ 1.1)")
    for col in [c for c in args.extra.split(",") if c]:
        t = time.perf_counter()
        r = robustness_matrix(exp.classifier, x, y, columns=("natural", col), eps=exp.cfg.eps, ctx=ctx,
                              batch_size=args.batch, masking=False)
        print(f"{col}: {time.perf_counter() - t:.2f} s on its own, accuracy {r.metrics['matrix/' + col]:.3f}")


def distinct_part(exp, x, y, args) -> None:
    columns = tuple(c for c in args.columns.split(",") if c)
    distinct = [c for c in columns if c not in COMPOSITE_COLUMNS]
    for comp, stages in COMPOSITE_COLUMNS.items():
        if comp in columns:
            distinct += [s for s in stages if s not in distinct]
    cfg = exp.cfg.replace(square_queries=args.square_queries, gen_attack_steps=args.gen_attack_steps)
    ctx = EvalContext(cfg=cfg, data=exp.data, device=exp.device, generator=exp.defense.generator, seed=0)
    clf = exp.classifier
    print(f"[distinct] matrix {columns} on {len(y)} points, batch {args.batch}, Square {args.square_queries} "
          f"queries; distinct attacks {tuple(distinct)}")
    # Rounds alternate the whole matrix and the attacks alone, so load drift hits both sides;
    # medians over rounds.
    # One thread: the process's CPU time is its own work, which load does not inflate as it does wall time.
    walls: list[float] = []
    cpus: list[float] = []
    alone_runs: dict[str, list[float]] = {c: [] for c in distinct}
    alone_cpu: dict[str, list[float]] = {c: [] for c in distinct}
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        res = robustness_matrix(clf, x, y, columns=("natural", *columns), eps=exp.cfg.eps, ctx=ctx,
                                batch_size=args.batch, masking=False)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        for col in distinct:
            t, c = time.perf_counter(), time.process_time()
            robustness_matrix(clf, x, y, columns=("natural", col), eps=exp.cfg.eps, ctx=ctx, batch_size=args.batch,
                              masking=False)
            alone_runs[col].append(time.perf_counter() - t)
            alone_cpu[col].append(time.process_time() - c)
    wall = statistics.median(walls)
    alone = {c: statistics.median(v) for c, v in alone_runs.items()}
    total = sum(alone.values())
    cpu_total = sum(statistics.median(v) for v in alone_cpu.values())
    print("accuracies: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in res.metrics.items()))
    print(f"medians over {args.repeats} round{'s' if args.repeats != 1 else ''}; in-matrix times from the last round")
    print(f"{'attack':<12} {'alone s':>9} {'in matrix s':>12}")
    for col in distinct:
        print(f"{col:<12} {alone[col]:>9.2f} {res.timings.get(f'column/{col}', float('nan')):>12.2f}")
    for comp in COMPOSITE_COLUMNS:
        if comp in columns:
            print(f"{comp:<12} {'—':>9} {res.timings[f'column/{comp}']:>12.2f}  "
                  f"(reused {', '.join(res.profile['composites'][comp]['reused']) or 'nothing'})")
    print(f"matrix wall {wall:.2f} s, sum of distinct attacks {total:.2f} s, ratio {wall / total:.3f}  "
          f"(target ≤ 1.05)")
    print(f"matrix CPU {statistics.median(cpus):.2f} s, sum of distinct attacks {cpu_total:.2f} s, "
          f"ratio {statistics.median(cpus) / cpu_total:.3f}; load {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if "autoattack" in columns:
        # The autoattack column in a matrix without its stage columns: the cascade on survivors.
        t = time.perf_counter()
        alone = robustness_matrix(clf, x, y, columns=("natural", "autoattack"), eps=exp.cfg.eps, ctx=ctx,
                                  batch_size=args.batch, masking=False)
        cascade = time.perf_counter() - t
        same = (alone.correct["autoattack"] == res.correct["autoattack"]).all()
        print(f"for reference: autoattack alone (each stage on the survivors: "
              f"{alone.profile['composites']['autoattack']['attacked']} points) took {cascade:.2f} s, "
              f"{cascade / sum(alone_t for c, alone_t in alone_stage_times(alone_runs).items()):.3f}× its stages "
              f"run alone on all points; identical autoattack vector in both matrices: {bool(same)}")


def alone_stage_times(alone_runs: dict[str, list[float]]) -> dict[str, float]:
    from trainable.attacks.autoattack import CASCADE

    return {c: statistics.median(v) for c, v in alone_runs.items() if c in CASCADE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("floor", "distinct", "both"), default="both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=1000, help="test points")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=1500, help="PGD10-AT training iterations of the model")
    ap.add_argument("--extra", default="square,l2lda", help="[floor] columns timed on their own")
    ap.add_argument("--columns", default=",".join(FULL_COLUMNS), help="[distinct] the matrix's columns")
    ap.add_argument("--square-queries", type=int, default=profile_overrides("full")["square_queries"],
                    help="[distinct] Square's queries (default: the full evaluation profile's)")
    ap.add_argument("--repeats", type=int, default=1, help="[distinct] alternating rounds (medians)")
    ap.add_argument("--gen-attack-steps", type=int, default=100,
                    help="[distinct] training steps of generator columns, if --columns names any")
    args = ap.parse_args()
    set_threads(args.threads)
    exp = trained_experiment("pgd10_at", iterations=args.iterations, warmup=300)
    x, y = exp.data.test_x[: args.n], exp.data.test_y[: args.n]
    if args.part in ("floor", "both"):
        floor_part(exp, x, y, args)
    if args.part in ("distinct", "both"):
        distinct_part(exp, x, y, args)


if __name__ == "__main__":
    main()
