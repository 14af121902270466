"""Matrix cost: wall time of the robustness matrix's gradient columns against their floor.

The floor is the number of classifier input-gradient steps the columns actually need
(counted per example: early-stopped points cost nothing more), times the measured cost of
one such step per example at the matrix's batch size. Target: matrix / floor ≤ 1.1.
Square and the generator columns are timed and reported on their own.

    python bench/matrix_cost.py [--threads 1] [--n 1000] [--extra square,l2lda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.common import set_threads, trained_experiment  # noqa: E402
from trainable.evaluation import EvalContext, robustness_matrix  # noqa: E402

GRADIENT_COLUMNS = ("fgsm", "pgd10", "pgd100", "cw100")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=1000, help="test points")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--extra", default="square,l2lda", help="columns timed on their own")
    args = ap.parse_args()
    set_threads(args.threads)
    exp = trained_experiment("pgd10_at", iterations=1500, warmup=300)
    x, y = exp.data.test_x[: args.n], exp.data.test_y[: args.n]
    model = Counting(exp.classifier)
    ctx = EvalContext(cfg=exp.cfg.replace(gen_attack_steps=100, square_queries=1000), data=exp.data,
                      device=exp.device, generator=None, seed=0)

    per_ex = step_cost_per_example(exp.classifier, x[: args.batch], y[: args.batch])
    t = time.perf_counter()
    res = robustness_matrix(model, x, y, columns=("natural", *GRADIENT_COLUMNS), eps=exp.cfg.eps, ctx=ctx,
                            batch_size=args.batch, masking=False)
    wall = time.perf_counter() - t
    floor = model.grad_examples * per_ex
    print(f"gradient columns {GRADIENT_COLUMNS} on {args.n} points, batch {args.batch}")
    print("accuracies: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in res.metrics.items()))
    print(f"example-gradient-steps needed: {model.grad_examples}  (no early stop would need "
          f"{int(res.metrics['matrix/natural'] * args.n) * (1 + 10 + 100 + 100)})")
    print(f"one input-gradient step: {per_ex * 1e6:.1f} µs/example at batch {args.batch}")
    print(f"matrix wall {wall:.2f} s, floor {floor:.2f} s, ratio {wall / floor:.3f}  (target ≤ 1.1)")
    for col in [c for c in args.extra.split(",") if c]:
        t = time.perf_counter()
        r = robustness_matrix(exp.classifier, x, y, columns=("natural", col), eps=exp.cfg.eps, ctx=ctx,
                              batch_size=args.batch, masking=False)
        print(f"{col}: {time.perf_counter() - t:.2f} s on its own, accuracy {r.metrics['matrix/' + col]:.3f}")


if __name__ == "__main__":
    main()
