"""Attack throughput: our pgd10 / pgd100 against foolbox's LinfPGD, side by side in one process.

Same model, batch, steps, step size, random start, device and thread count. Prints images/s of
each, the ratio (target ≥ 1.5×) and the accuracies both reach (they must agree: ours keeps the
best point per example, so it may only be lower, by little).

    python bench/attack_throughput.py [--threads 1] [--repeats 5] [--batch 500]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import interleaved, set_threads, trained_experiment  # noqa: E402
from trainable.attacks import pgd, preserve_mode  # noqa: E402
from trainable.models import build_classifier  # noqa: E402


def foolbox_pgd(model, x, y, eps, step, steps):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    attack = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=True)
    _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
    return clipped


def accuracy(model, x, y):
    with torch.no_grad(), preserve_mode(model, False):
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    set_threads(args.threads)

    cases = []
    plain = trained_experiment("plain", iterations=1000, warmup=0)
    at = trained_experiment("pgd10_at", iterations=1500, warmup=300)
    x, y = plain.data.test_x[: args.batch], plain.data.test_y[: args.batch]
    cases += [("LeNet-5/MNIST plain", plain.classifier, x, y, 0.3), ("LeNet-5/MNIST PGD-AT", at.classifier, x, y, 0.3)]
    torch.manual_seed(0)
    rn = build_classifier("resnet20", "cifar10").eval()
    xc = torch.rand(min(args.batch, 200), 3, 32, 32)
    with torch.no_grad():
        yc = rn(xc).argmax(1)  # labels the random net gets right, so every point is attacked
    cases.append(("ResNet-20/CIFAR shape (random init)", rn, xc, yc, 8 / 255))

    print(f"{'case':40s} {'attack':7s} {'ours img/s':>11s} {'foolbox img/s':>14s} {'ratio':>6s} {'acc ours':>9s} {'acc fb':>7s}")
    for name, model, xb, yb, eps in cases:
        model.eval()
        for steps, div in ((10, 4), (100, 12)):
            step = eps / div
            g = torch.Generator().manual_seed(0)
            ours = lambda: pgd(model, xb, yb, eps=eps, step=step, steps=steps, generator=g)  # noqa: E731
            theirs = lambda: foolbox_pgd(model, xb, yb, eps, step, steps)  # noqa: E731
            reps = args.repeats if steps == 10 else max(2, args.repeats // 2)
            t = interleaved({"ours": ours, "foolbox": theirs}, reps)
            acc_o, acc_f = accuracy(model, ours(), yb), accuracy(model, theirs(), yb)
            n = len(yb)
            print(f"{name:40s} pgd{steps:<4d} {n / t['ours']:11.1f} {n / t['foolbox']:14.1f} "
                  f"{t['foolbox'] / t['ours']:6.2f} {acc_o:9.3f} {acc_f:7.3f}", flush=True)


if __name__ == "__main__":
    main()
