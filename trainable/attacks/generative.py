"""Generator-based columns of the robustness matrix (paper Table 2): L2L-DA, AdvGAN, GAP.

Each column trains its attacker against the FROZEN target classifier (eval mode; the
attacker's loss is differentiated w.r.t. the attacker's parameters only, so the
classifier collects no ``.grad``) on the training split for ``cfg.gen_attack_steps``
steps of ``cfg.batch_size`` images, seeded from ``ctx.seed`` (batches, z and fresh
weights come from seeded generators inside a forked RNG, so the trial's own RNG state is
untouched). Then ``attack_fn(model, x, y, *, eps, generator)`` scores test batches;
x in [0, 1], every x_adv lies in the ℓ∞ ε-ball around x and in [0, 1].

Each column's entry in :mod:`trainable.attacks.registry` names its factory:
``prepare_X(model, ctx) -> [(column_name, attack_fn, budget)]``.
"""
from __future__ import annotations

import copy
import zlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.attacks.gradient import margin_loss
from trainable.attacks.primitives import preserve_mode
from trainable.generators.losses import generator_step, l2lda_losses, l2lstar_loss
from trainable.generators.nets import Generator, L2LStarGenerator, UNet
from trainable.generators.rollout import rollout

# Samples × batch per generator forward when scoring many z draws at once (bounds memory).
MAX_ATTACK_BATCH = 2048
ADVGAN_WEIGHTS = {"adv": 10.0, "gan": 1.0}  # advGAN_pytorch's weights (C&W term ×10, GAN term ×1)
# Adam (β1 0.5) for every column's attacker. The joint training's SGD (lr 0.01, grad clip 1) barely
# moves a generator in the few hundred steps a CPU profile affords (measured on mnist5k: 20 steps left
# the L2L-DA attack's loss unchanged, Adam 1e-3 for 60 steps raised it from 1.29 to 1.97).
ATTACKER_LR = 1e-3


def _seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed weight init etc. without disturbing the trial's RNG (a checkpoint stores it)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


Progress = Callable[[int, int], None]  # (steps done, steps in all): the matrix's progress line


def _batches(x: Tensor, y: Tensor, steps: int, batch: int, gen: torch.Generator,
             progress: Progress | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """`steps` minibatches, epoch-wise shuffled from a seeded CPU generator; `progress` hears of each
    step once the caller has trained on it."""
    n = len(y)
    batch = min(batch, n)
    perm, pos = torch.randperm(n, generator=gen), 0
    for i in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch].to(x.device)
        pos += batch
        yield x[idx], y[idx]
        if progress is not None:
            progress(i + 1, steps)


def _width(cfg: Any) -> int:
    return int(cfg.gen_attack_width or cfg.gen_width)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)


