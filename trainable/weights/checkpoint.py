"""Checkpoint files that never unpickle arbitrary objects (docs/architecture.md, checkpoints).

A checkpoint directory holds ``state.pt`` (tensors, numbers and nested dicts only,
loaded with ``weights_only=True``), ``config.json`` (the TrialConfig) and
``meta.json`` (format version, iteration, what it holds). A file carrying a pickle
payload, a truncated file or a checkpoint of another architecture or dataset is a
one-line :class:`CheckpointError`.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainable.text import shorten
from trainable.errors import CheckpointError

FORMAT = 1
STATE_FILE, CONFIG_FILE, META_FILE = "state.pt", "config.json", "meta.json"


def private_tmp(path: Path) -> Path:
    """A temporary name beside `path` no other process uses, on this node or another sharing
    the folder (a pid alone repeats across nodes and containers)."""
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_state(directory: str | os.PathLike, state: dict, config: dict, meta: dict) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, d / STATE_FILE)
    atomic_write_text(d / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
    atomic_write_text(d / META_FILE, json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=True))


def safe_torch_load(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True onto the CPU, every failure mapped to a one-line CheckpointError.

    Always the CPU, whatever device wrote the file or will use it: modules and optimisers move
    what they load to their own device, and RNG states must stay on the CPU
    (docs/reliability.md, devices)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            # torch warns (two lines) about a pickle protocol it did not write before it refuses the
            # file; the refusal below is the one line (docs/reliability.md).
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
            warnings.filterwarnings("ignore", message=r".*pickle protocol.*", category=UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "disallowed object"
        raise CheckpointError(f"{p}: refused to load: the file carries pickled objects, not plain weights ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p}: corrupt or truncated checkpoint ({first})") from None


def read_json(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: missing (not a checkpoint or export directory?)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{p}: expected a JSON object")
    return data


def load_state(directory: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(state, config, meta) of a checkpoint directory; every tensor on the CPU."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a checkpoint directory")
    config = read_json(d / CONFIG_FILE)
    meta = read_json(d / META_FILE)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{d}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT}")
    state = safe_torch_load(d / STATE_FILE)
    if not isinstance(state, dict):
        raise CheckpointError(f"{d / STATE_FILE}: expected a state dictionary")
    return state, config, meta


def load_module_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict with a one-line error on a mismatch (wrong architecture or dataset).
    Integer (or boolean) tensors where the model holds floating-point weights are refused,
    not cast: no training run writes them, so the file is not what it claims to be."""
    own = module.state_dict()
    if isinstance(state, dict):
        for k, v in state.items():
            if (isinstance(v, torch.Tensor) and k in own and own[k].is_floating_point()
                    and not v.is_floating_point()):
                raise CheckpointError(f"{what}: {k} holds {str(v.dtype).replace('torch.', '')} values where the "
                                      f"model has {str(own[k].dtype).replace('torch.', '')} weights; refused")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(s.strip() for s in first[:2])
        raise CheckpointError(f"{what}: weights do not fit the model ({shorten(detail, 300)})") from None
