"""Attacks: the robustness matrix's columns, ours and plug-ins', and the attacks they run.

``COLUMNS`` (:mod:`trainable.attacks.registry`) holds one :class:`ColumnEntry` per column
with its kind, tables, tests, cost and budgets. The attacks: gradient ones (FGSM, PGD,
C&W-margin PGD; :mod:`trainable.attacks.gradient`), parameter-free and gradient-free ones
(APGD-CE, APGD-T, FAB-T, Square, AutoAttack; :mod:`trainable.attacks.autoattack`),
generator columns (L2L-DA, AdvGAN, GAP; :mod:`trainable.attacks.generative`) and transfer
from surrogates (:mod:`trainable.attacks.transfer`). Inputs in [0, 1]; every attack returns
x_adv in the ε-ball and [0, 1], takes gradients w.r.t. the input only and restores modes.
"""
from trainable.attacks.gradient import (AttackFn, PGDColumn, fgsm, fgsm_column, frozen_params, margin_loss, pgd,
                                        preserve_mode)
from trainable.attacks.registry import (COLUMNS, KINDS, ColumnEntry, column_of, column_steps, has_role,
                                        profile_settings, table_columns, with_role)

__all__ = ["COLUMNS", "KINDS", "AttackFn", "ColumnEntry", "PGDColumn", "column_of", "column_steps", "fgsm",
           "fgsm_column", "frozen_params", "has_role", "margin_loss", "pgd", "preserve_mode", "profile_settings", "table_columns",
           "with_role"]


def __getattr__(name: str):
    if name == "ATTACKS":  # the view of earlier versions: name → (attack_fn, budget) of the plain-attack columns
        return {e.name: (e.attack, dict(e.budget)) for e in COLUMNS.values() if e.attack is not None}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
