"""Attacks: the gradient attacks (FGSM, PGD, C&W-margin PGD) and the robustness matrix's other columns."""
from trainable.attacks.gradient import (ATTACKS, AttackFn, _loss, _project, _uniform_like, fgsm, margin_loss, pgd,
                                        preserve_mode)

__all__ = ["ATTACKS", "AttackFn", "fgsm", "margin_loss", "pgd", "preserve_mode"]
