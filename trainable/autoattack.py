"""Parameter-free and gradient-free ℓ∞ attacks: APGD-CE, APGD-T, Square and the AutoAttack cascade.

Own implementations (issue 5) of

* APGD — Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
  diverse parameter-free attacks", ICML 2020 (Algorithm 1): step size η⁽⁰⁾ = 2ε, momentum
  α = 0.75, checkpoints w_j = ⌈p_j N⌉ with p₀ = 0, p₁ = 0.22,
  p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06); at a checkpoint the step is halved (and
  the iterate restarted from the best point x_max) when fewer than ρ·(w_j − w_{j−1}) of the
  steps since the last checkpoint raised the loss, or when neither η nor f_max changed
  since the last checkpoint.
* APGD-T — APGD on the targeted DLR loss, once per target class among the top-9 (by the
  clean logits), 100 iterations each, only on points still correctly classified
  (AutoAttack's "standard" version).
* Square — Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial
  attack via random search", ECCV 2020, ℓ∞: vertical-stripe initialisation, margin loss,
  square side from the p schedule indexed by the raw iteration number (AutoAttack's
  standard version: not rescaled to the query budget), per-example windows, queries only
  for points still correctly classified.
* AutoAttack — the cascade APGD-CE → APGD-T → Square on the points still correct (FAB-T
  left out: in the standard evaluation it almost never adds a point once APGD-T ran).

torchattacks is not used: it pins an old ``requests`` (breaking MLflow) and its AutoAttack
runs 10 instead of 100 iterations. Inputs x in [0, 1] (NCHW); every attack returns x_adv
with ‖x_adv − x‖∞ ≤ ε and x_adv ∈ [0, 1]. Randomness comes only from ``generator`` (a CPU
``torch.Generator``; the global RNG when None), so a seeded run is deterministic.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks import margin_loss, preserve_mode

# AutoAttack "standard" settings (Croce & Hein 2020, §5).
APGD_STEPS = 100
APGD_RHO = 0.75
APGD_ALPHA = 0.75
N_TARGET_CLASSES = 9
SQUARE_P_INIT = 0.8


# ---------------------------------------------------------------------------- helpers
def _rand(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) drawn on the generator's device (CPU) so seeded runs match across devices."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    if generator is None:
        return torch.randint(0, high, shape, device=device)
    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _check_inputs(x: Tensor, y: Tensor, eps: float) -> None:
    if x.dim() != 4:
        raise ValueError(f"x: expected an NCHW batch, got shape {tuple(x.shape)}")
    if len(x) != len(y):
        raise ValueError(f"y: {len(y)} labels for {len(x)} inputs")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps: must be > 0, got {eps}")


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted DLR loss (Croce & Hein 2020, Eq. 5): −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)."""
    z_sorted = logits.sort(dim=1).values
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    true = logits.gather(1, y[:, None]).squeeze(1)
    return -(true - other.amax(1)) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR loss (Croce & Hein 2020, Eq. 6): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)."""
    if logits.shape[1] < 4:
        raise ValueError(f"dlr_targeted: needs at least 4 classes, the model has {logits.shape[1]}")
    z_sorted = logits.sort(dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - tgt) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def _apgd_schedule(steps: int) -> tuple[int, int, int]:
    """(first checkpoint length, minimum length, decrement) — the paper's p_j in iterations:
    p₁ = 0.22 then each interval shrinks by 0.03 N down to 0.06 N."""
    return max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j at which APGD checks its step size (for tests and the profile)."""
    k, k_min, dec = _apgd_schedule(steps)
    out, w = [], 0
    while w + k <= steps:
        w += k
        out.append(w)
        k = max(k - dec, k_min)
    return out


