""":class:`Experiment` (:mod:`trainable.experiment.loop`) trains (:mod:`trainable.training`), validates,
evaluates (:mod:`trainable.evaluation`) and checkpoints a trial; :func:`run` trains one to the end.
Only :mod:`trainable.trainable` wraps it for Ray Tune.
"""
from trainable.experiment.loop import Experiment, run

__all__ = ["Experiment", "run"]
