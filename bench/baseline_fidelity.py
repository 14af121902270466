"""Is the tool's PGD10-AT, with its defaults, the textbook PGD10-AT? Side by side, one process.

Row 1 is the tool: ``TrialConfig(defense="pgd10_at")`` with every training default left as
the tool resolves it (augmentation, classifier clip, LR schedule: see docs/method.md),
only the budget set to the benchmark's. Row 2 is a PGD10-AT loop written out below from
the textbook recipe, sharing nothing with the tool's training code: no augmentation, no
clipping, no LR decay, SGD lr 0.01 / momentum 0.9 / weight decay 1e-5, batch 100,
300 clean + 3000 adversarial iterations, PGD10 with step ε/4 and a uniform random
start, one CE over [x ; x_adv] (the baselines' objective in the authors' code). Both
start from the same LeNet-5 initialisation and are evaluated with the tool's PGD100
(step ε/12, random start) on the same 1000 test points of mnist5k.

Target: the tool's PGD100 accuracy within 3 points of the textbook loop's.

    python bench/baseline_fidelity.py            # ≈ 10 min on one core, quiet machine
    python bench/baseline_fidelity.py --adv 1000 # a shorter check
"""
from __future__ import annotations

import argparse
import os
import time

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `bench` as a package

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainable.config import TrialConfig  # noqa: E402
from trainable.data import load_dataset  # noqa: E402
from trainable.models import build_classifier  # noqa: E402
from trainable.experiment.loop import Experiment  # noqa: E402
from bench.common import accuracy_under  # noqa: E402

EPS = 0.3
COLUMNS = ("natural", "pgd10", "pgd100")


def textbook_pgd(model, x, y, eps: float, step: float, steps: int, gen: torch.Generator):
    """ℓ∞ PGD with a uniform random start, signed steps, the last iterate (Madry et al. 2018)."""
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def textbook_run(clean: int, adv: int, seed: int = 0):
    data = load_dataset("mnist5k")
    torch.manual_seed(seed)  # the same initialisation as the tool's trial
    model = build_classifier("lenet5", "mnist5k", 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed + 100)
    n = len(data.train_y)
    perm, pos = torch.randperm(n, generator=gen), 0
    t0 = time.perf_counter()
    for it in range(clean + adv):
        if pos + 100 > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + 100]
        pos += 100
        x, y = data.train_x[idx], data.train_y[idx]
        if it >= clean:
            model.eval()
            x_adv = textbook_pgd(model, x, y, EPS, EPS / 4, 10, gen)
            x, y = torch.cat([x, x_adv]), torch.cat([y, y])
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % 500 == 0:
            print(f"[textbook] it {it + 1}/{clean + adv} loss {loss.item():.3f} "
                  f"{(time.perf_counter() - t0) / (it + 1) * 1e3:.0f} ms/it", flush=True)
    return model, time.perf_counter() - t0


def tool_run(clean: int, adv: int, cache_dir: str, seed: int = 0):
    cfg = TrialConfig.from_dict({"dataset": "mnist5k", "defense": "pgd10_at", "warmup": clean, "iterations": adv,
                                 "batch_size": 100, "threads": 1, "steps_per_report": 500, "cache_dir": cache_dir,
                                 "test_subset": 0, "seed": seed})
    exp = Experiment(cfg, log=print, use_cache=False)
    t0 = time.perf_counter()
    while not exp.done:
        m = exp.train(500)
        print(f"[tool] it {exp.iteration}/{cfg.total_iterations} loss {m['train/loss']:.3f} "
              f"{m['time/iter_s'] * 1e3:.0f} ms/it", flush=True)
    return exp, time.perf_counter() - t0


def evaluate(model, exp: Experiment) -> dict[str, float]:
    return accuracy_under(model, exp, COLUMNS, EPS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clean", type=int, default=300)
    ap.add_argument("--adv", type=int, default=3000)
    ap.add_argument("--cache-dir", default=".cache/l2lda-tune")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed of both runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    exp, t_tool = tool_run(args.clean, args.adv, args.cache_dir, args.seed)
    tb_model, t_tb = textbook_run(args.clean, args.adv, args.seed)
    rows = {"tool defaults": (evaluate(exp.classifier, exp), t_tool), "textbook loop": (evaluate(tb_model, exp), t_tb)}
    r = exp.cfg
    print(f"\nPGD10-AT, LeNet-5, mnist5k, {args.clean} clean + {args.adv} adversarial iterations, batch 100, "
          f"{len(exp.test_idx)} test points, seed {args.seed}, load {os.getloadavg()[0]:.2f}")
    print(f"tool resolved: augment={r.augment} clf_grad_clip={r.clf_grad_clip} lr_decay_at={r.lr_decay_at}")
    print(f"| run | natural | pgd10 | pgd100 | training s |\n|---|---|---|---|---|")
    for name, (acc, t) in rows.items():
        print(f"| {name} | {acc['natural']:.1%} | {acc['pgd10']:.1%} | {acc['pgd100']:.1%} | {t:.0f} |")
    gap = rows["tool defaults"][0]["pgd100"] - rows["textbook loop"][0]["pgd100"]
    print(f"PGD100 tool − textbook: {gap * 100:+.1f} points (target: within ±3) → {'MET' if abs(gap) <= 0.03 else 'NOT MET'}")


if __name__ == "__main__":
    main()
