"""Training-time defenses: the registry of what a classifier can be trained with, and the defenses themselves.

``DEFENSES`` (:mod:`trainable.defenses.registry`) holds one :class:`DefenseEntry` per
defense, ours and plug-ins'; :func:`build_defense` builds the trial's. A defense subclasses
:class:`Defense` (:mod:`trainable.defenses.base`); ours are the baselines
(:mod:`trainable.defenses.baselines`), TRADES and MART, which own their loss
(:mod:`trainable.defenses.trades_mart`), and L2L-DA / L2L* (:mod:`trainable.defenses.l2lda`).
"""
from trainable.defenses.base import Defense
from trainable.defenses.baselines import FGSMAT, PGDAT, Plain
from trainable.defenses.registry import DEFENSES, DefenseEntry, build_defense
from trainable.defenses.trades_mart import MART, TRADES

__all__ = ["DEFENSES", "Defense", "DefenseEntry", "FGSMAT", "MART", "PGDAT", "Plain", "TRADES", "build_defense"]
