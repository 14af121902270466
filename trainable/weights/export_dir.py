"""Exported models: weights as safetensors plus JSON, loaded back into ready modules (docs/architecture.md, checkpoints).

An export directory holds ``classifier.safetensors`` (and ``generator.safetensors`` for
L2L-DA / L2L* trials), ``config.json`` (the trial's TrialConfig) and ``export.json``
(format, files with their SHA-256, provenance). safetensors files hold tensors only, so
loading an export never unpickles anything. This module does not import MLflow: a
researcher who received an export needs only the package and torch::

    from trainable.weights.export_dir import load_export
    model = load_export("best/")          # nn.Module in eval mode, input x in [0, 1] NCHW
    logits = model(x)

Also here: reading classifiers out of our checkpoint directories and out of plain
LeNet-5 / ResNet-20 state-dict files (``.pt`` loaded with ``weights_only=True``, or
``.safetensors``), which ``l2lda-tune eval`` accepts.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from trainable import __version__
from trainable.weights.checkpoint import (CONFIG_FILE, META_FILE, STATE_FILE, CheckpointError, atomic_write_text,
                                  load_module_state, load_state, read_json, safe_torch_load)
from trainable.config import ConfigError, TrialConfig
from trainable.data.registry import DATASETS
from trainable.defenses.registry import DEFENSES
from trainable.models.classifiers import build_classifier
from trainable.text import quote

EXPORT_FORMAT = 1
CLASSIFIER_FILE, GENERATOR_FILE, EXPORT_META = "classifier.safetensors", "generator.safetensors", "export.json"
# An export is rebuilt without loading data: input shape and classes come from the dataset's registry entry.


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _config(data: dict, where: str) -> TrialConfig:
    try:
        return TrialConfig.from_stored(data).resolved()
    except ConfigError as exc:
        raise CheckpointError(f"{where}: invalid config ({exc})") from None


def _save_tensors(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses shared/non-contiguous storage: store plain CPU copies.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    tmp = path.with_suffix(".tmp")
    save_file(flat, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU (the module they load into moves them, docs/reliability.md, devices)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({first})") from None


# Config keys that hold paths: a trial resolves them against its start directory, an export
# carries them relative so it means the same on the machine it is copied to.
PATH_KEYS = ("data_root", "cache_dir")


def normal_mode(path: Path) -> None:
    """Give `path` the mode a plain file gets here (0666 less the umask): safetensors writes 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def portable_paths(config: dict, start: str | os.PathLike | None = None) -> tuple[dict, dict[str, str]]:
    """(config with PATH_KEYS relative, the absolute values replaced): a path under `start` (the
    working directory) becomes relative to it, any other absolute path the TrialConfig default."""
    start = Path(start or os.getcwd()).resolve()
    out, replaced = dict(config), {}
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and os.path.isabs(value):
            p = Path(value).resolve()
            out[key] = str(p.relative_to(start)) if p.is_relative_to(start) else getattr(TrialConfig, key)
            replaced[key] = value
    return out, replaced


