"""What a Tune event becomes in MLflow: keys, values, names and limits (docs/architecture.md, tracking).

Pure functions, no client and no thread: the callback and the writer both use them, and
tests call them directly.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

from trainable.config import ConfigError, TrialConfig

# MLflow limits (mlflow.utils.validation): values longer than these are rejected.
MAX_PARAM_VAL, MAX_TAG_VAL, MAX_KEY = 6000, 8000, 250
MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_ENTITIES_PER_BATCH = 1000, 100, 1000
# Ray's own bookkeeping keys in every result: not curves worth storing.
RAY_KEYS = frozenset({
    "trial_id", "experiment_id", "date", "timestamp", "pid", "hostname", "node_ip", "done", "config",
    "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore",
    "training_iteration", "checkpoint_dir_name", "should_checkpoint", "experiment_tag", "episodes_total",
    "timesteps_total", "timesteps_since_restore", "warmup_time", "matrix",
})
KEEP_PLAIN = frozenset({"iteration"})  # our own un-namespaced metric: the trial's iteration count
# MLflow 3's UI opens an experiment by this tag: training runs, not GenAI traces (docs/architecture.md, tracking).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD of the repository holding this package (else of the working directory), '-dirty'
    appended when tracked files differ; None outside a git checkout."""
    here = Path(__file__).resolve().parent.parent.parent
    for where in (here, Path.cwd()) if path is None else (Path(path),):
        try:
            sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, timeout=5)
            if sha.returncode != 0:
                continue
            dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolved_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's whole resolved TrialConfig (defaults filled: ε, λ, augmentation, clip, …) over
    its own keys, plus the values derived from it that a reader filters on: the PGD step
    ``eps_step`` (ε × ε_step fraction) and ``total_iterations`` (warm-up + adversarial).

    Every run then records the value that actually ran, not "auto" or an absent key.
    """
    try:
        cfg = TrialConfig.from_dict(config).resolved()
    except (ConfigError, TypeError, ValueError):
        return dict(config)
    out = {**config, **cfg.to_dict()}
    for name in ("eps_step", "total_iterations"):
        try:
            out[name] = getattr(cfg, name)
        except Exception:  # a derived value this config does not define
            pass
    return out


def param_value(v: Any) -> str:
    """A config value as an MLflow param string (lists comma-joined, as TrialConfig.flat does)."""
    if isinstance(v, (list, tuple)):
        s = ",".join(map(str, v))
    else:
        s = str(v)
    return s if len(s) <= MAX_PARAM_VAL else s[: MAX_PARAM_VAL - 3] + "..."


def clean_key(k: str) -> str:
    # MLflow keys: alphanumerics, underscores, dashes, periods, spaces, slashes, colons.
    k = "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(k))
    return k[:MAX_KEY]


def tag(v: Any) -> str:
    s = str(v)
    return s if len(s) <= MAX_TAG_VAL else s[: MAX_TAG_VAL - 3] + "..."


def metric_items(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one Tune result worth a curve: namespaced keys (train/…, val/…, time/…,
    matrix/…, transfer/…, check/…) as they come, plus our `iteration`; Ray's bookkeeping skipped."""
    out: dict[str, float] = {}
    for k, v in result.items():
        if k in RAY_KEYS or ("/" not in k and k not in KEEP_PLAIN):
            continue
        if isinstance(v, bool):
            out[clean_key(k)] = 1.0 if v else 0.0
        elif isinstance(v, (int, float)):
            out[clean_key(k)] = float(v)
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
            try:
                out[clean_key(k)] = float(v.item())
            except (TypeError, ValueError):
                pass
    return out


def failure_reason(trial: Any) -> str:
    """The first line that names the error: the last un-indented line of the trial's error
    trace (the exception type and message), else the error file's first line."""
    text = ""
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.isfile(path):
            text = Path(path).read_text(errors="replace")
    except OSError:
        text = ""
    if not text:
        msg = getattr(trial, "error_msg", None)
        text = str(msg) if msg else ""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "unknown error (no error file)"
    exc_lines = [ln for ln in lines if not ln[0].isspace() and ":" in ln and not ln.startswith(("Failure #", "Traceback"))
                 and not ln.startswith("ray::")]
    line = (exc_lines[-1] if exc_lines else lines[0]).strip()
    # "pkg.module.ClassName: message" → "ClassName: message": where a class lives is not the failure.
    m = _EXC_LINE.match(line)
    if m:
        line = m.group(1).rpartition(".")[2] + line[m.end(1):]
    return tag(line[:1000])


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?=: |$)")


