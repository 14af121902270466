"""Figure 2 of the paper as data: the loss of PGD, L2L and L2L-DA per attack iteration.

For a classifier and test images x in [0, 1] (ℓ∞ budget ε), each method attacks every
image `draws` times for `steps` iterations; at each iteration t we take, per image, the
maximum and the standard deviation of CE(f(x_adv(t)), y) over the draws, and report their
means over the images (paper §5.3: "the average maximum loss over 10 iterations … along
with the corresponding average standard deviation as the lower error bar").

Methods and what a "draw" is:
  * ``pgd``    — ℓ∞ PGD (Madry et al.), step ε/4 (ε_step), signed gradient, uniform random
                 start: a draw is a random restart.
  * ``l2lda``  — Eq. 5 with the L2L-DA generator, ε_step steps: a draw is a z sample.
  * ``l2l``    — the L2L* generator (Chen et al.; one-shot, input [x, ∇L(x)]) applied
                 recursively from a uniform random start, x_adv(t+1) = Π(x_adv(t) +
                 ε_step · g(x_adv(t), ∇L(x_adv(t)))): the multi-step use of a learned
                 gradient-to-update map, stepping by ε_step like the other two so the three
                 curves share a schedule; a draw is a random restart (as in the paper).
                 Our choice: the paper does not say how its L2L was iterated.
Generators that are not given are trained against the frozen classifier first
(cfg.gen_attack_steps steps, Adam as the matrix columns; see :mod:`trainable.attacks.generative`); the paper did not fine-tune
its L2L-DA generator for Fig. 2(a), so a given one is used as is.
Rendering (PNG) lives in ``orchestrator.figures``: this module only computes data.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks.primitives import preserve_mode, project, uniform_ball
from trainable.data.loading import fixed_subset
from trainable.generators.nets import Generator, L2LStarGenerator
from trainable.generators.rollout import input_gradient, rollout

METHODS = ("pgd", "l2l", "l2lda")


def _ce(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def pgd_loss_curve(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float, steps: int,
               generator: torch.Generator | None = None) -> list[Tensor]:
    """CE per example after each of `steps` signed PGD steps from a uniform random start."""
    x = x.detach()
    x_adv = project(x + uniform_ball(x, eps, generator), x, eps)
    out = []
    for _ in range(steps):
        g = input_gradient(model, x_adv, y, normalize=False)
        x_adv = project(x_adv + step * g.sign(), x, eps)
        out.append(_ce(model, x_adv, y))
    return out


def l2l_loss_curve(generator: L2LStarGenerator, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float,
               steps: int, rng: torch.Generator | None = None) -> list[Tensor]:
    """CE per example after each step of the L2L* generator applied recursively from a random start."""
    x = x.detach()
    x_adv = project(x + uniform_ball(x, eps, rng), x, eps)
    out = []
    with preserve_mode(generator, False), torch.no_grad():
        for _ in range(steps):
            g = input_gradient(model, x_adv, y, normalize=generator.grad_norm)
            x_adv = project(x_adv + step * generator(x_adv, g), x, eps)
            out.append(_ce(model, x_adv, y))
    return out


def l2lda_loss_curve(generator: Generator, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, step: float,
                 steps: int, rng: torch.Generator | None = None) -> list[Tensor]:
    """CE per example at each x_adv(t) of Eq. 5 for one z draw per example (generator in eval mode)."""
    z = torch.randn((len(y), generator.z_dim), generator=rng, device="cpu").to(x.device)
    _, losses = rollout(generator, model, x, y, z, eps=eps, eps_step=step, steps=steps, differentiable=False,
                        with_losses=True)
    return losses


def loss_curves(model: nn.Module, x: Tensor, y: Tensor, *, method: str, eps: float, step: float, steps: int = 10,
                draws: int = 10, generator: nn.Module | None = None, seed: int = 0,
                batch_size: int = 500) -> dict[str, list[float]]:
    """{'max': [mean over images of max over draws of CE at t], 'std': [… of std], 'mean': […]} for t = 1..steps.

    Draws are batched (images repeated `draws` times, chunked to `batch_size` rows).
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown Figure 2 method {method!r} (choose from {', '.join(METHODS)})")
    if method != "pgd" and generator is None:
        raise ValueError(f"method {method!r} needs a generator")
    rng = torch.Generator().manual_seed(seed)
    n = len(y)
    per_chunk = max(1, batch_size // max(n, 1)) if n <= batch_size else 1
    all_losses = torch.empty(steps, draws, n)
    with preserve_mode(model, False):
        for i0 in range(0, n, batch_size):
            xb, yb = x[i0:i0 + batch_size], y[i0:i0 + batch_size]
            nb = len(yb)
            for d0 in range(0, draws, per_chunk):
                k = min(per_chunk, draws - d0)
                xx, yy = xb.repeat(k, 1, 1, 1), yb.repeat(k)
                if method == "pgd":
                    ls = pgd_loss_curve(model, xx, yy, eps=eps, step=step, steps=steps, generator=rng)
                elif method == "l2l":
                    ls = l2l_loss_curve(generator, model, xx, yy, eps=eps, step=step, steps=steps, rng=rng)
                else:
                    ls = l2lda_loss_curve(generator, model, xx, yy, eps=eps, step=step, steps=steps, rng=rng)
                all_losses[:, d0:d0 + k, i0:i0 + nb] = torch.stack(ls).view(steps, k, nb).cpu()
    return {
        "max": all_losses.amax(1).mean(1).tolist(),
        "std": all_losses.std(1, unbiased=False).mean(1).tolist(),
        "mean": all_losses.mean(1).mean(1).tolist(),
    }


def compute_figure2(model: nn.Module, cfg: Any, data: Any, *, generator: nn.Module | None = None,
                    n_images: int = 200, steps: int = 10, draws: int = 10, seed: int = 0,
                    log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Figure 2's data for `model` on a fixed subset of the test split (JSON-able dict).

    `generator`: the trial's own generator, if any; an L2L-DA generator is used for ``l2lda``
    as is, an L2L* generator for ``l2l``. Missing ones are trained against the frozen
    classifier for cfg.gen_attack_steps steps (width cfg.gen_attack_width or cfg.gen_width).
    """
    from trainable.attacks.generative import ATTACKER_LR, _forked_rng, _seed, train_l2lda_attacker, train_l2lstar_attacker
    from trainable.text import Clock

    clock = Clock(log, "figure2", every=30.0)

    eps, step = cfg.eps_value, cfg.eps_step
    device = data.test_x.device
    idx = torch.as_tensor(fixed_subset(len(data.test_y), n_images), device=device)
    x, y = data.test_x[idx], data.test_y[idx]
    width = int(cfg.gen_attack_width or cfg.gen_width)
    sources = {}
    if isinstance(generator, Generator):
        gen_da, sources["l2lda"] = copy.deepcopy(generator).eval(), "trial generator (not fine-tuned)"
    else:
        with _forked_rng(device, _seed(seed, "figure2/l2lda")):
            gen_da = Generator.from_config(cfg, data.shape, data.num_classes, width=width).to(device)
            clock.stage(f"training an L2L-DA generator for {cfg.gen_attack_steps} steps")
            t_da = clock.mark()
            train_l2lda_attacker(gen_da, model, data.train_x, data.train_y, steps=cfg.gen_attack_steps,
                                 batch=cfg.batch_size, eps=eps, eps_step=step, T=steps, lam=cfg.lam_value,
                                 lr=ATTACKER_LR, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                 clip=cfg.grad_clip, seed=_seed(seed, "figure2/l2lda"), adam=True,
                                 progress=lambda d, n: clock.tick("L2L-DA generator training steps", d, n, t_da),
                                 objective=cfg.gen_objective)
        sources["l2lda"] = f"fresh, trained {cfg.gen_attack_steps} steps against the frozen classifier"
    if isinstance(generator, L2LStarGenerator):
        gen_l2l, sources["l2l"] = copy.deepcopy(generator).eval(), "trial L2L* generator"
    else:
        with _forked_rng(device, _seed(seed, "figure2/l2l")):
            gen_l2l = L2LStarGenerator.from_config(cfg, data.shape, width=width).to(device)
            clock.stage(f"training an L2L* generator for {cfg.gen_attack_steps} steps")
            t_l2l = clock.mark()
            train_l2lstar_attacker(gen_l2l, model, data.train_x, data.train_y, steps=cfg.gen_attack_steps,
                                   batch=cfg.batch_size, eps=eps, lr=ATTACKER_LR, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, clip=cfg.grad_clip,
                                   seed=_seed(seed, "figure2/l2l"), adam=True,
                                   progress=lambda d, n: clock.tick("L2L* generator training steps", d, n, t_l2l))
        sources["l2l"] = f"fresh L2L*, trained one-shot {cfg.gen_attack_steps} steps against the frozen classifier"
    gens = {"pgd": None, "l2l": gen_l2l, "l2lda": gen_da}
    curves = {}
    t_curves = clock.mark()
    for i, m in enumerate(METHODS):
        if i:
            clock.every = 0.0  # one line per method, with the estimate for the rest
            clock.tick(f"loss curves done ({', '.join(METHODS[:i])}), now {m}:", i, len(METHODS), t_curves)
        else:
            clock.stage(f"loss curves of {m} ({n_images} images × {draws} draws)")
        curves[m] = loss_curves(model, x, y, method=m, eps=eps, step=step, steps=steps, draws=draws,
                                generator=gens[m], seed=_seed(seed, f"figure2/{m}/draws"),
                                batch_size=cfg.eval_batch_size)
    clock.stage("loss curves done")
    return {
        "figure": "paper Figure 2: CE loss per attack iteration (mean over images of max / std over draws)",
        "iterations": list(range(1, steps + 1)),
        "methods": curves,
        "n_images": int(len(y)),
        "test_indices": idx.cpu().numpy().astype(np.int64).tolist(),
        "draws": draws,
        "eps": eps,
        "eps_step": step,
        "dataset": cfg.dataset,
        "defense": cfg.defense,
        "generators": sources,
        "draw_kind": {"pgd": "random restart (uniform start)", "l2l": "random restart (uniform start)",
                      "l2lda": "z ~ N(0, I)"},
        "l2l_iteration": "L2L* generator applied recursively: x ← Π(x + ε_step·g(x, ∇L(x))) from a random start",
    }