def _strongest(model: nn.Module, x_adv: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Among k candidates per example (x_adv is (k·n, …), draw-major), the strongest per example:
    misclassified first, then highest CE. Returns (x_best (n, …), score (n,))."""
    n = len(y)
    with torch.no_grad():
        logits = model(x_adv)
        yy = y.repeat(k)
        score = F.cross_entropy(logits, yy, reduction="none") + (logits.argmax(1) != yy).float() * 1e6
        score = score.view(k, n)
        s, which = score.max(0)
        best = x_adv.view(k, n, *x_adv.shape[1:])[which, torch.arange(n, device=x_adv.device)]
    return best, s


# ---------------------------------------------------------------------------------------------- L2L-DA
def _attacker_optimizer(generator: nn.Module, *, adam: bool, lr: float, momentum: float,
                        weight_decay: float) -> torch.optim.Optimizer:
    """Adam (β1 0.5, the columns' choice, see ATTACKER_LR) or SGD like the joint training."""
    if adam:
        return torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    return torch.optim.SGD(generator.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_l2lda_attacker(generator: Generator, model: nn.Module, x: Tensor, y: Tensor, *, steps: int,
                         batch: int, eps: float, eps_step: float, T: int, lam: float, lr: float,
                         momentum: float, weight_decay: float, clip: float, seed: int, adam: bool = False,
                         progress: Progress | None = None, objective: str = "sum") -> Generator:
    """Fine-tune an L2L-DA generator against a frozen classifier (Algorithm 1 without the classifier step).

    ``adam`` (the columns' choice, see ATTACKER_LR) or SGD like the joint training (the authors
    fine-tuned for 48k steps). Grad-norm clip `clip` either way; `objective` combines the
    losses over the T steps as the trial did (docs/method.md, "Losses"). Returns the generator in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = _attacker_optimizer(generator, adam=adam, lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator.train()
    with preserve_mode(model, False):
        for xb, yb in _batches(x, y, steps, batch, gen, progress):
            l_cls, l_div, _, _ = l2lda_losses(generator, model, xb, yb, generator.z_dim, eps=eps,
                                              eps_step=eps_step, steps=T, z_generator=gen, objective=objective)
            generator_step(generator, opt, l_cls + lam * l_div if lam > 0 else l_cls, clip)
    return generator.eval()


def l2lda_attack(net: Generator, *, T: int, samples: int, eps_step_frac: float) -> Callable[..., Tensor]:
    """attack_fn: T recursive steps (Eq. 5, detached, generator in eval mode) for `samples` z draws
    per example, batched; per example the strongest draw (misclassified first, then highest CE)."""

    def attack(model: nn.Module, x: Tensor, y: Tensor, *, eps: float,
               generator: torch.Generator | None = None) -> Tensor:
        n = len(y)
        if n == 0:
            return x.detach().clone()
        best, best_score = x.detach().clone(), torch.full((n,), float("-inf"), device=x.device)
        per_chunk = max(1, MAX_ATTACK_BATCH // n)
        for s0 in range(0, samples, per_chunk):
            k = min(per_chunk, samples - s0)
            xx, yy = x.detach().repeat(k, 1, 1, 1), y.repeat(k)
            z = _randn((k * n, net.z_dim), generator, x)
            advs, _ = rollout(net, model, xx, yy, z, eps=eps, eps_step=eps_step_frac * eps, steps=T,
                              differentiable=False)
            cand, score = _strongest(model, advs[-1], y, k)
            better = score > best_score
            best[better] = cand[better]
            best_score = torch.where(better, score, best_score)
        return best

    return attack


def prepare_l2lda(model: nn.Module, ctx: Any) -> list[tuple[str, Callable[..., Tensor], dict]]:
    """The `l2lda` column: the trial's L2L-DA generator (a copy) fine-tuned against the frozen classifier,
    or — for L2L* and every other defense — a fresh L2L-DA generator trained against it; then
    T = cfg.T recursive steps with cfg.gen_attack_samples z draws, worst per example."""
    cfg = ctx.cfg
    data = ctx.data
    seed = _seed(ctx.seed, "l2lda")
    own = isinstance(ctx.generator, Generator)
    with _forked_rng(ctx.device, seed):
        if own:
            gen = copy.deepcopy(ctx.generator)
        else:
            gen = Generator.from_config(cfg, data.shape, data.num_classes, width=_width(cfg))
        gen = gen.to(ctx.device)
        for p in gen.parameters():
            p.requires_grad_(True)
        ctx.log(f"matrix: l2lda: {'fine-tuning the trial generator' if own else 'training a fresh generator'} "
                f"for {cfg.gen_attack_steps} steps")
        train_l2lda_attacker(gen, model, data.train_x, data.train_y, steps=cfg.gen_attack_steps,
                             batch=cfg.batch_size, eps=cfg.eps_value, eps_step=cfg.eps_step, T=cfg.T,
                             lam=cfg.lam_value, lr=ATTACKER_LR, momentum=cfg.momentum,
                             weight_decay=cfg.weight_decay, clip=cfg.grad_clip, seed=seed, adam=True,
                             progress=getattr(ctx, "on_training", None), objective=cfg.gen_objective)
    budget = {"train_steps": cfg.gen_attack_steps, "batch": cfg.batch_size, "fine_tuned": own,
              "width": gen.width, "T": cfg.T, "step": f"{cfg.eps_step_frac}*eps", "samples": cfg.gen_attack_samples,
              "lam": cfg.lam_value, "objective": cfg.gen_objective, "optimizer": f"adam lr {ATTACKER_LR} betas 0.5,0.999 clip {cfg.grad_clip}",
              "select": "per example: misclassified first, then highest CE"}
    return [("l2lda", l2lda_attack(gen, T=cfg.T, samples=cfg.gen_attack_samples,
                                   eps_step_frac=cfg.eps_step_frac), budget)]


# ---------------------------------------------------------------------------------------------- L2L*
def train_l2lstar_attacker(generator: L2LStarGenerator, model: nn.Module, x: Tensor, y: Tensor, *, steps: int,
                           batch: int, eps: float, lr: float, momentum: float, weight_decay: float,
                           clip: float, seed: int, adam: bool = False,
                           progress: Progress | None = None) -> L2LStarGenerator:
    """Train an L2L* generator (one-shot, [x, ∇L(x)]) against a frozen classifier; returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = _attacker_optimizer(generator, adam=adam, lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator.train()
    with preserve_mode(model, False):
        for xb, yb in _batches(x, y, steps, batch, gen, progress):
            loss, _ = l2lstar_loss(generator, model, xb, yb, eps=eps)
            generator_step(generator, opt, loss, clip)
    return generator.eval()


# ---------------------------------------------------------------------------------------------- AdvGAN
class PerturbationNet(UNet):
    """A U-Net of x alone (no z, no label, plain BN) with a tanh output in [−1, 1]^{C×H×W}."""

    def __init__(self, shape: tuple[int, ...], width: int) -> None:
        super().__init__(int(shape[0]), int(shape[0]), width, 0, None)
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Discriminator(nn.Module):
    """AdvGAN's discriminator, small: conv4 s2 → 8, LReLU; conv4 s2 → 16, BN, LReLU; conv3 → 1; mean → logit."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 8, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(8, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2),
            nn.Conv2d(16, 1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1).mean(1)


def _advgan_apply(net: PerturbationNet, x: Tensor, eps: float) -> Tensor:
    """AdvGAN: x_adv = clip(x + ε·tanh(G(x)), 0, 1) (ℓ∞ by construction)."""
    return (x + eps * net(x)).clamp(0.0, 1.0)


def train_advgan(net: PerturbationNet, disc: Discriminator, model: nn.Module, x: Tensor, y: Tensor, *,
                 steps: int, batch: int, eps: float, seed: int, lr: float = ATTACKER_LR,
                 progress: Progress | None = None) -> PerturbationNet:
    """AdvGAN (Xiao et al. 2018): G minimises w_adv·C&W(κ = 0) + w_gan·BCE(D(x_adv), real);
    D learns to tell x from x_adv. Classifier frozen. Returns G in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt_g = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    net.train(), disc.train()
    g_params, d_params = list(net.parameters()), list(disc.parameters())
    with preserve_mode(model, False):
        for xb, yb in _batches(x, y, steps, batch, gen, progress):
            x_adv = _advgan_apply(net, xb, eps)
            # discriminator step on detached fakes
            d_real, d_fake = disc(xb), disc(x_adv.detach())
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            for p, g in zip(d_params, torch.autograd.grad(loss_d, d_params)):
                p.grad = g
            opt_d.step()
            # generator step: fool D and the classifier (C&W f = max(Z_y − max_{j≠y} Z_j, −κ), κ = 0)
            d_out = disc(x_adv)
            loss_gan = F.binary_cross_entropy_with_logits(d_out, torch.ones_like(d_out))
            loss_adv = F.relu(-margin_loss(model(x_adv), yb)).mean()
            loss_g = ADVGAN_WEIGHTS["adv"] * loss_adv + ADVGAN_WEIGHTS["gan"] * loss_gan
            for p, g in zip(g_params, torch.autograd.grad(loss_g, g_params)):
                p.grad = g
            opt_g.step()
    return net.eval()


def prepare_advgan(model: nn.Module, ctx: Any) -> list[tuple[str, Callable[..., Tensor], dict]]:
    """The `advgan` column: a generator of x alone, tanh output scaled to ε, trained on the C&W margin
    loss plus its GAN discriminator term against the frozen classifier."""
    cfg, data = ctx.cfg, ctx.data
    seed = _seed(ctx.seed, "advgan")
    with _forked_rng(ctx.device, seed):
        net = PerturbationNet(data.shape, _width(cfg)).to(ctx.device)
        disc = Discriminator(data.shape[0]).to(ctx.device)
        ctx.log(f"matrix: advgan: training for {cfg.gen_attack_steps} steps")
        train_advgan(net, disc, model, data.train_x, data.train_y, steps=cfg.gen_attack_steps,
                     batch=cfg.batch_size, eps=cfg.eps_value, seed=seed, progress=getattr(ctx, "on_training", None))

    def attack(model_: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad(), preserve_mode(net, False):
            return _advgan_apply(net, x.detach(), eps)

    budget = {"train_steps": cfg.gen_attack_steps, "batch": cfg.batch_size, "width": net.width,
              "loss": "cw_margin_k0", "weights": dict(ADVGAN_WEIGHTS), "optimizer": f"adam lr {ATTACKER_LR}",
              "discriminator": "conv 8-16-1"}
    return [("advgan", attack, budget)]


# ---------------------------------------------------------------------------------------------- GAP
def _gap_apply(net: PerturbationNet, x: Tensor, eps: float) -> Tensor:
    """GAP: the U-Net's output scaled so its ℓ∞ norm is ε per example, added and clipped to [0, 1]."""
    out = net(x)
    scale = eps / out.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    return (x + (out * scale[:, None, None, None]).clamp(-eps, eps)).clamp(0.0, 1.0)


def train_gap(net: PerturbationNet, model: nn.Module, x: Tensor, y: Tensor, *, steps: int, batch: int,
              eps: float, seed: int, lr: float = ATTACKER_LR, progress: Progress | None = None) -> PerturbationNet:
    """GAP (Poursaeed et al. 2018), image-dependent, untargeted: minimise log p(y | x_adv). Returns eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    params = list(net.parameters())
    net.train()
    with preserve_mode(model, False):
        for xb, yb in _batches(x, y, steps, batch, gen, progress):
            logp = F.log_softmax(model(_gap_apply(net, xb, eps)), 1).gather(1, yb[:, None]).mean()
            for p, g in zip(params, torch.autograd.grad(logp, params)):
                p.grad = g
            opt.step()
    return net.eval()


def prepare_gap(model: nn.Module, ctx: Any) -> list[tuple[str, Callable[..., Tensor], dict]]:
    """The `gap` column: a U-Net of x, output scaled to the ℓ∞ ball, trained to lower log p(y | x_adv)."""
    cfg, data = ctx.cfg, ctx.data
    seed = _seed(ctx.seed, "gap")
    with _forked_rng(ctx.device, seed):
        net = PerturbationNet(data.shape, _width(cfg)).to(ctx.device)
        ctx.log(f"matrix: gap: training for {cfg.gen_attack_steps} steps")
        train_gap(net, model, data.train_x, data.train_y, steps=cfg.gen_attack_steps, batch=cfg.batch_size,
                  eps=cfg.eps_value, seed=seed, progress=getattr(ctx, "on_training", None))

    def attack(model_: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad(), preserve_mode(net, False):
            return _gap_apply(net, x.detach(), eps)

    budget = {"train_steps": cfg.gen_attack_steps, "batch": cfg.batch_size, "width": net.width,
              "loss": "log p(y|x_adv)", "scaling": "linf to eps", "optimizer": f"adam lr {ATTACKER_LR}"}
    return [("gap", attack, budget)]
