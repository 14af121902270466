"""Training step cost: one L2L-DA iteration against the sum of its parts, timed alone.

Parts (doubled batch 2B, T recursion steps): T generator forwards; T classifier
input-gradient passes (+1 forward for the last L_cls term); the backward through the
recursion; the classifier update (CE over 3B, train mode). Target: iteration ≤ 1.15× the
sum of parts. Also printed: the ratio to one PGD10-AT iteration, and the achieved FLOP/s
(torch.utils.flop_counter) next to the device's measured convolution throughput.

    python bench/train_step_cost.py [--threads 1] [--width 16] [--T 10] [--batch 100]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.common import set_threads  # noqa: E402
from trainable.config import TrialConfig  # noqa: E402
from trainable.generators.rollout import normalize_grad  # noqa: E402
from trainable.experiment.loop import Experiment  # noqa: E402


class _GlobalOnly:
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def med(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def conv_throughput(threads: int) -> float:
    """FLOP/s of a mid-sized 3×3 convolution forward on this device (a practical peak)."""
    x = torch.randn(64, 64, 28, 28)
    w = torch.randn(64, 64, 3, 3)
    t = med(lambda: F.conv2d(x, w, padding=1), 10)
    return 2 * 64 * 64 * 28 * 28 * 64 * 9 / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    set_threads(args.threads)
    base = dict(warmup=0, iterations=10_000, batch_size=args.batch, threads=args.threads, augment=False)
    exp = Experiment(TrialConfig.from_dict(dict(base, defense="l2lda", gen_width=args.width, T=args.T)), use_cache=False)
    pgd_exp = Experiment(TrialConfig.from_dict(dict(base, defense="pgd10_at")), use_cache=False)
    cfg, gen, clf = exp.cfg, exp.defense.generator, exp.classifier
    B, T = args.batch, args.T
    x = exp.data.train_x[:B]
    y = exp.data.train_y[:B]
    xx, yy = torch.cat([x, x]), torch.cat([y, y])
    z = torch.randn(2 * B, cfg.z_dim)
    delta = torch.zeros_like(xx)

    def gen_forwards():
        gen.train()
        with torch.enable_grad():
            for _ in range(T):
                gen(xx, delta, delta, z, yy)

    def clf_grads():
        clf.eval()
        for _ in range(T):
            xa = xx.clone().requires_grad_(True)
            loss = F.cross_entropy(clf(xa), yy, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            normalize_grad(g)
        with torch.no_grad():
            clf(xx)

    def recursion_backward():
        # build the graph untimed, time only the backward through it
        from trainable.generators.losses import l2lda_losses

        lc, ld, _, _ = l2lda_losses(gen, clf, x, y, cfg.z_dim, eps=cfg.eps, eps_step=cfg.eps_step, steps=T)
        obj = lc + cfg.lam_value * ld
        params = list(gen.parameters())
        t = time.perf_counter()
        torch.autograd.grad(obj, params)
        return time.perf_counter() - t

    def clf_update():
        clf.train()
        xt = torch.cat([x, x, x])
        loss = F.cross_entropy(clf(xt), torch.cat([y, y, y]))
        exp.clf_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clf.parameters(), 1.0)

    state = {k: v.clone() for k, v in clf.state_dict().items()}
    t_gen = med(gen_forwards, args.repeats)
    t_clf = med(clf_grads, args.repeats)
    recursion_backward()
    t_bwd = statistics.median(recursion_backward() for _ in range(args.repeats))
    t_upd = med(clf_update, args.repeats)
    clf.load_state_dict(state)
    parts = t_gen + t_clf + t_bwd + t_upd
    t_iter = med(lambda: exp.train(1), args.repeats)
    t_pgd = med(lambda: pgd_exp.train(1), args.repeats)
    fc = FlopCounterMode(display=False)
    # Module tracking hooks break autograd.grad on leaves; count globally instead.
    fc.mod_tracker = _GlobalOnly()
    with fc:
        exp.train(1)
    flops = fc.get_total_flops()
    peak = conv_throughput(args.threads)
    print(f"L2L-DA iteration: width {args.width}, T {T}, batch {B} (doubled {2 * B}), {args.threads} thread(s)")
    print(f"  generator forwards ×{T}:        {t_gen * 1e3:8.1f} ms")
    print(f"  classifier input-gradients ×{T}: {t_clf * 1e3:8.1f} ms")
    print(f"  backward through recursion:    {t_bwd * 1e3:8.1f} ms")
    print(f"  classifier update (3B):        {t_upd * 1e3:8.1f} ms")
    print(f"  sum of parts:                  {parts * 1e3:8.1f} ms")
    print(f"  full iteration:                {t_iter * 1e3:8.1f} ms   ratio {t_iter / parts:.3f} (target ≤ 1.15)")
    print(f"  PGD10-AT iteration:            {t_pgd * 1e3:8.1f} ms   L2L-DA / PGD10-AT = {t_iter / t_pgd:.2f}")
    print(f"  achieved {flops / t_iter / 1e9:.2f} GFLOP/s ({flops / 1e9:.2f} GFLOP per iteration); "
          f"device 3×3 conv throughput {peak / 1e9:.2f} GFLOP/s")


if __name__ == "__main__":
    main()
