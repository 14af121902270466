"""The example plug-in under tests/plugins/, made importable for the whole test session without pip.

An installed distribution is a package on ``sys.path`` plus a ``*.dist-info`` folder whose
``entry_points.txt`` lists its entry points (what ``importlib.metadata`` reads). We write
that folder from the plug-in's own ``pyproject.toml`` into a temporary directory and put it
and the plug-in's source on ``sys.path`` and ``PYTHONPATH``, before any registry is read and
before Ray starts, so the test process, Ray's workers and CLI subprocesses all load it —
offline, and without changing the environment the tests run in.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "plugins" / "l2lda_tune_toy"


def use_plugin(source: Path = PLUGIN) -> Path:
    """Make `source` (a folder with pyproject.toml and its module) an installed plug-in; returns the dist-info."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    site = Path(tempfile.mkdtemp(prefix="l2lda-plugin-"))
    atexit.register(shutil.rmtree, site, True)  # gone with the test session
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for path in (str(source), str(site)):
        if path not in sys.path:
            sys.path.insert(0, path)
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if path not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])
    return info
