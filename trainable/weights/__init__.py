"""Files of trained models: trial checkpoints and export directories (nothing here unpickles)."""
