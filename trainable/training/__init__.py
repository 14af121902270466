"""The training layer (docs/architecture.md, "Layers"): a trial's training half and its caches.

:class:`Trainer` (:mod:`trainable.training.trainer`) trains and checkpoints a trial;
:mod:`~trainable.training.resources` places it (threads, device, GPU share);
:mod:`~trainable.training.warmup` caches the clean warm-up a sweep's trials share;
:mod:`~trainable.training.surrogates` caches the transfer surrogates, keyed by their config;
:mod:`~trainable.training.health` watches a generator defense for collapse. Evaluation calls
this layer, never the reverse.
"""
from trainable.training.resources import cpu_share, resolve_device, set_threads
from trainable.training.trainer import Trainer, config_for_here
from trainable.training.warmup import WarmupCache

__all__ = ["Trainer", "WarmupCache", "config_for_here", "cpu_share", "resolve_device", "set_threads"]
