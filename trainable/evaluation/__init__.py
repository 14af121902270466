"""Evaluation: the robustness matrix, its gradient-masking checks and the paper's loss curves.

:func:`robustness_matrix` (:mod:`trainable.evaluation.matrix`) runs the registered columns
(:mod:`trainable.attacks.registry`) on fixed test points, reporting its :class:`Progress`;
:mod:`trainable.evaluation.checks` holds the masking flags; :mod:`trainable.evaluation.loss_curves`
computes Figure 2's data.
"""
from trainable.attacks.registry import column_steps
from trainable.evaluation.matrix import (AttackPrep, EvalContext, MatrixResult, Progress, binomial_ci, known_columns,
                                         metric_key, predict, prepare_column, robustness_matrix, summarize,
                                         training_steps)

__all__ = ["AttackPrep", "EvalContext", "MatrixResult", "Progress", "binomial_ci", "column_steps", "known_columns",
           "metric_key", "predict", "prepare_column", "robustness_matrix", "summarize", "training_steps"]


def __getattr__(name: str):
    if name in ("COLUMN_KINDS", "COMPOSITE_COLUMNS"):  # views derived from the column registry
        from trainable.evaluation import matrix

        return getattr(matrix, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
