"""The clean warm-up shared by the adversarial trials of a sweep (docs/method.md, warm-up).

The warm-up is plain CE on clean batches (no clip), so trials that differ only after it
(another defense, λ, T, …) start from the same classifier. The first trial to finish it
writes classifier, optimiser, sampler and augmentation-RNG state under
``cache_dir/warmup``, keyed by what changes it; later trials load it onto the CPU and the
modules move it to their device. A bad cache entry is discarded whole and recomputed, never
trusted nor half-applied; files are torch files read with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from trainable.config import TrialConfig
from trainable.weights.checkpoint import private_tmp


WARMUP_FORMAT = 2  # 2: classifiers built as their sources build them (input normalisation, init)


def _warmup_key(cfg: TrialConfig, device: torch.device) -> str:
    # The warm-up is plain CE with no clip (docs/method.md), so the classifier clip is not part of the key.
    keys = ("dataset", "model", "input_norm", "seed", "warmup", "batch_size", "lr", "momentum", "weight_decay", "augment")
    values: dict[str, Any] = {"format": WARMUP_FORMAT, **{k: getattr(cfg, k) for k in keys}}
    if device.type != "cpu":  # its sampler draws on that device: another stream, another warm-up
        values["device"] = device.type
    blob = json.dumps(values, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class WarmupCache:
    """The warm-up cache entry of one trial config."""

    def __init__(self, cfg: TrialConfig, log: Callable[[str], None] = lambda msg: None,
                 device: torch.device | str = "cpu") -> None:
        self.cfg, self.log = cfg, log
        self.path = (Path(cfg.cache_dir).expanduser() / "warmup"
                     / f"{cfg.dataset}-{cfg.model}-{_warmup_key(cfg, torch.device(device))}.pt")

    def load(self, exp: Any) -> bool:
        """Put the cached warm-up into `exp` (classifier, optimiser, sampler, aug RNG, iteration); False if none.

        All or nothing (docs/reliability.md, devices): the file is read onto the CPU and applied;
        if any part fails, everything already applied is put back as it was, the entry is
        deleted, one line says so, and the trial computes its warm-up itself."""
        p = self.path
        if not p.is_file():
            return False
        before = {"classifier": copy.deepcopy(exp.classifier.state_dict()),
                  "clf_opt": copy.deepcopy(exp.clf_opt.state_dict()),
                  "sampler": exp.sampler.state_dict(), "aug_rng": exp.aug_rng.get_state(), "iteration": exp.iteration}
        try:
            st = torch.load(p, map_location="cpu", weights_only=True)
            _apply(exp, st)
        except Exception as exc:  # a bad cache entry is rebuilt, never trusted nor half-applied
            _apply(exp, before)
            try:
                p.unlink()
            except OSError:
                pass
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            self.log(f"warm-up cache {p} unusable ({type(exc).__name__}: {first}); discarded, recomputing the warm-up")
            return False
        self.log(f"warm-up: loaded {exp.iteration} clean iterations from {p}")
        return True

    def save(self, exp: Any) -> None:
        """Write `exp`'s state at the end of its warm-up (atomically: concurrent trials never read half a file)."""
        p = self.path
        tmp = private_tmp(p)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"classifier": exp.classifier.state_dict(), "clf_opt": exp.clf_opt.state_dict(),
                        "sampler": exp.sampler.state_dict(), "aug_rng": exp.aug_rng.get_state().to("cpu"),
                        "iteration": exp.iteration}, tmp)
            os.replace(tmp, p)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self.log(f"warm-up cache not written ({exc})")


def _apply(exp: Any, st: dict) -> None:
    exp.classifier.load_state_dict(st["classifier"])
    exp.clf_opt.load_state_dict(st["clf_opt"])
    exp.sampler.load_state_dict(st["sampler"])
    exp.aug_rng.set_state(st["aug_rng"].to("cpu"))  # generator states are CPU tensors on every device
    exp.iteration = int(st["iteration"])