# ---------------------------------------------------------------------------- APGD
def apgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = APGD_STEPS, loss: str = "ce",
         target_class: int | Tensor | None = None, rho: float = APGD_RHO, alpha: float = APGD_ALPHA,
         early_stop: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """APGD (Croce & Hein 2020, Algorithm 1), ℓ∞. x in [0, 1]; returns x_adv with ‖x_adv − x‖∞ ≤ eps.

    loss: "ce", "dlr" or "dlr_targeted". For "dlr_targeted", target_class is either an int
    rank r ≥ 2 (target = the r-th largest clean logit, AutoAttack's convention) or a tensor
    of target labels. Per example the result is the first misclassified iterate found, else
    the iterate with the highest loss (x_max). early_stop: stop updating points once fooled.
    """
    _check_inputs(x, y, eps)
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    if not 0 < rho <= 1:
        raise ValueError(f"rho: must be in (0, 1], got {rho}")
    x = x.detach()
    n = len(x)
    dev = x.device
    with preserve_mode(model, False):
        if loss == "dlr_targeted":
            if target_class is None:
                raise ValueError("target_class: required for loss='dlr_targeted'")
            if isinstance(target_class, Tensor):
                target = target_class.to(dev).long()
            else:
                with torch.no_grad():
                    ranks = model(x).argsort(dim=1)
                if not 2 <= int(target_class) <= ranks.shape[1]:
                    raise ValueError(f"target_class: rank must be in [2, {ranks.shape[1]}], got {target_class}")
                target = ranks[:, -int(target_class)]
        elif loss in ("ce", "dlr"):
            target = None
        else:
            raise ValueError(f"loss: unknown APGD loss {loss!r} (choose from ce, dlr, dlr_targeted)")

        def loss_grad(xa: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            xa = xa.clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xa)
                if loss == "ce":
                    per_ex = F.cross_entropy(logits, y[idx], reduction="none")
                elif loss == "dlr":
                    per_ex = dlr_loss(logits, y[idx])
                else:
                    per_ex = dlr_targeted_loss(logits, y[idx], target[idx])
                (g,) = torch.autograd.grad(per_ex.sum(), xa)
            return per_ex.detach(), g.detach(), logits.detach().argmax(1) != y[idx]

        # Random start (AutoAttack's ℓ∞ init): a uniform direction rescaled to ‖·‖∞ = ε.
        t = 2 * _rand(x.shape, generator, dev) - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        x_adv = (x + eps * t).clamp(0.0, 1.0)
        every = torch.arange(n, device=dev)
        cur_loss, grad, fooled = loss_grad(x_adv, every)

        x_out = x_adv.clone()  # first fooling iterate where one exists
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), cur_loss.clone()
        x_old = x_adv.clone()
        step = torch.full((n, 1, 1, 1), 2.0 * eps, device=dev)
        prev_loss = cur_loss.clone()
        n_up = torch.zeros(n, device=dev)  # successful steps since the last checkpoint
        loss_best_last = loss_best.clone()
        # AutoAttack starts with "reduced" set, so condition 2 cannot fire at the first checkpoint.
        reduced_last = torch.ones(n, dtype=torch.bool, device=dev)
        k, k_min, k_dec = _apgd_schedule(steps)
        since_check = 0
        for i in range(steps):
            active = (~fooled).nonzero().squeeze(1) if early_stop else every
            if active.numel() == 0:
                break
            with torch.no_grad():
                xa, xo, xs = x_adv[active], x_old[active], x[active]
                a = alpha if i > 0 else 1.0  # no momentum on the first step
                z = _project(xa + step[active] * grad[active].sign(), xs, eps)
                new = _project(xa + a * (z - xa) + (1 - a) * (xa - xo), xs, eps)
                x_old[active] = xa
                x_adv[active] = new
            lo, g, fo = loss_grad(new, active)
            with torch.no_grad():
                grad[active] = g
                newly = fo & ~fooled[active]
                x_out[active[newly]] = new[newly]
                fooled[active] |= fo
                n_up[active] += (lo > prev_loss[active]).float()
                prev_loss[active] = lo
                better = lo > loss_best[active]
                bi = active[better]
                x_best[bi], grad_best[bi], loss_best[bi] = new[better], g[better], lo[better]
            since_check += 1
            if since_check == k:
                with torch.no_grad():
                    cond1 = n_up < rho * k
                    cond2 = ~reduced_last & (loss_best_last >= loss_best)
                    reduce = (cond1 | cond2) & ~fooled
                    step[reduce] /= 2.0
                    x_adv[reduce] = x_best[reduce]  # restart from x_max
                    grad[reduce] = grad_best[reduce]
                    reduced_last = reduce
                    loss_best_last = loss_best.clone()
                    n_up.zero_()
                since_check = 0
                k = max(k - k_dec, k_min)
        result = torch.where(fooled.view(-1, 1, 1, 1), x_out, x_best)
    return _project(result, x, eps).detach()


