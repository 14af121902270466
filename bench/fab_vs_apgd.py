"""FAB-T against APGD-T (and the rest of AutoAttack) on one PGD10-AT LeNet-5.

Trains a PGD10-AT LeNet-5 on mnist5k (300 clean warm-up + 1000 adversarial iterations,
batch 100, no augmentation, 1 thread), then runs the matrix columns natural, pgd100,
apgd_t, fab_t, square and autoattack on 500 fixed test points and prints accuracy and
seconds per column, and how many points each of FAB-T and APGD-T fools that the other
leaves correct. Takes a few minutes on one core.

    python bench/fab_vs_apgd.py [--threads 1] [--test-subset 500]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from trainable.config import TrialConfig  # noqa: E402
from trainable.experiment.loop import Experiment  # noqa: E402

COLUMNS = ("natural", "pgd100", "apgd_t", "fab_t", "square", "autoattack")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-subset", type=int, default=500)
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrialConfig.from_dict(dict(dataset="mnist5k", defense="pgd10_at", warmup=300, iterations=args.iterations,
                                     batch_size=100, augment=False, threads=args.threads,
                                     test_subset=args.test_subset, steps_per_report=args.iterations + 300))
    print(f"[bench] pgd10_at LeNet-5, mnist5k, 300+{args.iterations} iterations, batch 100, no augmentation, "
          f"lr_decay_at {cfg.lr_decay_at}, classifier clip {cfg.resolved().clf_grad_clip_value or 'none'}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    exp = Experiment(cfg, log=lambda m: print(f"[bench] {m}", flush=True))
    t0 = time.perf_counter()
    while not exp.done:
        exp.train(500)
    print(f"[bench] trained in {time.perf_counter() - t0:.0f}s; load average {os.getloadavg()}", flush=True)
    res = exp.robustness_matrix(columns=COLUMNS)
    m, t, c = res.metrics, res.timings, res.correct
    n = len(c["natural"])
    print(f"\n| column | accuracy (n = {n}) | seconds |\n|---|---|---|")
    for col in COLUMNS:
        print(f"| {col} | {100 * m[f'matrix/{col}']:.1f}% | {t[col]:.1f} |")
    print(f"| worst | {100 * m['matrix/worst']:.1f}% | |")
    only_fab = int((c["apgd_t"] & ~c["fab_t"]).sum())
    only_apgd = int((c["fab_t"] & ~c["apgd_t"]).sum())
    print(f"\nfooled by fab_t only: {only_fab}; by apgd_t only: {only_apgd}; "
          f"eps {res.profile['eps']}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
