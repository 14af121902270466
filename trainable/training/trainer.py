"""The training half of a trial: one trial from a TrialConfig in a plain Python process, no Ray needed.

``Trainer`` owns everything a trial's state consists of — classifier, defense (and its
generator), both optimisers, the batch sampler, every RNG — so a checkpoint restores it bit
for bit on the CPU. Its set-up reads :mod:`trainable.training.resources` (threads, device)
and :mod:`trainable.training.warmup` (the shared clean warm-up); generator defenses are
watched by :mod:`trainable.training.health`. Evaluation is a layer above
(:mod:`trainable.experiment`, docs/architecture.md "Layers"): nothing here evaluates.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from trainable import __version__
from trainable.config import TrialConfig
from trainable.data.loading import BatchSampler, augment, fixed_subset, load_dataset
from trainable.defenses.base import cross_entropy
from trainable.defenses.registry import DEFENSES, build_defense
from trainable.errors import CheckpointError, DivergenceError
from trainable.generators.kernels import amp_dtype
from trainable.models.classifiers import build_classifier
from trainable.training.health import FLAG as COLLAPSE_FLAG, CollapseCheck
from trainable.training.resources import place, set_threads
from trainable.training.warmup import WarmupCache
from trainable.weights.checkpoint import load_module_state, load_state, save_state


class Trainer:
    """One trial's training half: build from a config, train, check the generator's health, checkpoint.

    :class:`trainable.experiment.Experiment` adds validation and the robustness matrix on top.
    """

    def __init__(self, cfg: TrialConfig, log: Callable[[str], None] | None = None, use_cache: bool = True) -> None:
        self.cfg = cfg = cfg.resolved()
        self.log = log or (lambda msg: None)
        self.threads = set_threads(cfg.threads, compile_workers=cfg.compile)
        self.placement = place(cfg)  # one device, checked against the GPU share, memory capped (docs/reliability.md)
        self.device = self.placement.device
        amp_dtype(cfg.amp, self.device)  # bf16 is CUDA only: a one-line ConfigError before any work
        self.data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, self.device)
        shape, ncls = self.data.shape, self.data.num_classes
        torch.manual_seed(cfg.seed)
        self.classifier = build_classifier(cfg.model, cfg.dataset, shape[0], cfg.input_norm).to(self.device)
        if cfg.channels_last:  # docs/performance.md: NHWC wins on CPU (oneDNN) as on CUDA
            self.classifier = self.classifier.to(memory_format=torch.channels_last)
        self.clf_opt = torch.optim.SGD(self.classifier.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay)
        # Batch indices and augmentation are drawn on the trial's device: no host-to-device copy
        # per iteration (docs/performance.md, the GPU path); their states are saved on the CPU.
        self.sampler = BatchSampler(len(self.data.train_y), cfg.batch_size, cfg.seed, self.device)
        self.aug_rng = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.iteration = 0
        self.val_idx = torch.as_tensor(fixed_subset(len(self.data.val_y), cfg.val_subset), device=self.device)
        self.test_idx = fixed_subset(len(self.data.test_y), cfg.test_subset)
        self.history: list[dict[str, float]] = []
        self.train_time = 0.0
        # Adversarial trials of a sweep share their clean warm-up through a cache on disk (docs/method.md).
        self.warmup_cache = WarmupCache(cfg, log=self.log, device=self.device) if use_cache and DEFENSES[cfg.defense].adversarial else None
        if self.warmup_cache is not None and cfg.warmup > 0:
            self.warmup_cache.load(self)
        # The defense (and its generator) is built from its own seed, so a cached warm-up
        # and a computed one leave the same RNG state behind.
        torch.manual_seed(cfg.seed + 2)
        self.defense = build_defense(cfg, self.classifier, shape, ncls, self.device)
        self.adversarial = DEFENSES[cfg.defense].adversarial  # False: clean batches only (no defense)
        # Generator defenses are watched for a generator that stops fooling (docs/method.md).
        self.health = CollapseCheck() if DEFENSES[cfg.defense].generator is not None else None
        self.stopped_at: int | None = None  # set when `stop_on_collapse` ended training early

    # ------------------------------------------------------------------ train
    @property
    def done(self) -> bool:
        return self.iteration >= self.cfg.total_iterations or self.stopped_at is not None

    def lr_at(self, it: int) -> float:
        """Classifier LR at iteration `it`: ×0.1 from `lr_decay_at` of the adversarial iterations on (None: never)."""
        frac = self.cfg.lr_decay_at_value
        if frac is None or self.cfg.iterations == 0:
            return self.cfg.lr
        decay_at = self.cfg.warmup + frac * self.cfg.iterations
        return self.cfg.lr * (0.1 if it >= decay_at else 1.0)

    def clip_at(self, it: int) -> float:
        """Classifier grad-norm clip at iteration `it`: none in the clean warm-up, the defense's after (0: none)."""
        return 0.0 if it < self.cfg.warmup else self.cfg.clf_grad_clip

    def train(self, n: int) -> dict[str, float]:
        """Run up to `n` iterations; returns the mean of each train metric (one host sync)."""
        cfg = self.cfg
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        done = 0
        for _ in range(n):
            if self.done:
                break
            it = self.iteration
            idx = self.sampler.next()
            x, y = self.data.train_x[idx], self.data.train_y[idx]
            if cfg.augment:  # resolved: the source's choice for this defense unless forced
                x = augment(x, cfg.dataset, self.aug_rng)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for g in self.clf_opt.param_groups:
                g["lr"] = self.lr_at(it)
            # The defense makes the training batch (its own inner maximisation, in whichever mode it
            # needs) and, in train mode, the classifier's loss on it (docs/extending.md, "A defense");
            # the clean warm-up is one CE over the clean batch for every defense.
            if it >= cfg.warmup and self.adversarial:
                xt, yt, m = self.defense.batch(x, y, it)
                self.classifier.train()
                loss, lm = self.defense.classifier_loss(xt, yt, x, y)
            else:
                m = {}
                self.classifier.train()
                loss, lm = cross_entropy(self.classifier, x, y, len(y))
            self.clf_opt.zero_grad(set_to_none=True)
            loss.backward()
            clip = self.clip_at(it)
            if clip > 0:
                nn.utils.clip_grad_norm_(self.classifier.parameters(), clip)
            self.clf_opt.step()
            with torch.no_grad():
                m = {**m, "train/loss": loss.detach(), **lm}
                for k, v in m.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                    counts[k] = counts.get(k, 0) + 1
            self.iteration += 1
            done += 1
            if self.iteration == cfg.warmup and self.warmup_cache is not None:
                self.warmup_cache.save(self)
        elapsed = time.perf_counter() - t0
        self.train_time += elapsed
        out = {k: float(v) / counts[k] for k, v in sums.items()}  # the one host sync per report
        if any(not math.isfinite(v) for v in out.values()):
            bad = next(k for k, v in out.items() if not math.isfinite(v))
            raise DivergenceError(f"{bad} became {out[bad]} by iteration {self.iteration}")
        out["iteration"] = float(self.iteration)
        out["time/iter_s"] = elapsed / max(done, 1)
        out["time/samples_per_s"] = done * cfg.batch_size / elapsed if elapsed > 0 else 0.0
        out["train/lr"] = self.lr_at(max(self.iteration - 1, 0))
        return out


    def check_health(self, out: dict[str, Any], start: int) -> None:
        """The collapse check on a report whose iterations were all adversarial (docs/method.md)."""
        if self.health is None:
            return
        if start >= self.cfg.warmup and self.health.update(out, self.iteration):
            self.log(f"check: {self.health.message(out)}")
            if self.cfg.stop_on_collapse:
                self.stopped_at = self.iteration
                self.log(f"check: stop_on_collapse: training stops at iteration {self.iteration}; "
                         f"the test matrix runs on this classifier")
        out[COLLAPSE_FLAG] = 1.0 if self.health.fired else 0.0


    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "aug": self.aug_rng.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "classifier": self.classifier.state_dict(),
            "clf_opt": self.clf_opt.state_dict(),
            "defense": self.defense.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng,
            "iteration": self.iteration,
            "train_time": self.train_time,
            "health": {**(self.health.state_dict() if self.health is not None else {}), "stopped_at": self.stopped_at},
        }

    def load_state_dict(self, state: dict) -> None:
        load_module_state(self.classifier, state["classifier"], "classifier")
        self.clf_opt.load_state_dict(state["clf_opt"])
        self.defense.load_state_dict(state["defense"])
        self.sampler.load_state_dict(state["sampler"])
        # RNG states are CPU byte tensors on every device (docs/reliability.md, devices).
        torch.set_rng_state(state["rng"]["torch"].to("cpu"))
        self.aug_rng.set_state(state["rng"]["aug"].to("cpu"))
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].to("cpu"), self.device)
        self.iteration = int(state["iteration"])
        self.train_time = float(state.get("train_time", 0.0))
        health = state.get("health") or {}  # checkpoints of earlier versions have none
        if self.health is not None:
            self.health.load_state_dict(health)
        self.stopped_at = None if health.get("stopped_at") is None else int(health["stopped_at"])

    def save(self, directory: str | os.PathLike) -> None:
        meta = {"iteration": self.iteration, "dataset": self.cfg.dataset, "model": self.cfg.model,
                "defense": self.cfg.defense, "version": __version__, "history": self.history}
        save_state(directory, self.state_dict(), self.cfg.to_dict(), meta)

    def restore(self, directory: str | os.PathLike) -> None:
        # Onto the CPU whatever the trial's device: the modules and optimisers move their own
        # tensors, the RNG states stay where torch needs them (docs/reliability.md, devices).
        state, config, meta = load_state(directory)
        for key in ("dataset", "model", "defense"):
            if meta.get(key) != getattr(self.cfg, key):
                raise CheckpointError(f"{directory}: checkpoint is for {key}={meta.get(key)!r}, "
                                      f"this trial has {key}={getattr(self.cfg, key)!r}")
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{directory}: incomplete checkpoint state ({type(exc).__name__}: {exc})") from None
        self.history = list(meta.get("history", []))

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, log: Callable[[str], None] | None = None,
                        **overrides: Any) -> "Trainer":
        _, config, _ = load_state(directory)  # validates the files before building anything
        cfg = TrialConfig.from_stored({**config_for_here(config, log), **overrides})
        exp = cls(cfg, log=log, use_cache=False)
        exp.restore(directory)
        return exp


# Where and how the trial that wrote a checkpoint ran is not this process's business: its thread
# count, GPU share and device were the worker's (docs/reliability.md, devices).

_EXECUTION_DEFAULTS = {"threads": 0, "gpu_fraction": 0.0, "device": "auto"}


def config_for_here(config: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A checkpoint's config for a process on this machine (figure2, benches): the writer's
    execution settings dropped, and a path that does not exist here (another node's) replaced
    by its default, relative to the working directory."""
    out = {**config, **{k: v for k, v in _EXECUTION_DEFAULTS.items() if k in config}}
    for key in ("data_root", "cache_dir"):
        value = out.get(key)
        if isinstance(value, str) and os.path.isabs(value) and not os.path.exists(value):
            out[key] = getattr(TrialConfig, key)
            if log:
                log(f"checkpoint: {key} {value} does not exist here; using {out[key]}")
    return out
