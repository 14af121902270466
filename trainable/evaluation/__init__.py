"""Evaluation: the robustness matrix, its gradient-masking checks and the paper's loss curves."""
from trainable.evaluation.matrix import (COLUMN_KINDS, AttackPrep, EvalContext, MatrixResult, binomial_ci,
                                         known_columns, metric_key, predict, prepare_column, robustness_matrix,
                                         summarize)

__all__ = ["COLUMN_KINDS", "AttackPrep", "EvalContext", "MatrixResult", "binomial_ci", "known_columns", "metric_key",
           "predict", "prepare_column", "robustness_matrix", "summarize"]
