"""FAB-T (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020), ℓ∞, as AutoAttack's standard version runs it.

Targeted at the top-9 classes by the clean logits, 100 iterations, 1 restart from x,
α_max = 0.1, η = 1.05, β = 0.9: linearise f_t − f_y, project x_k and x onto that hyperplane
∩ [0, 1]^d (exact ℓ∞ projection), biased step, backward step after each success;
ε-bounded (a point counts as fooled only if its least-norm adversarial lies within ε).
Inputs x in [0, 1]; randomness only from ``generator`` (docs/method.md §Evaluation).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.apgd import N_TARGET_CLASSES
from trainable.attacks.gradient import margin_loss
from trainable.attacks.primitives import check_inputs, frozen_params, preserve_mode, project, uniform

# FAB-T in AutoAttack's standard ℓ∞ version (the FAB paper §3 and §4).
FAB_STEPS = 100
FAB_RESTARTS = 1
FAB_ALPHA_MAX = 0.1
FAB_ETA = 1.05
FAB_BETA = 0.9


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
        m_in = margin_loss(logits, y)
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
            m = margin_loss(logits, y)
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
    check_inputs(x, y, eps)
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
        m_best = margin_loss(logits, y)
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
                    t = 2 * uniform(x0.shape, generator, dev) - 1
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
    return project(x_adv, x, eps).detach()
