"""Black-box transfer attacks (paper Table 3): white-box attacks on surrogates, scored on the target.

Surrogates, as in the paper: A = plain, B = FGSM-AT, C = PGD10-AT, all of the dataset's
own classifier family (LeNet-5 on MNIST-like data, ResNet-20 on CIFAR-10) whatever the
trial's classifier is. Each is trained by the tool itself with
:class:`trainable.experiment.Experiment` and cached under ``cfg.cache_dir/transfer`` keyed by
dataset, seed and the surrogate's training config, so a sweep trains each surrogate once
per seed. Weights are written with :mod:`trainable.weights.checkpoint` and read back with
``weights_only=True``.

Surrogate training length: ``cfg.transfer_iterations`` adversarial iterations when set,
else the trial's own ``iterations`` (and its ``warmup``), i.e. the surrogate gets the same
training budget as the classifier under attack. Surrogates are seeded with
``cfg.seed + SURROGATE_SEED_OFFSET`` so they are initialised independently of the trial's
classifier (a surrogate sharing the target's initialisation and warm-up would transfer
unrealistically well).

Columns: ``transfer/<A|B|C>/pgd10``, ``…/pgd100`` (our PGD, random start, the last
iterate — not stopped at the surrogate's first misclassification, which transfers worse)
and ``…/l2lda`` (an L2L-DA generator trained against the frozen surrogate with
:func:`trainable.attacks.generative.prepare_l2lda`). x in [0, 1]; every x_adv lies in the ε-ball
and [0, 1] by construction of the attacks (and is checked by the matrix).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch import Tensor

from trainable.attacks.generative import prepare_l2lda
from trainable.attacks.gradient import pgd, preserve_mode
from trainable.weights.checkpoint import CheckpointError, load_module_state, load_state, private_tmp, save_state
from trainable.config import TrialConfig
from trainable.data.registry import DATASETS
from trainable.models.classifiers import build_classifier

SURROGATES = {"A": "plain", "B": "fgsm_at", "C": "pgd10_at"}
TRANSFER_ATTACKS = ("pgd10", "pgd100", "l2lda")
SURROGATE_SEED_OFFSET = 7919
CACHE_FORMAT = 4  # 2: per-defense augmentation and classifier clip; 3: per-defense LR schedule;
# 4: the source's classifier (input normalisation and init) and LR schedule at the source's length
# Training-config keys that change a surrogate's weights (the cache key).
_KEY_FIELDS = ("dataset", "model", "defense", "seed", "eps", "eps_step_frac", "warmup", "iterations", "batch_size",
               "lr", "momentum", "weight_decay", "lr_decay_at", "grad_clip", "augment", "clf_grad_clip", "input_norm")

AttackFn = Callable[..., Tensor]


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
    from trainable.experiment.loop import Experiment  # the runner imports evaluation, which loads us lazily

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
    exp = Experiment(scfg, log=log)
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


def _on_surrogate(surrogate: nn.Module, steps: int, step_div: float) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        # The target `model` is never queried: the perturbation is computed on the surrogate only.
        return pgd(surrogate, x, y, eps=eps, step=eps / step_div, steps=steps, random_start=True,
                   keep_best=False, early_stop=False, generator=generator)

    return run


def _wrap_generator_attack(surrogate: nn.Module, fn: AttackFn) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, generator: torch.Generator | None = None) -> Tensor:
        with preserve_mode(surrogate, False):
            return fn(surrogate, x, y, eps=eps, generator=generator)

    return run


def prepare_transfer(model: nn.Module, ctx: Any) -> list[tuple[str, AttackFn, dict]]:
    """Matrix column `transfer`: sub-columns transfer/<A|B|C>/<pgd10|pgd100|l2lda>."""
    from trainable.evaluation.matrix import EvalContext

    cfg: TrialConfig = ctx.cfg
    out: list[tuple[str, AttackFn, dict]] = []
    for letter, defense in SURROGATES.items():
        sur = train_surrogate(cfg, defense, device=ctx.device, log=ctx.log, progress=getattr(ctx, "on_training", None))
        for p in sur.parameters():
            p.requires_grad_(False)
        scfg = surrogate_config(cfg, defense)
        base = {"surrogate": letter, "surrogate_defense": defense, "surrogate_model": scfg.model,
                "surrogate_seed": scfg.seed, "surrogate_iterations": scfg.iterations,
                "surrogate_warmup": scfg.warmup, "surrogate_key": surrogate_key(scfg)}
        out.append((f"transfer/{letter}/pgd10", _on_surrogate(sur, 10, 4),
                    {**base, "attack": "pgd10", "steps": 10, "step": "eps/4", "random_start": True, "iterate": "last"}))
        out.append((f"transfer/{letter}/pgd100", _on_surrogate(sur, 100, 12),
                    {**base, "attack": "pgd100", "steps": 100, "step": "eps/12", "random_start": True,
                     "iterate": "last"}))
        sctx = EvalContext(cfg=cfg, data=ctx.data, device=ctx.device, generator=None,
                           seed=ctx.seed + SURROGATE_SEED_OFFSET, log=ctx.log,
                           on_training=getattr(ctx, "on_training", lambda d, t: None))
        for _name, fn, budget in prepare_l2lda(sur, sctx):
            out.append((f"transfer/{letter}/l2lda", _wrap_generator_attack(sur, fn),
                        {**base, "attack": "l2lda", **budget}))
    return out
