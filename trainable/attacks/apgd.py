"""APGD and APGD-T (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020, Algorithm 1), ℓ∞, as AutoAttack's standard version runs them.

Step size η⁽⁰⁾ = 2ε, momentum α = 0.75, checkpoints w_j = ⌈p_j N⌉ with p₀ = 0, p₁ = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06); at a checkpoint the step is halved (and the
iterate restarted from the best point x_max) when fewer than ρ·(w_j − w_{j−1}) of the steps
since the last checkpoint raised the loss, or when neither η nor f_max changed since the last
checkpoint. APGD-T runs APGD on the targeted DLR loss once per target class among the top-9
(by the clean logits), 100 iterations each, only on points still correctly classified.
Inputs x in [0, 1]; randomness only from ``generator`` (docs/method.md §Evaluation).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks.primitives import check_inputs, frozen_params, preserve_mode, project, uniform

# AutoAttack "standard" settings (Croce & Hein 2020, §5).
APGD_STEPS = 100
APGD_RHO = 0.75
APGD_ALPHA = 0.75
N_TARGET_CLASSES = 9


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


def apgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = APGD_STEPS, loss: str = "ce",
         target_class: int | Tensor | None = None, rho: float = APGD_RHO, alpha: float = APGD_ALPHA,
         early_stop: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """APGD (Croce & Hein 2020, Algorithm 1), ℓ∞. x in [0, 1]; returns x_adv with ‖x_adv − x‖∞ ≤ eps.

    loss: "ce", "dlr" or "dlr_targeted". For "dlr_targeted", target_class is either an int
    rank r ≥ 2 (target = the r-th largest clean logit, AutoAttack's convention) or a tensor
    of target labels. Per example the result is the first misclassified iterate found, else
    the iterate with the highest loss (x_max). early_stop: stop updating points once fooled.
    """
    check_inputs(x, y, eps)
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
        t = 2 * uniform(x.shape, generator, dev) - 1
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
                z = project(xa + step[active] * grad[active].sign(), xs, eps)
                new = project(xa + a * (z - xa) + (1 - a) * (xa - xo), xs, eps)
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
    return project(result, x, eps).detach()


def apgd_targeted(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int = APGD_STEPS,
                  n_target_classes: int = N_TARGET_CLASSES, rho: float = APGD_RHO,
                  generator: torch.Generator | None = None) -> Tensor:
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss for the targets ranked 2..n+1
    by the clean logits, each run only on the points no earlier target fooled. x in [0, 1]."""
    check_inputs(x, y, eps)
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
