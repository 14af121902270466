"""Parameter-free and gradient-free ℓ∞ attacks: APGD-CE, APGD-T, FAB-T, Square and the AutoAttack cascade.

Own implementations of

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
* FAB-T — Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
  boundary attack", ICML 2020, ℓ∞, targeted at the top-9 classes by the clean logits, 100
  iterations, 1 restart from x, α_max = 0.1, η = 1.05, β = 0.9: linearise f_t − f_y, project
  x_k and x onto that hyperplane ∩ [0, 1]^d (exact ℓ∞ projection), biased step, backward
  step after each success; ε-bounded as AutoAttack runs it (a point counts as fooled only
  if its least-norm adversarial lies within ε).
* AutoAttack — the standard cascade APGD-CE → APGD-T → FAB-T → Square: the worst case per
  example. :func:`autoattack` runs it on one batch, each stage on the points every earlier
  stage left correct; the matrix column ``autoattack`` is the worst case per example over
  the four stage columns, each run as its own column, so columns the matrix already ran are
  reused (docs/method.md §Evaluation).

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

from trainable.attacks.gradient import frozen_params, margin_loss, preserve_mode

# AutoAttack "standard" settings (Croce & Hein 2020, §5).
APGD_STEPS = 100
APGD_RHO = 0.75
APGD_ALPHA = 0.75
N_TARGET_CLASSES = 9
SQUARE_P_INIT = 0.8
# FAB-T in AutoAttack's standard ℓ∞ version (Croce & Hein, ICML 2020, FAB paper §3 and §4).
FAB_STEPS = 100
FAB_RESTARTS = 1
FAB_ALPHA_MAX = 0.1
FAB_ETA = 1.05
FAB_BETA = 0.9
# The cascade's stages in AutoAttack's order; each is also a matrix column (docs/method.md §Evaluation).
CASCADE = ("apgd_ce", "apgd_t", "fab_t", "square")


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
    with preserve_mode(model, False), frozen_params(model):  # gradients reach the input only
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


# ---------------------------------------------------------------------------- FAB-T
def linf_hyperplane_box_projection(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """ℓ∞ projection onto a hyperplane intersected with the box (Croce & Hein, "Minimally
    distorted adversarial examples with a fast adaptive boundary attack", ICML 2020, §3.1):
    per row, the δ of least ‖δ‖∞ with w·(x + δ) + b = 0 and x + δ ∈ [0, 1]^d.

    x, w: (n, d), x in [0, 1]; b: (n,). Returns δ (n, d). With h = w·x + b, each coordinate
    moves in the direction s_i = −sign(h)·sign(w_i) by min(r, c_i), where c_i is the room the
    box leaves in that direction (1 − x_i or x_i); the reachable decrease of |h| at radius r,
    φ(r) = Σ |w_i| min(r, c_i), is piecewise linear in r with breakpoints at the sorted c_i,
    so the least r with φ(r) = |h| comes from one sort and two cumulative sums. Where the
    box does not reach the hyperplane (φ(∞) < |h|) the whole room is used: the box's closest
    point to the hyperplane in that direction.
    """
    h = (w * x).sum(1) + b
    direction = -torch.sign(h)[:, None] * torch.sign(w)
    room = torch.where(direction > 0, 1.0 - x, x).clamp_min(0.0)
    weight = w.abs()
    c, order = room.sort(dim=1)
    a = weight.gather(1, order)
    a_cum = a.cumsum(1)
    ac_cum = (a * c).cumsum(1)
    total = a_cum[:, -1:]
    phi = ac_cum + c * (total - a_cum)  # φ at each breakpoint, non-decreasing along the row
    need = h.abs()[:, None]
    k = (phi < need).sum(1, keepdim=True)  # first breakpoint with φ ≥ |h|
    feasible = k < x.shape[1]
    km1 = (k - 1).clamp(0, x.shape[1] - 1)
    ac_before = torch.where(k > 0, ac_cum.gather(1, km1), torch.zeros_like(need))
    a_before = torch.where(k > 0, a_cum.gather(1, km1), torch.zeros_like(need))
    r = (need - ac_before) / (total - a_before).clamp_min(1e-30)
    r = torch.where(feasible, r.clamp_min(0.0), torch.full_like(r, float("inf")))
    return direction * torch.minimum(room, r)


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j≠y} z_j − z_y (> 0 ⇔ misclassified)."""
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(1) - logits.gather(1, y[:, None]).squeeze(1)


def _fab_run(model: nn.Module, x0: Tensor, y: Tensor, target: Tensor, x_start: Tensor, *, eps: float, steps: int,
             alpha_max: float, eta: float, beta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One targeted FAB run (the FAB paper's Algorithm 1 with the hyperplane of target t fixed).

    Returns (x_out, u, x_in, m_in): the misclassified iterate of least ℓ∞ distance to x0 and
    that distance (x0 and +∞ where none was found), and the in-ball iterate with the highest
    margin max_{j≠y} z_j − z_y and that margin (what a point never fooled returns)."""
    n = len(x0)
    flat0 = x0.flatten(1)
    xk = x_start.clone()
    x_out, u = x0.clone(), torch.full((n,), float("inf"), device=x0.device)
    with torch.no_grad():
        logits = model(xk)
        m_in = _margin(logits, y)
        x_in = xk.clone()
    for _ in range(steps):
        xg = xk.clone().requires_grad_(True)
        with torch.enable_grad():
            z = model(xg)
            g = z.gather(1, target[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)
            (w,) = torch.autograd.grad(g.sum(), xg)
        with torch.no_grad():
            w = w.flatten(1)
            flat_k = xk.flatten(1)
            # The linearisation at x_k: the hyperplane {z : g(x_k) + w·(z − x_k) = 0}.
            b = g.detach() - (w * flat_k).sum(1)
            d = linf_hyperplane_box_projection(torch.cat([flat_k, flat0]), torch.cat([w, w]), torch.cat([b, b]))
            d_k, d_o = d[:n], d[n:]
            n_k, n_o = d_k.abs().amax(1), d_o.abs().amax(1)
            alpha = (n_k / (n_k + n_o).clamp_min(1e-12)).clamp(max=alpha_max)[:, None]
            # Biased step: towards the hyperplane from x_k and, by α, from x_orig (stays close to x_orig).
            new = ((1 - alpha) * (flat_k + eta * d_k) + alpha * (flat0 + eta * d_o)).clamp(0.0, 1.0)
            xk = new.view_as(x0)
            logits = model(xk)
            adv = logits.argmax(1) != y
            dist = (xk - x0).flatten(1).abs().amax(1)
            better = adv & (dist < u)
            x_out[better], u[better] = xk[better], dist[better]
            m = _margin(logits, y)
            up = (dist <= eps) & (m > m_in)
            x_in[up], m_in[up] = xk[up], m[up]
            # Backward step after a success: back towards x_orig, so the next steps search closer.
            xk = torch.where(adv.view(-1, 1, 1, 1), (1 - beta) * x0 + beta * xk, xk)
    return x_out, u, x_in, m_in


def fab_targeted(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = FAB_STEPS,
                 n_target_classes: int = N_TARGET_CLASSES, n_restarts: int = FAB_RESTARTS,
                 alpha_max: float = FAB_ALPHA_MAX, eta: float = FAB_ETA, beta: float = FAB_BETA,
                 generator: torch.Generator | None = None) -> Tensor:
    """FAB-T, ℓ∞ (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
    boundary attack", ICML 2020), ε-bounded as AutoAttack's standard version runs it.

    x in [0, 1]; returns x_adv with ‖x_adv − x‖∞ ≤ eps and x_adv ∈ [0, 1]. For each target t
    among the clean-logit ranks 2..n_target_classes+1, on the points no earlier target fooled:
    per iteration one backward of g = f_t − f_y w.r.t. the input, the ℓ∞ box-constrained
    projections of x_k and of x onto the linearised boundary {g = 0}, the biased step
    x_{k+1} = clip((1−α)(x_k + η δ_k) + α(x + η δ_orig)) with α = min(‖δ_k‖/(‖δ_k‖+‖δ_orig‖), α_max),
    and after each success the backward step x_{k+1} ← (1−β) x + β x_{k+1}. The result per point
    is the misclassified iterate (into any wrong class) of least ℓ∞ norm, kept only if that
    norm is ≤ eps; points it never fools within ε get their in-ball iterate of highest margin.
    Restart 1 starts from x; later restarts from a random point at ℓ∞ distance min(u, ε)/2
    (u the best distance so far), drawn from ``generator``.
    """
    _check_inputs(x, y, eps)
    for name, v, ok in (("steps", steps, steps >= 1), ("n_target_classes", n_target_classes, n_target_classes >= 1),
                        ("n_restarts", n_restarts, n_restarts >= 1), ("alpha_max", alpha_max, 0 <= alpha_max <= 1),
                        ("eta", eta, eta >= 1), ("beta", beta, 0 < beta < 1)):
        if not ok:
            raise ValueError(f"{name}: out of range, got {v}")
    x = x.detach()
    dev = x.device
    with preserve_mode(model, False), frozen_params(model):  # gradients reach the input only
        with torch.no_grad():
            logits = model(x)
        ncls = logits.shape[1]
        ranks = logits.argsort(dim=1)
        robust = logits.argmax(1) == y
        x_adv = x.clone()  # points already misclassified keep x
        m_best = _margin(logits, y)
        u_best = torch.full((len(x),), float("inf"), device=dev)
        for r in range(2, min(n_target_classes, ncls - 1) + 2):
            for restart in range(n_restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x0, y0 = x[idx], y[idx]
                if restart == 0:
                    start = x0
                else:
                    t = 2 * _rand(x0.shape, generator, dev) - 1
                    t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                    radius = torch.clamp(u_best[idx], max=eps).view(-1, 1, 1, 1) / 2
                    start = (x0 + radius * t).clamp(0.0, 1.0)
                x_out, u, x_in, m_in = _fab_run(model, x0, y0, ranks[idx, -r], start, eps=eps, steps=steps,
                                                alpha_max=alpha_max, eta=eta, beta=beta)
                u_best[idx] = torch.minimum(u_best[idx], u)
                found = u <= eps
                x_adv[idx[found]] = x_out[found]
                robust[idx[found]] = False
                up = ~found & (m_in > m_best[idx])
                x_adv[idx[up]], m_best[idx[up]] = x_in[up], m_in[up]
    return _project(x_adv, x, eps).detach()


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
               n_target_classes: int = N_TARGET_CLASSES, fab_steps: int = FAB_STEPS, n_queries: int = 5000,
               generator: torch.Generator | None = None, log: Callable[[str], None] | None = None) -> Tensor:
    """AutoAttack's standard ℓ∞ cascade (Croce & Hein 2020): APGD-CE → APGD-T → FAB-T → Square,
    each on the points every earlier attack failed on, so the result is the worst case per
    example. x in [0, 1]; per point: the first x_adv that fools it, else Square's. `steps` is
    APGD's iterations, `fab_steps` FAB-T's (both 100 in the standard version)."""
    _check_inputs(x, y, eps)
    x = x.detach()
    stages: list[tuple[str, AttackFn]] = [
        ("apgd_ce", lambda xs, ys: apgd(model, xs, ys, eps=eps, steps=steps, loss="ce", generator=generator)),
        ("apgd_t", lambda xs, ys: apgd_targeted(model, xs, ys, eps=eps, steps=steps,
                                                n_target_classes=n_target_classes, generator=generator)),
        ("fab_t", lambda xs, ys: fab_targeted(model, xs, ys, eps=eps, steps=fab_steps,
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


def prepare_fab_t(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `fab_t`: targeted FAB, ℓ∞, ε-bounded, over the top-9 targets, 100 iterations,
    1 restart from x (AutoAttack standard)."""
    def run(m, x, y, *, eps, generator=None):
        return fab_targeted(m, x, y, eps=eps, steps=FAB_STEPS, n_target_classes=N_TARGET_CLASSES,
                            n_restarts=FAB_RESTARTS, generator=generator)

    return [("fab_t", run, {"steps": FAB_STEPS, "n_target_classes": N_TARGET_CLASSES, "n_restarts": FAB_RESTARTS,
                            "alpha_max": FAB_ALPHA_MAX, "eta": FAB_ETA, "beta": FAB_BETA, "norm": "Linf",
                            "eps_bounded": True, "random_start": False})]


def prepare_square(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `square`: Square Attack, margin loss, `cfg.square_queries` queries (5000 standard)."""
    nq = _num_queries(ctx)

    def run(m, x, y, *, eps, generator=None):
        return square(m, x, y, eps=eps, n_queries=nq, generator=generator)

    return [("square", run, {"n_queries": nq, "p_init": SQUARE_P_INIT, "loss": "margin", "init": "stripes",
                             "rescale_schedule": False})]


def prepare_autoattack(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """The cascade APGD-CE → APGD-T → FAB-T → Square on the points still correct, as one attack
    on a batch. The matrix does not call it: there the ``autoattack`` column is the worst case
    per example over the CASCADE columns (its registry entry's stages, trainable.attacks.registry), which
    reuses the columns the matrix already ran (docs/method.md §Evaluation)."""
    nq = _num_queries(ctx)

    def run(m, x, y, *, eps, generator=None):
        return autoattack(m, x, y, eps=eps, steps=APGD_STEPS, n_target_classes=N_TARGET_CLASSES,
                          fab_steps=FAB_STEPS, n_queries=nq, generator=generator)

    return [("autoattack", run, {"cascade": list(CASCADE), "steps": APGD_STEPS,
                                 "n_target_classes": N_TARGET_CLASSES, "fab_steps": FAB_STEPS, "n_queries": nq,
                                 "square_rescale_schedule": False})]
