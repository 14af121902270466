"""Attacks' inner step, eager vs torch.compile: is compiling the gradient attacks worth it? (docs/performance.md)

Every gradient attack of the matrix (PGD, C&W, APGD, FAB) spends its time in one kernel:
the classifier's loss at x_adv and its input gradient. Timed side by side in one process at a
fixed batch, LeNet-5 (MNIST shape) and ResNet-20 (CIFAR shape), eager
(``torch.autograd.grad``, parameters frozen) against the ``torch.compile``d functional
version the training step's ``compile`` option uses. A fixed batch is the compiler's best
case: the matrix's attacks shrink their active set as points fall (early stopping), so each
new size would recompile or run dynamic-shape code. Compilation is reported apart.

    python bench/attack_compile.py [--batch 500] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import interleaved, set_threads  # noqa: E402
from trainable.attacks.primitives import frozen_params  # noqa: E402
from trainable.generators.rollout import ce_and_input_gradient, ce_and_input_gradient_functional  # noqa: E402
from trainable.models import build_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="lenet5,resnet20")
    args = ap.parse_args()
    set_threads(args.threads)
    for name in args.models.split(","):
        dataset, shape = ("mnist5k", (1, 28, 28)) if name == "lenet5" else ("cifar10", (3, 32, 32))
        torch.manual_seed(0)
        clf = build_classifier(name, dataset).eval()
        batch = args.batch if name == "lenet5" else max(1, args.batch // 5)
        x = torch.rand(batch, *shape)
        y = torch.randint(0, 10, (batch,))
        compiled = torch.compile(ce_and_input_gradient_functional, dynamic=False)
        t = time.perf_counter()
        with frozen_params(clf):
            compiled(clf, x, y)
        t_compile = time.perf_counter() - t
        with frozen_params(clf):
            ce_a, g_a = ce_and_input_gradient(clf, x, y)
            ce_b, g_b = compiled(clf, x, y)
            agree = torch.allclose(ce_a, ce_b, rtol=1e-4, atol=1e-5) and torch.allclose(g_a, g_b, rtol=1e-3, atol=1e-6)
            med = interleaved({"eager": lambda: ce_and_input_gradient(clf, x, y),
                               "compiled": lambda: compiled(clf, x, y)}, args.repeats)
        print(f"{name} batch {batch}: eager {med['eager'] * 1e3:.1f} ms, compiled {med['compiled'] * 1e3:.1f} ms "
              f"per CE + input gradient → compiled/eager {med['compiled'] / med['eager']:.2f} "
              f"(first call {t_compile:.0f} s; values agree: {agree})")


if __name__ == "__main__":
    main()