def apgd_targeted(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = APGD_STEPS,
                  n_target_classes: int = N_TARGET_CLASSES, rho: float = APGD_RHO,
                  generator: torch.Generator | None = None) -> Tensor:
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss for the targets ranked 2..n+1
    by the clean logits, each run only on the points no earlier target fooled. x in [0, 1]."""
    _check_inputs(x, y, eps)
    x = x.detach()
    with preserve_mode(model, False), torch.no_grad():
        logits = model(x)
    ncls = logits.shape[1]
    if n_target_classes < 1:
        raise ValueError(f"n_target_classes: must be >= 1, got {n_target_classes}")
    ranks = logits.argsort(dim=1)
    x_adv = x.clone()
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for r in range(2, min(n_target_classes, ncls - 1) + 2):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = apgd(model, x[idx], y[idx], eps=eps, steps=steps, loss="dlr_targeted",
                  target_class=ranks[idx, -r], rho=rho, generator=generator)
        with preserve_mode(model, False), torch.no_grad():
            fooled = model(xa).argmax(1) != y[idx]
        # Keep the first fooling point; for robust points the latest run's x_max.
        x_adv[idx] = xa
        robust[idx[fooled]] = False
    return x_adv


# ---------------------------------------------------------------------------- Square
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
    _check_inputs(x, y, eps)
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
        stripes = torch.where(_rand((n, c, 1, w), generator, dev) < 0.5, -1.0, 1.0)
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
            vh = _randint(max(h - s, 1), (b,), generator, dev).view(b, 1, 1, 1)
            vw = _randint(max(w - s, 1), (b,), generator, dev).view(b, 1, 1, 1)
            win = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
            sign = torch.where(_rand((b, c, 1, 1), generator, dev) < 0.5, -1.0, 1.0)
            xs, xb = x[idx], x_best[idx]
            # Adding ±2ε and projecting puts the window's pixels on a vertex of the ε-box.
            x_new = _project(xb + win * (2 * eps) * sign, xs, eps)
            m_new = margin(x_new, idx)
            better = m_new < m_best[idx]
            x_best[idx[better]] = x_new[better]
            m_best[idx[better]] = m_new[better]
    return _project(x_best, x, eps)


# ---------------------------------------------------------------------------- AutoAttack
AttackFn = Callable[..., Tensor]


def autoattack(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = APGD_STEPS,
               n_target_classes: int = N_TARGET_CLASSES, n_queries: int = 5000,
               generator: torch.Generator | None = None, log: Callable[[str], None] | None = None) -> Tensor:
    """AutoAttack's cascade (Croce & Hein 2020): APGD-CE → APGD-T → Square, each on the points
    every earlier attack failed on. Per point: the first x_adv that fools it, else Square's."""
    _check_inputs(x, y, eps)
    x = x.detach()
    stages: list[tuple[str, AttackFn]] = [
        ("apgd_ce", lambda xs, ys: apgd(model, xs, ys, eps=eps, steps=steps, loss="ce", generator=generator)),
        ("apgd_t", lambda xs, ys: apgd_targeted(model, xs, ys, eps=eps, steps=steps,
                                                n_target_classes=n_target_classes, generator=generator)),
        ("square", lambda xs, ys: square(model, xs, ys, eps=eps, n_queries=n_queries, generator=generator)),
    ]
    x_adv = x.clone()
    with preserve_mode(model, False), torch.no_grad():
        robust = model(x).argmax(1) == y
    for name, run in stages:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = run(x[idx], y[idx])
        with preserve_mode(model, False), torch.no_grad():
            fooled = model(xa).argmax(1) != y[idx]
        x_adv[idx] = xa
        robust[idx[fooled]] = False
        if log is not None:
            log(f"autoattack: after {name} {int(robust.sum())}/{len(y)} robust")
    return x_adv


# ---------------------------------------------------------------------------- matrix columns
def _num_queries(ctx: Any) -> int:
    return int(getattr(ctx.cfg, "square_queries", 5000))


def prepare_apgd_ce(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `apgd_ce`: APGD on CE, 100 iterations, 1 restart (AutoAttack standard)."""
    def run(m, x, y, *, eps, generator=None):
        return apgd(m, x, y, eps=eps, steps=APGD_STEPS, loss="ce", generator=generator)

    return [("apgd_ce", run, {"steps": APGD_STEPS, "loss": "ce", "rho": APGD_RHO, "momentum": APGD_ALPHA,
                              "step0": "2*eps", "random_start": True, "restarts": 1})]


def prepare_apgd_t(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `apgd_t`: APGD on the targeted DLR loss over the top-9 targets, 100 iterations each."""
    def run(m, x, y, *, eps, generator=None):
        return apgd_targeted(m, x, y, eps=eps, steps=APGD_STEPS, n_target_classes=N_TARGET_CLASSES,
                             generator=generator)

    return [("apgd_t", run, {"steps": APGD_STEPS, "loss": "dlr_targeted", "n_target_classes": N_TARGET_CLASSES,
                             "rho": APGD_RHO, "momentum": APGD_ALPHA, "step0": "2*eps", "random_start": True})]


def prepare_square(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `square`: Square Attack, margin loss, `cfg.square_queries` queries (5000 standard)."""
    nq = _num_queries(ctx)

    def run(m, x, y, *, eps, generator=None):
        return square(m, x, y, eps=eps, n_queries=nq, generator=generator)

    return [("square", run, {"n_queries": nq, "p_init": SQUARE_P_INIT, "loss": "margin", "init": "stripes",
                             "rescale_schedule": False})]


def prepare_autoattack(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `autoattack`: the cascade APGD-CE → APGD-T → Square on the points still correct."""
    nq = _num_queries(ctx)

    def run(m, x, y, *, eps, generator=None):
        return autoattack(m, x, y, eps=eps, steps=APGD_STEPS, n_target_classes=N_TARGET_CLASSES, n_queries=nq,
                          generator=generator)

    return [("autoattack", run, {"cascade": ["apgd_ce", "apgd_t", "square"], "steps": APGD_STEPS,
                                 "n_target_classes": N_TARGET_CLASSES, "n_queries": nq, "fab_t": False})]