def failure_type(reason: str) -> str:
    """The ``failure_type`` of the error a :func:`failure_reason` names (trainable.errors: ``diverged``,
    ``checkpoint``, ``dataset_missing``, …); ``error`` for any other exception."""
    from trainable.errors import failure_type as known

    return known(reason.partition(":")[0].strip()) or "error"


def objectives_from_spec(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """[(metric, mode), …] from a spec's ``search`` section (``metric``/``metrics`` and
    ``mode``/``modes``, each a string or a list); [] when none is given."""
    search = spec.get("search") if isinstance(spec, Mapping) else None
    if not isinstance(search, Mapping):
        return []
    metrics = search.get("metrics", search.get("metric"))
    modes = search.get("modes", search.get("mode"))
    if metrics is None:
        return []
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if modes is None:
        modes = ["max"] * len(metrics)
    modes = [modes] * len(metrics) if isinstance(modes, str) else list(modes)
    if len(modes) < len(metrics):
        modes += [modes[-1] if modes else "max"] * (len(metrics) - len(modes))
    return [(str(m), str(o)) for m, o in zip(metrics, modes)]


# ---------------------------------------------------------------------------- run names
# Short labels of the parameters studies sweep (docs/architecture.md, tracking: run names);
# any other parameter is labelled by its own name.
SHORT = {"recursive": "R", "diversity": "D", "seed": "s", "use_delta": "dl", "use_label": "lb",
         "grad_norm": "gn", "eps_step_frac": "st", "gen_width": "w", "batch_size": "b", "iterations": "it",
         "augment": "aug", "lam": "lam", "eps": "eps", "lr": "lr", "T": "T"}


def swept_params(spec: Mapping[str, Any]) -> list[str]:
    """The parameters a study varies (its space without `fixed` entries), in spec order."""
    space = spec.get("space") if isinstance(spec, Mapping) else None
    if not isinstance(space, Mapping):
        return []
    out = []
    for name, p in space.items():
        kind = p.get("kind") if isinstance(p, Mapping) else None
        if kind is None and isinstance(p, Mapping):  # a raw YAML space: {grid: […]}, {uniform: […]}, …
            kind = "fixed" if "fixed" in p else next(iter(p), None)
        if kind is None and not isinstance(p, Mapping):
            kind = "fixed"
        if kind != "fixed":
            out.append(str(name))
    return out


def _short_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return "+".join(_short_value(x) for x in v)
    return str(v)


def run_name(config: Mapping[str, Any], swept: list[str]) -> str:
    """What ran, in a few characters: the defense, then each swept parameter as label + value
    (``l2lda-R1-D1-s0``: recursive on, diversity on, seed 0)."""
    parts = [str(config.get("defense", "l2lda"))]
    for name in swept:
        if name == "defense" or name not in config:
            continue
        value = _short_value(config[name])
        label = SHORT.get(name, name)
        parts.append(value if name in ("dataset", "model") else f"{label}{value}")
    name = "-".join(parts)
    name = re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)
    return name[:200]


# ------------------------------------------------------------------------------ dataset
def dataset_input(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trial's data as an MLflow dataset: name, split sizes, the subsets validation and the
    test matrix use, and a digest of that definition. The loaders are deterministic and do not
    depend on the trial's seed (docs/architecture.md, data), so one digest names one set of
    examples. The split sizes are the dataset's registry entry's (plug-ins' included; a ``train``
    size the entry does not state is left out); None for a dataset not installed here."""
    from trainable.data.registry import DATASETS

    name = str(config.get("dataset", "mnist5k"))
    if name not in DATASETS:
        return None
    entry = DATASETS[name]
    val, test = int(entry.val_size), int(entry.test_size)
    val_subset = int(config.get("val_subset") or 0)
    test_subset = int(config.get("test_subset") or 0)
    profile = {"val": val, "test": test,
               "val_used": min(val_subset, val) if val_subset else val,
               "test_used": min(test_subset, test) if test_subset else test}
    if entry.train_size is not None:
        profile["train"] = int(entry.train_size)
    digest = hashlib.sha256(json.dumps({"name": name, **profile}, sort_keys=True).encode()).hexdigest()[:12]
    return {"name": name, "digest": digest, "profile": profile}
