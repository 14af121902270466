"""Files of trained models, none of which unpickles anything (docs/architecture.md, checkpoints and export).

:mod:`~trainable.weights.checkpoint` — a trial's checkpoint directory (state.pt read with
``weights_only=True``, config.json, meta.json); :mod:`~trainable.weights.export_dir` — the
directory ``l2lda-tune export`` writes (safetensors weights with their SHA-256, config,
provenance) and the loaders of exports, checkpoints and plain state-dict files::

    from trainable.weights import load_export
    model = load_export("best/")   # nn.Module in eval mode, input x in [0, 1] NCHW
"""
from trainable.weights.checkpoint import CheckpointError, load_state, save_state
from trainable.weights.export_dir import (load_checkpoint_modules, load_export, load_export_generator,
                                          load_state_dict_file, save_export)

__all__ = ["CheckpointError", "load_checkpoint_modules", "load_export", "load_export_generator", "load_state",
           "load_state_dict_file", "save_export", "save_state"]
