"""Attacks: the robustness matrix's columns, ours and plug-ins', and the attacks they run.

``COLUMNS`` (:mod:`trainable.attacks.registry`) holds one :class:`ColumnEntry` per column
with its kind, tables, tests, cost and budgets. The attacks: gradient ones (FGSM, PGD,
C&W-margin PGD; :mod:`trainable.attacks.gradient`), parameter-free and gradient-free ones
(:mod:`~trainable.attacks.apgd`, :mod:`~trainable.attacks.fab`, :mod:`~trainable.attacks.square`
and the cascade :mod:`~trainable.attacks.autoattack`) and generator columns (L2L-DA, AdvGAN,
GAP; :mod:`trainable.attacks.generative`), all on the leaf :mod:`trainable.attacks.primitives`;
the transfer column, which needs trained surrogates, is :mod:`trainable.evaluation.transfer`.
Inputs in [0, 1]; every attack returns x_adv in the ε-ball and [0, 1], takes gradients
w.r.t. the input only and restores modes.
"""
from trainable.attacks.gradient import PGDColumn, fgsm, fgsm_column, margin_loss, pgd
from trainable.attacks.primitives import AttackFn, AttackPrep, EvalContext, frozen_params, preserve_mode
from trainable.attacks.registry import (COLUMNS, KINDS, ColumnEntry, column_of, column_steps, has_role,
                                        profile_settings, table_columns, with_role)

__all__ = ["COLUMNS", "KINDS", "AttackFn", "AttackPrep", "ColumnEntry", "EvalContext", "PGDColumn", "column_of",
           "column_steps", "fgsm", "fgsm_column", "frozen_params", "has_role", "margin_loss", "pgd", "preserve_mode",
           "profile_settings", "table_columns", "with_role"]
