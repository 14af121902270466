"""Frozen copy of the L2L-DA generator step as it was before the fast path (docs/performance.md).

`bench/train_step_cost.py` times it as "today's eager" next to the current implementation,
and tests/trainable/generators/test_kernels.py checks that the current eager path gives the same losses and
generator updates on a fixed seed. Do not edit: it is the reference the speed-ups are
measured and checked against.

Differences from the current code: the classifier's loss terms L_cls(t) are built as a full
autograd graph through the classifier (retained after the input-gradient pass and
differentiated again in the generator's backward), and the generator tiles its z features
to H×W and concatenates them to the inputs of its first three convolutions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks import preserve_mode
from trainable.generators import L2LStarGenerator, diversity_loss, normalize_grad


def _tile(h: Tensor, zf: Tensor | None) -> Tensor:
    if zf is None:
        return h
    return torch.cat([h, zf[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])], 1)


def body(net, inp: Tensor, z: Tensor | None = None, y: Tensor | None = None) -> Tensor:
    """The U-Net body with tiled, concatenated z features (the pre-change `UNet.body`)."""
    zf = net.z_mlp(z) if net.z_mlp is not None else None
    d0 = F.leaky_relu(net.down0(_tile(inp, zf)), 0.2)
    d1 = F.leaky_relu(net.norm1(net.down1(_tile(d0, zf)), y), 0.2)
    d2 = F.leaky_relu(net.down2(_tile(d1, zf)), 0.2)
    u2 = torch.cat([F.relu(net.norm_up2(net.up2(d2), y)), d1], 1)
    u1 = torch.cat([F.relu(net.norm_up1(net.up1(u2), y)), d0], 1)
    return torch.tanh(net.out(u1))


def generate(generator, x, g, delta, z, y):
    if isinstance(generator, L2LStarGenerator):
        return body(generator, torch.cat([x, g], 1))
    parts = [x, g, delta] if generator.use_delta else [x, g]
    return body(generator, torch.cat(parts, 1), z, y if generator.use_label else None)


def _grad_at(classifier, x_adv, y, normalize, keep_graph):
    if keep_graph and x_adv.requires_grad:
        ce = F.cross_entropy(classifier(x_adv), y, reduction="none")
        (g,) = torch.autograd.grad(ce.sum(), x_adv, retain_graph=True)
    else:
        with torch.enable_grad():
            xa = x_adv.detach().requires_grad_(True)
            ce = F.cross_entropy(classifier(xa), y, reduction="none")
            (g,) = torch.autograd.grad(ce.sum(), xa)
        ce = ce.detach()
    g = g.detach()
    return ce, (normalize_grad(g) if normalize else g)


def rollout(generator, classifier, x, y, z, *, eps, eps_step, steps, differentiable, with_losses=False):
    step = eps if steps == 1 else eps_step
    x = x.detach()
    normalize = bool(getattr(generator, "grad_norm", True))
    delta = torch.zeros_like(x)
    x_adv = x
    advs, losses = [], []
    with preserve_mode(classifier, False), preserve_mode(generator, generator.training if differentiable else False):
        for t in range(steps):
            ce, g = _grad_at(classifier, x_adv, y, normalize, differentiable and with_losses)
            if t > 0 and with_losses:
                losses.append(ce)
            with torch.set_grad_enabled(differentiable):
                out = generate(generator, x, g, delta, z, y)
                delta = torch.clamp(delta + step * out, -eps, eps)
                x_adv = torch.clamp(x + delta, 0.0, 1.0)
            advs.append(x_adv)
        if with_losses:
            with torch.set_grad_enabled(differentiable):
                logits = classifier(x_adv)
            losses.append(F.cross_entropy(logits, y, reduction="none"))
    return advs, losses


def l2lda_step(generator: nn.Module, optimizer: torch.optim.Optimizer, classifier: nn.Module, x: Tensor, y: Tensor,
               z: Tensor, *, eps: float, eps_step: float, steps: int, lam: float, clip: float):
    """One generator ascent step of Algorithm 1 the pre-change way; returns (L_cls, L_div, adv1, adv2)."""
    n = x.shape[0]
    xx, yy = torch.cat([x, x]), torch.cat([y, y])
    advs, losses = rollout(generator, classifier, xx, yy, z, eps=eps, eps_step=eps_step, steps=steps,
                           differentiable=True, with_losses=True)
    loss_cls = torch.stack([l.mean() for l in losses]).mean()
    loss_div = diversity_loss([a[:n] for a in advs], [a[n:] for a in advs], z[:n], z[n:], "mean")
    objective = loss_cls + lam * loss_div if lam > 0 else loss_cls
    params = [p for p in generator.parameters() if p.requires_grad]
    grads = torch.autograd.grad(-objective, params)
    for p, g in zip(params, grads):
        p.grad = g
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_cls.detach(), loss_div.detach(), advs[-1][:n].detach(), advs[-1][n:].detach()
