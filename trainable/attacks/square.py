"""Square Attack (Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via
random search", ECCV 2020), ℓ∞, as AutoAttack's standard version runs it.

Vertical-stripe initialisation, margin loss, square side from the p schedule indexed by the
raw iteration number (not rescaled to the query budget), per-example windows, queries only
for points still correctly classified. Inputs x in [0, 1]; randomness only from ``generator``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.gradient import margin_loss
from trainable.attacks.primitives import check_inputs, preserve_mode, project, randint, uniform

SQUARE_P_INIT = 0.8


def square_p(it: int, p_init: float = SQUARE_P_INIT) -> float:
    """Fraction of pixels changed at random-search iteration `it` (0-based), Andriushchenko et al.
    2020: p_init, halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 iterations.

    Indexed by the raw iteration number, never rescaled to the query budget: AutoAttack's
    standard version builds Square with ``resc_schedule=False``, so with 1000 queries the last
    p is p_init/16, not p_init/512."""
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                       (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def square(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, n_queries: int = 5000, p_init: float = SQUARE_P_INIT,
           generator: torch.Generator | None = None) -> Tensor:
    """Square Attack (Andriushchenko et al. 2020), ℓ∞, untargeted margin loss; gradient-free.

    x in [0, 1]; returns x_adv with ‖x_adv − x‖∞ ≤ eps. Vertical-stripe initialisation, then
    random squares of side ⌈√(p·H·W)⌉ (one window and one sign per channel per example),
    accepted when the margin z_y − max_{j≠y} z_j decreases. Points already misclassified are
    no longer queried. At most `n_queries` forward passes per example (init included).
    """
    check_inputs(x, y, eps)
    if n_queries < 1:
        raise ValueError(f"n_queries: must be >= 1, got {n_queries}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init: must be in (0, 1], got {p_init}")
    x = x.detach()
    n, c, h, w = x.shape
    dev = x.device

    def margin(xa: Tensor, idx: Tensor) -> Tensor:
        # margin > 0 ⇔ still correct; the attack minimises it
        return -margin_loss(model(xa), y[idx])

    with preserve_mode(model, False), torch.no_grad():
        stripes = torch.where(uniform((n, c, 1, w), generator, dev) < 0.5, -1.0, 1.0)
        x_best = (x + eps * stripes).clamp(0.0, 1.0)
        m_best = margin(x_best, torch.arange(n, device=dev))
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        for q in range(1, n_queries):
            idx = (m_best > 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            b = idx.numel()
            p = square_p(q - 1, p_init)  # query 0 was the initialisation
            s = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w))
            vh = randint(max(h - s, 1), (b,), generator, dev).view(b, 1, 1, 1)
            vw = randint(max(w - s, 1), (b,), generator, dev).view(b, 1, 1, 1)
            win = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
            sign = torch.where(uniform((b, c, 1, 1), generator, dev) < 0.5, -1.0, 1.0)
            xs, xb = x[idx], x_best[idx]
            # Adding ±2ε and projecting puts the window's pixels on a vertex of the ε-box.
            x_new = project(xb + win * (2 * eps) * sign, xs, eps)
            m_new = margin(x_new, idx)
            better = m_new < m_best[idx]
            x_best[idx[better]] = x_new[better]
            m_best[idx[better]] = m_new[better]
    return project(x_best, x, eps)
