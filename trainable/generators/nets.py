"""The L2L-DA generator and the L2L* generator (docs/method.md; paper Fig. 3).

Images are in [0, 1] pixel space (normalisation lives inside the classifier). The generator
g_φ(x, y, z, δ, ĝ) is a small U-Net with class-conditional batch norm and z fed through an
MLP; the L2L* baseline (Chen et al.) is the same U-Net on [x, ∇L(x)] without z, y or δ.
The recursion that runs them is :mod:`trainable.generators.rollout` (Eq. 5).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainable.models.init import authors_init

# ε of the generators' batch norms: the authors' generator builds every one with 1e-10
# (docs/method.md, "Generator"); TrialConfig.gen_bn_eps carries it per trial.
BN_EPS = 1e-10


class CondBatchNorm2d(nn.Module):
    """Class-conditional batch norm: γ = γ_shared + γ[y], β = β_shared + β[y] (docs/method.md).

    γ_shared ~ N(1, 0.02), γ[y] ~ N(0, 0.02), every β = 0 at init.
    """

    def __init__(self, channels: int, num_classes: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, affine=False)
        self.gamma_shared = nn.Parameter(torch.empty(channels).normal_(1.0, 0.02))
        self.beta_shared = nn.Parameter(torch.zeros(channels))
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.normal_(self.gamma.weight, 0.0, 0.02)
        nn.init.zeros_(self.beta.weight)

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        g = (self.gamma_shared + self.gamma(y))[:, :, None, None]
        b = (self.beta_shared + self.beta(y))[:, :, None, None]
        return self.bn(h) * g + b


class PlainBatchNorm2d(nn.Module):
    """Unconditional batch norm (the `use_label` ablation and L2L*), γ ~ N(1, 0.02), β = 0."""

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps)
        nn.init.normal_(self.bn.weight, 1.0, 0.02)
        nn.init.zeros_(self.bn.bias)

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        return self.bn(h)


class UNet(nn.Module):
    """The U-Net body of docs/method.md, for any C×H×W with H, W divisible by 4 (28×28 → 14 → 7, 32×32 → 16 → 8).

    down0 conv3×3 s1 → w, LReLU 0.2 | down1 conv4×4 s2 → w, BN, LReLU | down2 conv4×4 s2 → 2w, LReLU
    up2 convT4×4 s2 → w, BN, ReLU, ⊕down1 | up1 convT4×4 s2 → w, BN, ReLU, ⊕down0 | out conv3×3 → C, tanh.
    All convs bias-free. With ``z_dim > 0``, z → MLP Linear(z_dim→8)–ReLU–Linear(8→8)–ReLU is tiled and concatenated to the
    inputs of down0, down1 and down2. BN is class-conditional when ``num_classes`` is given.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, z_dim: int = 0,
                 num_classes: int | None = None, bn_eps: float = BN_EPS) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width: must be >= 1, got {width}")
        w, zc = width, (8 if z_dim > 0 else 0)
        self.z_dim, self.zc = z_dim, zc
        self.z_mlp = nn.Sequential(nn.Linear(z_dim, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU()) if z_dim > 0 else None
        self.down0 = ZConv2d(in_channels + zc, w, 3, 1, 1, bias=False)
        self.down1 = ZConv2d(w + zc, w, 4, 2, 1, bias=False)
        self.down2 = ZConv2d(w + zc, 2 * w, 4, 2, 1, bias=False)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False)
        self.out = nn.Conv2d(2 * w, out_channels, 3, 1, 1, bias=False)
        norm = ((lambda c: CondBatchNorm2d(c, num_classes, bn_eps)) if num_classes
                else (lambda c: PlainBatchNorm2d(c, bn_eps)))
        self.norm1, self.norm_up2, self.norm_up1 = norm(w), norm(w), norm(w)
        authors_init(self)

    def body(self, inp: Tensor, z: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        if inp.shape[2] % 4 or inp.shape[3] % 4:
            raise ValueError(f"generator input: spatial size must be divisible by 4, got {tuple(inp.shape[2:])}")
        if is_channels_last(self.down0.weight):
            inp = inp.contiguous(memory_format=torch.channels_last)
        zf = self.z_mlp(z) if self.z_mlp is not None else None
        d0 = F.leaky_relu(self.down0(inp, zf), 0.2)
        d1 = F.leaky_relu(self.norm1(self.down1(d0, zf), y), 0.2)
        d2 = F.leaky_relu(self.down2(d1, zf), 0.2)
        u2 = torch.cat([F.relu(self.norm_up2(self.up2(d2), y)), d1], 1)
        u1 = torch.cat([F.relu(self.norm_up1(self.up1(u2), y)), d0], 1)
        return torch.tanh(self.out(u1))


def is_channels_last(t: Tensor) -> bool:
    """Whether a 4-d tensor is stored NHWC (and not also plain contiguous, as 1-channel tensors can be)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class ZConv2d(nn.Conv2d):
    """A convolution over ``[h, tile(zf)]`` (h's channels, then the z features tiled to H×W) that never builds the tiles.

    The z features are constant over H×W, so their share of the convolution is, per output
    position, a fixed linear map of zf: M[k] = the response of z channel k's weights to a
    plane of ones (zero padding included, so the border is exact). One small convolution
    gives M, one matmul gives zf·M, added to the convolution of h alone (docs/performance.md).
    Same parameters (and state-dict keys) as the ``nn.Conv2d`` over the concatenation.
    """

    def forward(self, h: Tensor, zf: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if zf is None:
            return super().forward(h)
        c, w = h.shape[1], self.weight
        out = F.conv2d(h, w[:, :c], None, self.stride, self.padding)
        zc, o, k = zf.shape[1], w.shape[0], w.shape[2:]
        ones = torch.ones((1, 1) + tuple(h.shape[2:]), dtype=h.dtype, device=h.device)
        m = F.conv2d(ones, w[:, c:].transpose(0, 1).reshape(zc * o, 1, *k), None, self.stride, self.padding)
        ho, wo = out.shape[2:]
        if is_channels_last(out):
            zterm = (zf @ m.reshape(zc, o, ho * wo).transpose(1, 2).reshape(zc, -1)).view(-1, ho, wo, o).permute(0, 3, 1, 2)
        else:
            zterm = (zf @ m.reshape(zc, -1)).view(-1, o, ho, wo)
        return out.add_(zterm.to(out.dtype))


class Generator(UNet):
    """L2L-DA generator g_φ(x, y, z, δ, ĝ) → direction in [−1, 1]^{C×H×W} (docs/method.md).

    Inputs: x in [0, 1] (N, C, H, W); ĝ the (normalised) input gradient; δ the current
    perturbation (only when ``use_delta``); z ~ N(0, I) of dim ``z_dim``; y labels (only
    when ``use_label``: class-conditional BN, else plain BN). ``grad_norm`` says whether
    :func:`input_gradient` normalises ĝ for this generator.
    """

    kind = "l2lda"

    def __init__(self, shape: Sequence[int], num_classes: int = 10, *, width: int = 64, z_dim: int = 8,
                 use_delta: bool = True, use_label: bool = True, grad_norm: bool = True,
                 bn_eps: float = BN_EPS) -> None:
        c = int(shape[0])
        if z_dim < 1:
            raise ValueError(f"z_dim: must be >= 1 for the L2L-DA generator, got {z_dim}")
        super().__init__(c * (3 if use_delta else 2), c, width, z_dim, num_classes if use_label else None, bn_eps)
        self.shape, self.num_classes, self.width = tuple(int(s) for s in shape), num_classes, width
        self.use_delta, self.use_label, self.grad_norm = use_delta, use_label, grad_norm

    @classmethod
    def from_config(cls, cfg: Any, shape: Sequence[int], num_classes: int, *, width: int) -> "Generator":
        """The generator a trial's config describes (its ablation flags and batch-norm ε), at `width`:
        the trial's own, the `l2lda` column's attacker and Figure 2's are all built here."""
        return cls(shape, num_classes, width=width, z_dim=cfg.z_dim, use_delta=cfg.use_delta,
                   use_label=cfg.use_label, grad_norm=cfg.grad_norm, bn_eps=cfg.gen_bn_eps)

    def forward(self, x: Tensor, grad: Tensor, delta: Tensor | None, z: Tensor, y: Tensor | None = None) -> Tensor:
        parts = [x, grad, delta] if self.use_delta else [x, grad]
        if self.use_delta and delta is None:
            raise ValueError("generator: use_delta is on but no δ was given")
        if self.use_label and y is None:
            raise ValueError("generator: use_label is on but no labels y were given")
        return self.body(torch.cat(parts, 1), z, y if self.use_label else None)

    def config(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "num_classes": self.num_classes, "width": self.width,
                "z_dim": self.z_dim, "use_delta": self.use_delta, "use_label": self.use_label,
                "grad_norm": self.grad_norm}


class L2LStarGenerator(UNet):
    """L2L* (Chen et al.): one-shot generator on [x, ∇L(x)], no z, no y, no δ, plain BN.

    The paper (§5.2.1) says L2L* differs from L2L-DA's base model by y, δ and gradient
    normalisation, so by default it reads the RAW input gradient (``grad_norm=False``).
    """

    kind = "l2l_star"

    def __init__(self, shape: Sequence[int], *, width: int = 64, grad_norm: bool = False,
                 bn_eps: float = BN_EPS) -> None:
        c = int(shape[0])
        super().__init__(2 * c, c, width, 0, None, bn_eps)
        self.shape, self.width, self.grad_norm = tuple(int(s) for s in shape), width, grad_norm

    @classmethod
    def from_config(cls, cfg: Any, shape: Sequence[int], *, width: int) -> "L2LStarGenerator":
        """L2L* as a trial's config describes it: the raw input gradient (by definition of L2L*,
        docs/method.md) and the config's batch-norm ε."""
        return cls(shape, width=width, grad_norm=False, bn_eps=cfg.gen_bn_eps)

    def forward(self, x: Tensor, grad: Tensor) -> Tensor:
        return self.body(torch.cat([x, grad], 1))

    def config(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "width": self.width, "grad_norm": self.grad_norm}
