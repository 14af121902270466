"""The clean warm-up shared by the adversarial trials of a sweep (docs/method.md, warm-up).

The warm-up is plain CE on clean batches (no clip), so trials that differ only after it
(another defense, λ, T, …) start from the same classifier. The first trial to finish it
writes classifier, optimiser, sampler and augmentation-RNG state under
``cache_dir/warmup``, keyed by what changes it; later trials load it. A bad cache entry is
recomputed, never trusted; files are torch files read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from trainable.config import TrialConfig


WARMUP_FORMAT = 2  # 2: classifiers built as their sources build them (input normalisation, init)


def _warmup_key(cfg: TrialConfig) -> str:
    # The warm-up is plain CE with no clip (docs/method.md), so the classifier clip is not part of the key.
    keys = ("dataset", "model", "input_norm", "seed", "warmup", "batch_size", "lr", "momentum", "weight_decay", "augment")
    blob = json.dumps({"format": WARMUP_FORMAT, **{k: getattr(cfg, k) for k in keys}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class WarmupCache:
    """The warm-up cache entry of one trial config."""

    def __init__(self, cfg: TrialConfig, log: Callable[[str], None] = lambda msg: None) -> None:
        self.cfg, self.log = cfg, log
        self.path = Path(cfg.cache_dir).expanduser() / "warmup" / f"{cfg.dataset}-{cfg.model}-{_warmup_key(cfg)}.pt"

    def load(self, exp: Any) -> bool:
        """Put the cached warm-up into `exp` (classifier, optimiser, sampler, aug RNG, iteration); False if none."""
        p = self.path
        if not p.is_file():
            return False
        try:
            st = torch.load(p, map_location=exp.device, weights_only=True)
            exp.classifier.load_state_dict(st["classifier"])
            exp.clf_opt.load_state_dict(st["clf_opt"])
            exp.sampler.load_state_dict(st["sampler"])
            exp.aug_rng.set_state(st["aug_rng"])
            exp.iteration = int(st["iteration"])
            self.log(f"warm-up: loaded {exp.iteration} clean iterations from {p}")
            return True
        except Exception as exc:  # a bad cache entry is recomputed, never trusted
            self.log(f"warm-up cache {p} unusable ({type(exc).__name__}); recomputing")
            exp.iteration = 0
            return False

    def save(self, exp: Any) -> None:
        """Write `exp`'s state at the end of its warm-up (atomically: concurrent trials never read half a file)."""
        p = self.path
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"classifier": exp.classifier.state_dict(), "clf_opt": exp.clf_opt.state_dict(),
                        "sampler": exp.sampler.state_dict(), "aug_rng": exp.aug_rng.get_state(),
                        "iteration": exp.iteration}, tmp)
            os.replace(tmp, p)
        except OSError as exc:
            self.log(f"warm-up cache not written ({exc})")
