"""l2lda-tune's science: data, models, attacks, defenses and evaluation in pure PyTorch.

Only :mod:`trainable.trainable` imports Ray; nothing here imports the orchestrator,
MLflow or Optuna, so every part runs and is tested in a plain Python process. The
subpackages form layers that only import downwards (docs/architecture.md, "Layers").
"""
__version__ = "0.1.0"