def save_export(directory: str | os.PathLike, classifier_state: dict[str, torch.Tensor], config: dict,
                generator_state: dict[str, torch.Tensor] | None = None, provenance: dict[str, Any] | None = None) -> Path:
    """Write an export directory: safetensors weights, config.json (paths relative, see
    portable_paths), export.json (with hashes); every file with the normal file mode."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if "input_norm" not in config:
        # a config that does not say: the weights do (normalisation buffers, or raw pixels)
        config = {**config, "input_norm": "dataset" if "normalize.mean" in classifier_state else "auto"}
    config, replaced = portable_paths(config)
    cfg = _config(config, str(d / CONFIG_FILE))
    meta = {"format": "l2lda-tune-export", "version": __version__, "dataset": cfg.dataset, "model": str(cfg.model)}
    _save_tensors(classifier_state, d / CLASSIFIER_FILE, {**meta, "module": "classifier"})
    files = {CLASSIFIER_FILE: _sha256(d / CLASSIFIER_FILE)}
    if generator_state is not None:
        _save_tensors(generator_state, d / GENERATOR_FILE, {**meta, "module": "generator"})
        files[GENERATOR_FILE] = _sha256(d / GENERATOR_FILE)
    elif (d / GENERATOR_FILE).exists():
        (d / GENERATOR_FILE).unlink()  # a stale generator from an earlier export is not this model's
    atomic_write_text(d / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    info = {"format": EXPORT_FORMAT, "tool_version": __version__, "dataset": cfg.dataset, "model": cfg.model,
            "defense": cfg.defense, "files": files, **(provenance or {})}
    if replaced:
        info["trial_paths"] = replaced  # where the trial had them (provenance only)
    atomic_write_text(d / EXPORT_META, json.dumps(info, indent=2, sort_keys=True, default=str))
    for name in (CLASSIFIER_FILE, GENERATOR_FILE, CONFIG_FILE, EXPORT_META):
        if (d / name).is_file():
            normal_mode(d / name)
    return d


# What an export's config.json must name to rebuild the model (save_export writes every field).
REQUIRED_CONFIG_KEYS = ("dataset", "model", "defense")


def inside(d: Path, name: str) -> Path:
    """`d/name`, refused when it is a symlink (or under one) that leaves `d`: an export is read
    and written only inside its own folder (docs/reliability.md, "Exports")."""
    p = d / name
    if p.is_symlink() or (p.exists() and p.resolve().parent != d.resolve()):
        target = p.resolve()
        if not target.is_relative_to(d.resolve()):
            raise CheckpointError(f"{p}: a symlink out of the export folder (to {target}); refused")
    return p


def read_export_config(directory: str | os.PathLike) -> TrialConfig:
    """The resolved TrialConfig of an export directory (config.json must name the dataset,
    model and defense: an empty or partial file would silently rebuild some default model)."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not an export directory")
    path = inside(d, CONFIG_FILE)
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_CONFIG_KEYS if data.get(k) in (None, "")]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)} (an export's config names the model it holds)")
    return _config(data, str(path))


def _verify(d: Path, name: str) -> Path:
    """The weights file `name` of export `d`, checked against the SHA-256 recorded in
    export.json; a file without a recorded hash is refused (it could be anything)."""
    path = inside(d, name)
    meta_path = inside(d, EXPORT_META)
    if not meta_path.is_file():
        raise CheckpointError(f"{d}: no {EXPORT_META} with the weights' SHA-256, so {name} cannot be checked; "
                              f"refused (a plain state dict loads with `l2lda-tune eval --checkpoint FILE`)")
    meta = read_json(meta_path)
    files = meta.get("files") if isinstance(meta, dict) else None
    expected = files.get(name) if isinstance(files, dict) else None
    if not isinstance(expected, str) or not expected:
        raise CheckpointError(f"{meta_path}: records no SHA-256 for {name}; refused")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    if _sha256(path) != expected:
        raise CheckpointError(f"{path}: SHA-256 differs from {EXPORT_META} (file changed or truncated)")
    return path


def build_for(cfg: TrialConfig, device: str | torch.device = "cpu") -> nn.Module:
    shape = DATASETS[cfg.dataset].shape
    return build_classifier(cfg.model_name, cfg.dataset, shape[0], cfg.input_norm).to(device)


def build_generator_for(cfg: TrialConfig, device: str | torch.device = "cpu") -> nn.Module:
    from trainable.defenses.registry import build_generator

    data = DATASETS[cfg.dataset]
    return build_generator(cfg, data.shape, data.num_classes).to(device)


def load_export(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The exported classifier, rebuilt from config.json and classifier.safetensors, in eval mode.

    Input: x in [0, 1], shape (N, C, H, W) of the export's dataset (normalisation is inside).
    Raises CheckpointError (one line) on a missing, truncated or mismatched file."""
    d = Path(directory)
    cfg = read_export_config(d)
    _verify(d, CLASSIFIER_FILE)
    model = build_for(cfg, device)
    load_module_state(model, _load_tensors(d / CLASSIFIER_FILE), f"{d / CLASSIFIER_FILE}")
    return model.eval()


def load_export_generator(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The exported L2L-DA / L2L* generator in eval mode (CheckpointError if the export has none)."""
    d = Path(directory)
    cfg = read_export_config(d)
    if not (d / GENERATOR_FILE).is_file():
        raise CheckpointError(f"{d}: export has no {GENERATOR_FILE} (defense {quote(cfg.defense)} trains no generator)")
    _verify(d, GENERATOR_FILE)
    gen = build_generator_for(cfg, device)
    load_module_state(gen, _load_tensors(d / GENERATOR_FILE), f"{d / GENERATOR_FILE}")
    return gen.eval()


# ---------------------------------------------------- checkpoints and plain files
def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / STATE_FILE).exists() and (p / META_FILE).exists()


def is_export_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CLASSIFIER_FILE).exists()


def load_checkpoint_modules(directory: str | os.PathLike, device: str | torch.device = "cpu"
                            ) -> tuple[TrialConfig, nn.Module, nn.Module | None, dict]:
    """(config, classifier, generator or None, meta) from one of our checkpoint directories,
    without loading any data; state.pt is read with weights_only=True."""
    d = Path(directory)
    state, config, meta = load_state(d)
    cfg = _config(config, str(d / CONFIG_FILE))
    if "classifier" not in state:
        raise CheckpointError(f"{d / STATE_FILE}: no classifier weights in the checkpoint")
    clf = build_for(cfg, device)
    load_module_state(clf, state["classifier"], f"{d} classifier")
    gen = None
    dstate = state.get("defense") or {}
    if DEFENSES[cfg.defense].generator is not None and isinstance(dstate, dict) and "generator" in dstate:
        gen = build_generator_for(cfg, device)
        load_module_state(gen, dstate["generator"], f"{d} generator")
        gen.eval()
    return cfg, clf.eval(), gen, meta


def load_state_dict_file(path: str | os.PathLike, dataset: str = "mnist5k", model: str | None = None,
                         device: str | torch.device = "cpu") -> tuple[TrialConfig, nn.Module]:
    """A plain LeNet-5 / ResNet-20 state dict (.pt/.pth with weights_only=True, or .safetensors).

    Accepts a bare state dict, {'state_dict': …}, {'classifier': …} (our state.pt) and keys
    prefixed 'module.' (DataParallel). The dataset names the input shape and normalisation."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        cfg = TrialConfig.from_dict({"dataset": dataset, "model": model, "defense": "plain"}).resolved()
    except ConfigError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    if p.suffix == ".safetensors":
        state: Any = _load_tensors(p)
    else:
        state = safe_torch_load(p)
    if isinstance(state, dict):
        for key in ("classifier", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: not a state dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if "normalize.mean" in state and cfg.input_norm == "none":
        # a classifier that normalises inside (ours before docs/method.md's "Classifiers" change):
        # build it with a normalisation, whose statistics the file's buffers then set
        cfg = cfg.replace(input_norm="dataset").resolved()
    clf = build_for(cfg, device)
    # Plain state dicts from elsewhere may lack our normalisation buffers: keep the source's.
    own = clf.state_dict()
    for k in ("normalize.mean", "normalize.std"):
        if k not in state and k in own:
            state[k] = own[k]
    load_module_state(clf, state, f"{p} ({cfg.model} on {cfg.dataset})")
    return cfg, clf.eval()
