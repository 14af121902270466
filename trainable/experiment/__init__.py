"""One trial in a plain Python process: the experiment loop, checkpoints and the warm-up it shares."""
from trainable.experiment.loop import (DivergenceError, Experiment, _warmup_key, cpu_share, resolve_device, run,
                                       set_threads)

__all__ = ["DivergenceError", "Experiment", "cpu_share", "resolve_device", "run", "set_threads"]
