"""The transfer surrogates (paper Table 3) as one more config-keyed cache of the training layer.

Surrogates, as in the paper: A = plain, B = FGSM-AT, C = PGD10-AT, all of the dataset's
own classifier family (LeNet-5 on MNIST-like data, ResNet-20 on CIFAR-10) whatever the
trial's classifier is. Each is trained by the tool itself with
:class:`trainable.training.trainer.Trainer` and cached under ``cfg.cache_dir/transfer`` keyed by
dataset, seed and the surrogate's training config, so a sweep trains each surrogate once
per seed. Weights are written with :mod:`trainable.weights.checkpoint` and read back with
``weights_only=True``. The ``transfer`` column that attacks through them is
:mod:`trainable.evaluation.transfer`.

Surrogate training length: ``cfg.transfer_iterations`` adversarial iterations when set,
else the trial's own ``iterations`` (and its ``warmup``), i.e. the surrogate gets the same
training budget as the classifier under attack. Surrogates are seeded with
``cfg.seed + SURROGATE_SEED_OFFSET`` so they are initialised independently of the trial's
classifier (a surrogate sharing the target's initialisation and warm-up would transfer
unrealistically well).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from trainable.config import TrialConfig
from trainable.data.registry import DATASETS
from trainable.errors import CheckpointError
from trainable.models.classifiers import build_classifier
from trainable.training.trainer import Trainer
from trainable.weights.checkpoint import load_module_state, load_state, private_tmp, save_state

SURROGATES = {"A": "plain", "B": "fgsm_at", "C": "pgd10_at"}
SURROGATE_SEED_OFFSET = 7919
CACHE_FORMAT = 4  # 2: per-defense augmentation and classifier clip; 3: per-defense LR schedule;
# 4: the source's classifier (input normalisation and init) and LR schedule at the source's length
# Training-config keys that change a surrogate's weights (the cache key).
_KEY_FIELDS = ("dataset", "model", "defense", "seed", "eps", "eps_step_frac", "warmup", "iterations", "batch_size",
               "lr", "momentum", "weight_decay", "lr_decay_at", "grad_clip", "augment", "clf_grad_clip", "input_norm")


def surrogate_config(cfg: TrialConfig, defense: str) -> TrialConfig:
    """The TrialConfig that trains surrogate `defense` for trial `cfg` (natural-only evaluation).

    A surrogate is a baseline trained as its source trains it: its own augmentation,
    classifier clip and LR schedule (docs/method.md), whatever the target trial used.
    """
    cfg = cfg.resolved()
    iterations = cfg.transfer_iterations if cfg.transfer_iterations > 0 else cfg.iterations
    return cfg.replace(
        defense=defense,
        model=DATASETS[cfg.dataset].model,
        input_norm="auto",
        seed=cfg.seed + SURROGATE_SEED_OFFSET,
        iterations=iterations,
        eval_columns=["natural"],
        val_columns=["natural"],
        steps_per_report=max(1, min(cfg.steps_per_report, 1000)),
        augment="auto",
        clf_grad_clip=None,
        lr_decay_at="auto",
    ).resolved()


def surrogate_key(scfg: TrialConfig) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **{k: getattr(scfg, k) for k in _KEY_FIELDS}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def surrogate_dir(scfg: TrialConfig) -> Path:
    return (Path(scfg.cache_dir).expanduser() / "transfer"
            / f"{scfg.dataset}-{scfg.model}-{scfg.defense}-seed{scfg.seed}-{surrogate_key(scfg)}")


def _load_surrogate(directory: Path, scfg: TrialConfig, in_channels: int, device: torch.device) -> nn.Module:
    # Read onto the CPU, loaded, then moved whole: a surrogate cached on one device loads on any
    # (docs/reliability.md, devices).
    state, _config, meta = load_state(directory)
    if meta.get("key") != surrogate_key(scfg):
        raise CheckpointError(f"{directory}: surrogate cache key mismatch")
    model = build_classifier(scfg.model, scfg.dataset, in_channels, scfg.input_norm)
    load_module_state(model, state["classifier"], f"surrogate {scfg.defense}")
    return model.to(device).eval()


def train_surrogate(cfg: TrialConfig, defense: str, *, device: torch.device | None = None,
                    log: Callable[[str], None] = lambda m: None, use_cache: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """Train (or load from the cache) the surrogate `defense` for trial `cfg`; returns it in eval mode.
    `progress` hears (iterations done, iterations in all) after each training chunk."""
    scfg = surrogate_config(cfg, defense)
    d = surrogate_dir(scfg)
    stale = False
    if use_cache and d.is_dir():
        try:
            in_ch = int(json.loads((d / "meta.json").read_text()).get("in_channels", 1))
            model = _load_surrogate(d, scfg, in_ch, device or torch.device("cpu"))
            log(f"transfer: loaded surrogate {defense} from {d}")
            return model
        except Exception as exc:  # a bad cache entry is discarded whole and retrained, never trusted
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            log(f"transfer: cache {d} unusable ({type(exc).__name__}: {first}); discarded, retraining")
            stale = True
    log(f"transfer: training surrogate {defense} ({scfg.warmup}+{scfg.iterations} iterations, seed {scfg.seed})")
    exp = Trainer(scfg, log=log)
    while not exp.done:
        exp.train(scfg.steps_per_report)
        if progress is not None:
            progress(exp.iteration, scfg.total_iterations)
    model = exp.classifier.eval()
    if device is not None:
        model = model.to(device)
    if use_cache:
        # Write to a private directory, then rename: concurrent trials never see a half-written surrogate.
        tmp = private_tmp(d)
        save_state(tmp, {"classifier": exp.classifier.state_dict()}, scfg.to_dict(),
                   {"key": surrogate_key(scfg), "in_channels": exp.data.shape[0], "defense": defense,
                    "iteration": exp.iteration})
        if stale:
            shutil.rmtree(d, ignore_errors=True)
        try:
            os.replace(tmp, d)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return model
