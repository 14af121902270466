"""Training-time defenses: what the classifier is trained on at each iteration."""
from trainable.defenses.baselines import DEFENSES, FGSMAT, PGDAT, Defense, Plain, build_defense

__all__ = ["DEFENSES", "Defense", "FGSMAT", "PGDAT", "Plain", "build_defense"]
