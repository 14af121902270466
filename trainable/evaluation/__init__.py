"""Evaluation: the robustness matrix, its gradient-masking checks and the paper's loss curves.

:func:`robustness_matrix` (:mod:`trainable.evaluation.matrix`) runs the registered columns
(:mod:`trainable.attacks.registry`) on fixed test points, reporting its :class:`Progress`;
:mod:`trainable.evaluation.checks` holds the masking flags; :mod:`trainable.evaluation.loss_curves`
computes Figure 2's data.
"""
from trainable.evaluation.matrix import (MatrixResult, binomial_ci, known_columns, metric_key, predict, prepare_column,
                                         robustness_matrix, summarize)
from trainable.evaluation.progress import Progress, training_steps

__all__ = ["MatrixResult", "Progress", "binomial_ci", "known_columns", "metric_key", "predict", "prepare_column",
           "robustness_matrix", "summarize", "training_steps"]
