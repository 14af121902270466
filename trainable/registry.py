"""Registries: one per kind (matrix columns, defenses, datasets, classifiers), ours and plug-ins' (docs/extending.md).

An entry is a small frozen dataclass that carries everything the tool needs to know about
it — how to build or run it and its facts (a column's kind and tables, a defense's cost
model, a dataset's shape and defaults) — so no other list names it again. Every reader
(config validation, the runner, the masking checks, the report, ``--dry-run``, export)
asks the registry.

A user's package adds entries without editing ours by declaring entry points in the
group of a kind (``l2lda_tune.attacks``, ``l2lda_tune.defenses``, ``l2lda_tune.datasets``,
``l2lda_tune.models``); each entry point names an entry object or a list of them. They
are loaded the first time a registry is read in a process, so every Ray worker that
reads a trial config loads them too.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from trainable.text import quote

E = TypeVar("E")


class RegistryError(ValueError):
    """A registry entry is unknown, malformed or named twice; one line."""


def resolve(target: Any) -> Any:
    """A callable given directly, or as ``"package.module:attribute"`` (imported on first use)."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[E]):
    """Named entries of one kind, in registration order: ours first, then plug-ins'."""

    def __init__(self, kind: str, group: str, entry_type: type) -> None:
        self.kind, self.group, self.entry_type = kind, group, entry_type
        self._entries: dict[str, E] = {}
        self._builtins: list[Callable[[], None]] = []
        self._loaded = False
        self._loading = False

    # ------------------------------------------------------------------ filling
    def add(self, entry: E, *, source: str = "l2lda-tune") -> E:
        """Register `entry` (an instance of the registry's entry type); a name is taken once."""
        if not isinstance(entry, self.entry_type):
            raise RegistryError(f"{self.group}: {source} gave {type(entry).__name__}, expected a "
                                f"{self.entry_type.__module__}.{self.entry_type.__qualname__}")
        name = getattr(entry, "name")
        if not isinstance(name, str) or not name or "/" in name:
            raise RegistryError(f"{self.group}: {source} gave the {self.kind} name {quote(name)} "
                                f"(a non-empty name without '/')")
        if name in self._entries:
            raise RegistryError(f"{self.group}: {self.kind} {quote(name)} from {source} is already registered")
        self._entries[name] = entry
        return entry

    def builtins(self, fill: Callable[[], None]) -> None:
        """`fill` registers our own entries; it runs on the first read (keeps imports light)."""
        self._builtins.append(fill)

    def load(self) -> None:
        """Our entries, then every installed plug-in's (entry-point group ``self.group``); once per process."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for fill in self._builtins:
                fill()
            for ep in sorted(importlib.metadata.entry_points(group=self.group), key=lambda e: e.name):
                source = f"plug-in entry point {ep.name!r} ({ep.value})"
                try:
                    obj = ep.load()
                except Exception as exc:  # a broken plug-in names itself, it does not pass silently
                    raise RegistryError(f"{self.group}: {source} failed to load "
                                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
                for entry in obj if isinstance(obj, (list, tuple)) else [obj]:
                    self.add(entry, source=source)
            self._loaded = True
        finally:
            self._loading = False

    # ------------------------------------------------------------------ reading
    def __getitem__(self, name: str) -> E:
        self.load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(self.unknown(name)) from None

    def get(self, name: str, default: Any = None) -> E | Any:
        self.load()
        return self._entries.get(name, default) if isinstance(name, str) else default

    def __contains__(self, name: object) -> bool:
        self.load()
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self)

    def values(self) -> list[E]:
        self.load()
        return list(self._entries.values())

    def items(self) -> list[tuple[str, E]]:
        self.load()
        return list(self._entries.items())

    def unknown(self, name: Any) -> str:
        """The one-line message for a name that is not registered."""
        return f"unknown {self.kind} {quote(name)} (choose from {', '.join(self)})"
