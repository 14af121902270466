"""One trial in a plain Python process: the experiment loop, its resources and the warm-up it shares.

:class:`Experiment` (:mod:`trainable.experiment.loop`) trains, validates, evaluates and
checkpoints a trial; :func:`run` trains one to the end. Only :mod:`trainable.trainable`
wraps it for Ray Tune.
"""
from trainable.experiment.loop import DivergenceError, Experiment, run
from trainable.experiment.resources import cpu_share, resolve_device, set_threads
from trainable.experiment.warmup import WarmupCache, _warmup_key

__all__ = ["DivergenceError", "Experiment", "WarmupCache", "cpu_share", "resolve_device", "run", "set_threads"]
