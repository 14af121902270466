"""Reading a study: a YAML file or a shipped study's name, parsed safely, then validated
(:func:`orchestrator.spec.study.build_study`; docs/reliability.md, bad input)."""
from __future__ import annotations

import importlib.resources
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.schema import SpecError, one_line
from orchestrator.spec.study import Study, build_study
from trainable.text import quote, shorten


# --------------------------------------------------------------------------- loading
def shipped_studies() -> list[str]:
    """Names of the studies shipped in the `search_spaces` package."""
    root = importlib.resources.files("search_spaces")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        f"save the study as UTF-8") from None


def _read(path_or_name: str | os.PathLike) -> tuple[str, str]:
    p = Path(path_or_name)
    if p.is_file():
        return _decode(p.read_bytes(), str(p)), str(p)
    name = str(path_or_name)
    if re.fullmatch(r"[A-Za-z0-9_-]+(\.yaml)?", name):
        res = importlib.resources.files("search_spaces") / (name if name.endswith(".yaml") else name + ".yaml")
        if res.is_file():
            return res.read_text(encoding="utf-8"), f"search_spaces/{res.name}"
    if p.exists():
        raise SpecError(f"{p}: is not a file")
    raise FileNotFoundError(f"{p}: no such study file (shipped studies: {', '.join(shipped_studies())})")


# A study is a few hundred YAML nodes; aliases may share a block but not multiply it: past
# this many nodes with every alias expanded, the document is refused before anything reads
# it (a few hundred bytes of nested aliases expand to gigabytes; docs/reliability.md).
YAML_NODE_BUDGET = 20_000


def _yaml_error(source: str, node: Any, msg: str) -> SpecError:
    mark = getattr(node, "start_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return SpecError(one_line(f"{source}: {msg}{where}"))


def _check_yaml_tree(root: Any, source: str) -> None:
    """Refuse alias expansion beyond the budget (or a recursive alias), duplicate mapping keys
    and non-finite numbers, on the composed node graph, before it is constructed."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            active.discard(nid)
            kids = ([c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
            sizes[nid] = min(YAML_NODE_BUDGET + 1, 1 + sum(sizes[id(c)] for c in kids))
            if sizes[nid] > YAML_NODE_BUDGET:
                raise _yaml_error(source, node, f"more than {YAML_NODE_BUDGET:,} YAML nodes once aliases are "
                                                f"expanded (an alias bomb?)")
            continue
        if nid in sizes:
            continue
        if nid in active:
            raise _yaml_error(source, node, "a recursive YAML alias (a value that contains itself)")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:float":
                v = yaml.SafeLoader.construct_yaml_float(yaml.SafeLoader(""), node)
                if not math.isfinite(v):
                    raise _yaml_error(source, node, f"non-finite number {quote(node.value)}")
            sizes[nid] = 1
            continue
        active.add(nid)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, Any] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in seen:
                        raise _yaml_error(source, k, f"duplicate key {quote(k.value)} (first at line "
                                                     f"{seen[k.value].start_mark.line + 1})")
                    seen[k.value] = k
                stack += [(k, False), (v, False)]
        else:
            stack += [(c, False) for c in node.value]


def parse_yaml(text: str, source: str = "spec") -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_tree(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(one_line(f"{source}: YAML syntax error{where}: {shorten(problem, 200)}")) from None
    finally:
        loader.dispose()


def load_spec(path_or_name: str | os.PathLike) -> Study:
    """Load and validate a study from a YAML file or a shipped study name ("smoke")."""
    text, source = _read(path_or_name)
    raw = parse_yaml(text, source)
    if raw is None:
        raise SpecError(f"{source}: the file is empty")
    return build_study(raw, text=text, source=source)
