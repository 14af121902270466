"""Import paths of modules that moved into subpackages (docs/architecture.md, "Layout and imports").

``trainable.autoattack``, ``trainable.runner``, ``trainable.export_io`` and the other flat
modules of earlier versions now live in subpackages by kind. Code, notebooks and model
cards written against the old paths keep working: importing an old path gives the module
it names now (the same module object, so attributes and monkeypatches are shared).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED: dict[str, str] = {
    "trainable.autoattack": "trainable.attacks.autoattack",
    "trainable.genattacks": "trainable.attacks.generative",
    "trainable.transfer": "trainable.attacks.transfer",
    "trainable.l2lda": "trainable.defenses.l2lda",
    "trainable.generator": "trainable.generators",
    "trainable.checks": "trainable.evaluation.checks",
    "trainable.figure2": "trainable.evaluation.loss_curves",
    "trainable.runner": "trainable.experiment",
    "trainable.export_io": "trainable.weights.export_dir",
    "trainable.checkpoint": "trainable.weights.checkpoint",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module it moved to."""

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set the module's __spec__ to the alias's: give it its own back.
        alias = module.__spec__.name if module.__spec__ is not None else ""
        if alias in self._own_specs:
            module.__spec__ = self._own_specs.pop(alias)


def install() -> None:
    """Make the old paths importable (called once, from ``trainable/__init__.py``)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # ahead of an editable install's finder, which may know an old file
