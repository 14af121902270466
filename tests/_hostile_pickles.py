"""Pickles that run code when loaded: what a hostile checkpoint or weights file carries."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch


class Payload:
    """Unpickling this creates `marker`: stands for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def hostile_checkpoint(src: str, dst: Path, marker: Path) -> Path:
    """A copy of checkpoint `src` at `dst` whose state.pt, once unpickled, creates `marker`."""
    shutil.copytree(src, dst)
    torch.save({"classifier": Payload(str(marker)), "iteration": 1}, dst / "state.pt")
    return dst
