"""An example l2lda-tune plug-in (docs/extending.md): one module, one registry entry per kind.

* ``rfgsm`` — an attack column: R+FGSM (Tramèr et al. 2018), a random signed step of α = ε/2,
  then an FGSM step of ε − α from there; x in [0, 1], x_adv in the ε-ball and [0, 1].
* ``fgsm_rs_at`` — a defense: FGSM with a uniform random start and step 1.25·ε, clipped to the
  ε-ball (Wong et al. 2020, "Fast is better than free"), trained on [x ; x_adv].
* ``npz_digits`` — a dataset: ``data_root/npz_digits.npz`` holding uint8 images ``x`` (N, 28, 28)
  and labels ``y``; the last fifth is the test split.
* ``mlp`` — a classifier for 28×28 inputs: normalisation inside, one hidden layer of 128.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainable.attacks import ColumnEntry, preserve_mode
from trainable.data import DatasetEntry, DatasetMissingError, stratified_split
from trainable.defenses import Defense, DefenseEntry
from trainable.models import ClassifierEntry, Normalize


def _input_grad(model, x, y):
    with preserve_mode(model, False), torch.enable_grad():
        xa = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)  # no parameter .grad
    return g


def _uniform(x, eps, generator):
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu" if generator else x.device)
    return (noise.to(x.device) * 2 - 1) * eps


def rfgsm(model, x, y, *, eps, generator=None):
    alpha = eps / 2
    x0 = (x + alpha * torch.sign(_uniform(x, 1.0, generator))).clamp(0, 1)
    x_adv = x0 + (eps - alpha) * _input_grad(model, x0, y).sign()
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1).detach()


class FGSMRandomStart(Defense):
    def batch(self, x, y, iteration):
        eps = self.cfg.eps
        x0 = (x + _uniform(x, eps, None)).clamp(0, 1)
        x_adv = x0 + 1.25 * eps * _input_grad(self.classifier, x0, y).sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1).detach()
        return torch.cat([x, x_adv]), torch.cat([y, y]), {}


def load_npz(entry, root, download):
    path = Path(root) / "npz_digits.npz"
    if not path.is_file():
        raise DatasetMissingError(f"dataset 'npz_digits' not found at {path.resolve()} (x: uint8 N×28×28, y)")
    data = np.load(path)
    x = torch.from_numpy(data["x"]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(data["y"].astype(np.int64))
    n_test = len(y) // 5
    parts = stratified_split(y[:-n_test].numpy(), {"train": len(y) - n_test - entry.val_size, "val": entry.val_size})
    tr, va = torch.from_numpy(parts["train"]), torch.from_numpy(parts["val"])
    return x[tr], y[tr], x[va], y[va], x[-n_test:], y[-n_test:], parts["val"]


def write_npz(root):
    rng = np.random.default_rng(0)
    Path(root).mkdir(parents=True, exist_ok=True)
    np.savez(Path(root) / "npz_digits.npz", x=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
             y=np.arange(100) % 10)


class MLP(nn.Module):
    """For 28×28 inputs."""

    def __init__(self, in_channels=1, num_classes=10, mean=(0.5,), std=(0.5,)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 28 * 28, 128), nn.ReLU(),
                                 nn.Linear(128, num_classes))

    def forward(self, x):
        return self.net(self.normalize(x))


RFGSM = ColumnEntry("rfgsm", "gradient", attack=rfgsm, budget={"steps": 1, "alpha": "eps/2"},
                    doc="R+FGSM (Tramèr et al. 2018)")
FGSM_RS_AT = DefenseEntry("fgsm_rs_at", FGSMRandomStart, cost=60.0, doc="FGSM-RS adversarial training")
NPZ_DIGITS = DatasetEntry("npz_digits", (1, 28, 28), 10, (0.5,), (0.5,), eps=0.3, lam=0.02, model="lenet5",
                          val_size=10, test_size=20, train_size=70, load=load_npz, tiny_copy=write_npz)
MLP_ENTRY = ClassifierEntry("mlp", MLP, cost=0.3, doc="one hidden layer of 128")
