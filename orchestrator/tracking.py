"""MLflow tracking of a sweep: a Ray Tune callback on the driver is the only writer (docs/architecture.md, tracking).

Experiment = study name; one parent run per sweep (the spec as ``spec.yaml``, versions,
git commit, storage path, the selection objective); one nested child run per trial
(the trial's flat config as params, every float of every report as a metric with
step = Tune's ``training_iteration``, status and failure reason as tags, the checkpoint
directory as a tag) and the artifacts rendered here from the data a trial returns:
``robustness_matrix.json``/``.parquet`` (per-example correctness vectors), a heatmap
and loss curves. At the end the parent gets ``sweep_table.parquet`` and ``pareto.png``.

Workers never touch the store, so concurrent trials never contend for sqlite. Writes
go through :class:`mlflow.MlflowClient` with explicit run ids (trials interleave, the
fluent active-run API would mix them up), in batches (``log_batch``). A tracking error
never stops a sweep: records stay queued in memory and are retried on later calls and
at the end; whatever is still unwritten then is reported in one line.

Resume: the parent run of a sweep and each trial's child run are found again (by the
callback state Ray checkpoints with the experiment, else by the ``sweep_name`` and
``trial_id`` tags), so a trial never gets two runs, and steps already logged are
skipped, so a restored trial continues one metric history.
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ray.tune import Callback

from orchestrator import artifacts as art
from orchestrator.store import (DEFAULT_TRACKING_URI, ROLE_SWEEP, ROLE_TRIAL, TrackingUnavailable,  # noqa: F401
                                check_tracking_uri, ensure_experiment, make_client, resolve_tracking_uri,
                                search_all, sqlite_path)
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


def _guarded(hook: Callable) -> Callable:
    """A tracking hook never raises into Tune: a bug or a bad value costs a record, not the sweep."""
    import functools

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self._say(f"mlflow: {hook.__name__} failed ({type(exc).__name__}: {first}); the sweep goes on")
            return None

    return wrapper


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """HEAD of the repository holding this package (else of the working directory), '-dirty'
    appended when tracked files differ; None outside a git checkout."""
    for where in (Path(__file__).resolve().parent.parent, Path.cwd()) if path is None else (Path(path),):
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
    """The trial's whole resolved TrialConfig (defaults filled: ε, λ, augmentation, clip, …) over its own keys.

    Every run then records the value that actually ran, not "auto" or an absent key.
    """
    try:
        resolved = TrialConfig.from_dict(config).resolved().to_dict()
    except (ConfigError, TypeError, ValueError):
        return dict(config)
    return {**config, **resolved}


def param_value(v: Any) -> str:
    """A config value as an MLflow param string (lists comma-joined, as TrialConfig.flat does)."""
    if isinstance(v, (list, tuple)):
        s = ",".join(map(str, v))
    else:
        s = str(v)
    return s if len(s) <= MAX_PARAM_VAL else s[: MAX_PARAM_VAL - 3] + "..."


def _clean_key(k: str) -> str:
    # MLflow keys: alphanumerics, underscores, dashes, periods, spaces, slashes, colons.
    k = "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in str(k))
    return k[:MAX_KEY]


def _tag(v: Any) -> str:
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
            out[_clean_key(k)] = 1.0 if v else 0.0
        elif isinstance(v, (int, float)):
            out[_clean_key(k)] = float(v)
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
            try:
                out[_clean_key(k)] = float(v.item())
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
    return _tag((exc_lines[-1] if exc_lines else lines[0]).strip()[:1000])


@dataclass
class _Run:
    """One MLflow run as the callback sees it: its id (None until created or found) and
    the records not yet written."""

    key: str  # "parent" or the trial id
    create_tags: dict[str, str]
    run_name: str
    run_id: str | None = None
    lookup: bool = False  # look for an existing run (resume) before creating one
    resolved: bool = False  # run_id known (created or found)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ts, step
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)  # local file, artifact dir
    terminate: str | None = None
    reopen: bool = False
    last_step: dict[str, int] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    latest: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    logged_params: set[str] = field(default_factory=set)
    status: str = "RUNNING"
    name: str = ""
    nodes: list[str] = field(default_factory=list)

    def pending(self) -> int:
        return (len(self.metrics) + len(self.params) + len(self.tags) + len(self.artifacts)
                + (self.terminate is not None) + (not self.resolved))


# The callbacks of the sweeps this process runs (a resumed sweep's callback is unpickled by
# Tune, not built by us): the driver asks them, after fit(), how many records were lost.
ACTIVE: list["MLflowCallback"] = []


class MLflowCallback(Callback):
    """Ray Tune callback that records a sweep in MLflow (the only writer; runs on the driver).

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///mlflow.db`` by default in the CLI).
        experiment: MLflow experiment name (the study name).
        spec: the validated spec as a plain dict (its ``search`` objectives are recorded).
        spec_text: the YAML text, stored as the parent's ``spec.yaml``.
        sweep_name: this sweep's name (Ray experiment name); tags the parent run.
        resume: reuse the parent run tagged with `sweep_name` and the child runs by trial id.
        storage_path: where Ray keeps checkpoints (recorded as a tag).
        objectives: [(metric, mode), …]; default: read from ``spec['search']``.
        flush_interval: seconds between batched writes of metrics (events flush at once).
        log: where warnings go (one line each).
    """

    def __init__(self, tracking_uri: str, experiment: str, spec: dict, spec_text: str, sweep_name: str,
                 resume: bool = False, storage_path: str | None = None, *,
                 objectives: list[tuple[str, str]] | None = None, flush_interval: float = 2.0,
                 retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0), log: Callable[[str], None] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.spec = spec or {}
        self.spec_text = spec_text or ""
        self.sweep_name = sweep_name
        self.resume = resume
        self.storage_path = storage_path
        self.objectives = list(objectives) if objectives else objectives_from_spec(self.spec)
        self.flush_interval = flush_interval
        self.retry_delays = tuple(retry_delays)
        self._log = log
        self._reset_runtime()
        self._restored_parent: str | None = None
        self._restored_trials: dict[str, str] = {}

    # ------------------------------------------------------------ plumbing
    def _reset_runtime(self) -> None:
        self._client = None
        self._experiment_id: str | None = None
        self._parent: _Run | None = None
        self._trials: dict[str, _Run] = {}
        self._stage: str | None = None
        self._down_since: float | None = None
        self._next_try = 0.0
        self._backoff = 1.0
        self._last_flush = 0.0
        self._warned_down = False
        self._rejected = 0
        self._ended = False
        self.lost = 0
        self.interrupted: str | None = None  # "SIGINT"/"SIGTERM" once the driver was told to stop

    def __getstate__(self) -> dict:
        # Ray pickles the RunConfig (and so this callback) into tuner.pkl: keep only the
        # configuration and the run ids, never a client or queued records.
        state = {k: v for k, v in self.__dict__.items()
                 if k in ("tracking_uri", "experiment", "spec", "spec_text", "sweep_name", "resume",
                          "storage_path", "objectives", "flush_interval", "retry_delays")}
        state["_restored_parent"] = self._parent.run_id if self._parent else self._restored_parent
        state["_restored_trials"] = {k: r.run_id for k, r in self._trials.items() if r.run_id} or self._restored_trials
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._log = None
        self._reset_runtime()

    def get_state(self) -> dict | None:
        """Saved by Ray with the experiment state, so ``Tuner.restore`` finds our runs again."""
        parent = self._parent.run_id if self._parent and self._parent.run_id else self._restored_parent
        trials = {**self._restored_trials, **{k: r.run_id for k, r in self._trials.items() if r.run_id}}
        return {"parent_run_id": parent, "trial_runs": trials} if parent else None

    def set_state(self, state: dict) -> None:
        self._restored_parent = state.get("parent_run_id")
        self._restored_trials = dict(state.get("trial_runs") or {})

    def _say(self, msg: str) -> None:
        (self._log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    def _client_or_none(self):
        if self._client is None:
            self._client = make_client(self.tracking_uri)
        return self._client

    def _stage_dir(self, *parts: str) -> Path:
        if self._stage is None:
            self._stage = tempfile.mkdtemp(prefix="l2lda-mlflow-")
        d = Path(self._stage, *parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ------------------------------------------------------------- lifecycle
    @_guarded
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        import ray
        import torch

        from trainable import __version__

        tags = {
            "role": ROLE_SWEEP, "sweep_name": self.sweep_name, "status": "RUNNING",
            "tool_version": __version__, "torch_version": torch.__version__, "ray_version": ray.__version__,
            "python_version": platform.python_version(), "driver_host": socket.gethostname(),
            "driver_threads": str(torch.get_num_threads()),
        }
        try:
            import mlflow

            tags["mlflow_version"] = mlflow.__version__
        except ImportError:  # pragma: no cover - mlflow is a dependency
            pass
        commit = git_commit()
        if commit:
            tags["git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit.split("-")[0]
        if self.storage_path:
            tags["storage_path"] = str(self.storage_path)
        if total_num_samples is not None:
            tags["total_num_samples"] = str(total_num_samples)
        if self.objectives:
            tags["objective.metric"], tags["objective.mode"] = self.objectives[0]
            tags["objectives"] = json.dumps(self.objectives)
        self._parent = _Run("parent", create_tags={}, run_name=self.sweep_name, run_id=self._restored_parent,
                            lookup=self.resume or bool(self._restored_parent))
        self._parent.tags.update({k: _tag(v) for k, v in tags.items()})
        self._parent.reopen = self._parent.lookup
        if self.spec_text:
            p = self._stage_dir("parent") / "spec.yaml"
            p.write_text(self.spec_text)
            self._parent.artifacts.append((str(p), None))
        self._flush(force=True)
        if self not in ACTIVE:
            ACTIVE.append(self)
        # A driver stopped by Ctrl-C (or any normal exit) before the experiment ended still
        # writes what it queued and marks the sweep INTERRUPTED; --resume reopens the runs.
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if self._ended or self._parent is None:
            return
        self._mark_interrupted()
        self.close()

    def _mark_interrupted(self) -> None:
        """Every run not yet ended → KILLED (status tag INTERRUPTED); --resume reopens them."""
        for run in self._trials.values():
            if run.terminate is None and run.status not in ("FINISHED", "FAILED", "KILLED"):
                run.tags["status"] = run.status = "INTERRUPTED"
                if self.interrupted:
                    run.tags["interrupted_by"] = self.interrupted
                run.terminate = "KILLED"
        if self._parent is not None and self._parent.terminate is None:
            self._parent.tags["status"] = "INTERRUPTED"
            if self.interrupted:
                self._parent.tags["interrupted_by"] = self.interrupted
            self._parent.terminate = "KILLED"

    def interrupt(self, signame: str) -> None:
        """The driver got SIGINT/SIGTERM: from the next Tune step on, errors of trials are the
        interruption's (KILLED, not FAILED), and every open run is written as KILLED at once, so
        the records hold even if the process does not survive the shutdown."""
        self.interrupted = signame
        self._interrupt_pending = True

    def _apply_interrupt(self) -> None:
        if getattr(self, "_interrupt_pending", False) and not self._ended:
            self._interrupt_pending = False
            self._mark_interrupted()
            self._flush(force=True, ignore_backoff=True)

    @_guarded
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._trial_run(trial)
        run.tags["status"] = "RUNNING"
        run.status = "RUNNING"
        run.reopen = True
        self._flush(force=True)

    @_guarded
    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_run(trial).tags["restored_from"] = _tag(self._checkpoint_path(trial) or "")

    @_guarded
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run = self._trial_run(trial)
        step = int(result.get("training_iteration") or (max(run.last_step.values(), default=0) + 1))
        ts = int(time.time() * 1000)
        for k, v in metric_items(result).items():
            if step <= run.last_step.get(k, -1):
                continue  # a restored trial re-reports steps already logged: one history
            run.metrics.append((k, v, ts, step))
            run.last_step[k] = step
            run.history.setdefault(k, []).append((step, v))
            run.latest[k] = v
        for key, tag in (("hostname", "hostname"), ("node_ip", "node_ip")):
            if result.get(key) and run.tags.get(tag) != str(result[key]):
                run.tags[tag] = _tag(result[key])
        node = result.get("node_ip") or result.get("hostname")
        if node and str(node) not in run.nodes:
            run.nodes.append(str(node))
            run.tags["nodes"] = _tag(",".join(run.nodes))
        matrix = result.get("matrix")
        if isinstance(matrix, Mapping) and "correct" in matrix:
            self._render_matrix(run, matrix)
        self._flush(force=bool(matrix) or bool(result.get("done")))

    @_guarded
    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        path = self._checkpoint_path(trial, checkpoint)
        if path:
            run = self._trial_run(trial)
            run.tags["checkpoint_path"] = _tag(path)
            run.tags["checkpoint_iteration"] = str(max(run.last_step.values(), default=0))
            self._flush()

    @_guarded
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._trial_run(trial)
        run.tags["status"] = "RECOVERING"
        run.tags["last_failure"] = failure_reason(trial)
        # Tune calls on_trial_restore only for a driver-side restore, not when it recovers a
        # crashed actor: record here which checkpoint the retried trial continues from.
        path = self._checkpoint_path(trial)
        if path:
            run.tags["restored_from"] = _tag(path)
        run.tags["num_failures"] = str(getattr(trial, "num_failures", "") or "")
        self._flush(force=True)

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish_trial(trial, "FINISHED")

    @_guarded
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.interrupted:  # a worker that got the same signal: the interruption, not a failure
            self._finish_trial(trial, "KILLED", f"interrupted by {self.interrupted}")
            return
        self._finish_trial(trial, "FAILED", failure_reason(trial))

    @_guarded
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._apply_interrupt()
        self._flush()

    @_guarded
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._parent is None:  # setup never ran (e.g. driven by hand)
            return
        rows = self._sweep_rows(trials)
        d = self._stage_dir("parent", "end")
        try:
            table = art.write_sweep_table(rows, d / art.SWEEP_TABLE)
            pareto = art.write_pareto(rows, d / art.PARETO_PNG, title=f"{self.experiment} / {self.sweep_name}")
            self._parent.artifacts += [(str(table), None), (str(pareto), None)]
        except Exception as exc:  # rendering must never cost the sweep its records
            self._say(f"mlflow: sweep table/Pareto plot not rendered ({type(exc).__name__}: {exc})")
        n_err = sum(1 for r in rows if r.get("status") == "FAILED")
        self._parent.tags.update({"num_trials": str(len(rows)), "num_failed": str(n_err)})
        # Tune also ends the experiment when the driver is interrupted (SIGINT): trials still
        # pending or running mean the sweep is not finished and --resume will reopen it.
        unfinished = [t for t in trials or [] if str(getattr(t, "status", "TERMINATED")) not in ("TERMINATED", "ERROR")]
        if unfinished or self.interrupted:
            self._at_exit()
            return
        self._parent.tags["status"] = "FINISHED"
        self._parent.terminate = "FINISHED"
        self.close()

    def close(self) -> int:
        """Write everything still queued, retrying a few times; returns the number of records
        lost (reported in one line when non-zero). Idempotent."""
        if self._ended:
            return 0
        self._flush(force=True, ignore_backoff=True)
        for delay in self.retry_delays:
            if self._pending() == 0:
                break
            time.sleep(delay)
            self._flush(force=True, ignore_backoff=True)
        lost = self._pending()
        self.lost = lost + self._rejected
        if lost:
            self._say(f"mlflow: {lost} tracking records could not be written to {self.tracking_uri} and are lost "
                      f"(store unavailable: {self._down_reason})")
        elif self._rejected:
            self._say(f"mlflow: {self._rejected} records were rejected by the store (see warnings above)")
        self._ended = True
        atexit.unregister(self._at_exit)
        if self._stage and lost == 0:
            shutil.rmtree(self._stage, ignore_errors=True)
        return lost

    # --------------------------------------------------------------- trials
    def _trial_run(self, trial: Any) -> _Run:
        tid = str(trial.trial_id)
        run = self._trials.get(tid)
        if run is not None:
            return run
        name = str(getattr(trial, "trial_name", None) or trial)
        known = self._restored_trials.get(tid)
        parent_reused = bool(self._parent and self._parent.lookup)
        run = _Run(tid, create_tags={}, run_name=name, run_id=known, lookup=bool(known) or parent_reused, name=name)
        config = dict(getattr(trial, "config", None) or {})
        run.config = flatten(resolved_params(config))
        run.params = {_clean_key(k): param_value(v) for k, v in run.config.items()}
        run.tags.update({"role": ROLE_TRIAL, "trial_id": tid, "trial_name": _tag(name), "sweep_name": self.sweep_name,
                         "status": "RUNNING"})
        res = self._resources(trial)
        if res:
            run.tags["resources"] = _tag(json.dumps(res, sort_keys=True))
            run.tags["threads"] = str(int(config.get("threads") or 0) or int(res.get("CPU", 1) or 1))
        self._trials[tid] = run
        return run

    @staticmethod
    def _resources(trial: Any) -> dict[str, float]:
        pgf = getattr(trial, "placement_group_factory", None)
        try:
            req = getattr(pgf, "required_resources", None)
            return {k: float(v) for k, v in dict(req or {}).items()}
        except Exception:
            return {}

    @staticmethod
    def _checkpoint_path(trial: Any, checkpoint: Any = None) -> str | None:
        ckpt = checkpoint if checkpoint is not None else getattr(trial, "checkpoint", None)
        path = getattr(ckpt, "path", None)
        if not path:
            return None
        fs = getattr(ckpt, "filesystem", None)
        kind = getattr(fs, "type_name", "local") if fs is not None else "local"
        return str(path) if kind == "local" else f"{kind}://{path}"

    def _render_matrix(self, run: _Run, matrix: Mapping[str, Any]) -> None:
        d = self._stage_dir(run.key, "matrix")
        try:
            for p in art.render_matrix(matrix, d, title=run.name):
                run.artifacts.append((str(p), None))
        except Exception as exc:
            self._say(f"mlflow: robustness matrix of {run.name} not rendered ({type(exc).__name__}: {exc})")

    def _finish_trial(self, trial: Any, status: str, reason: str | None = None) -> None:
        run = self._trial_run(trial)
        path = self._checkpoint_path(trial)
        if path:
            run.tags["checkpoint_path"] = _tag(path)
            run.tags["checkpoint_iteration"] = str(max(run.last_step.values(), default=0))
        if reason:
            run.tags["failure_reason"] = reason
        run.tags["status"] = status
        run.status = status
        if run.history:
            try:
                p = art.write_curves(run.history, self._stage_dir(run.key, "curves") / art.CURVES_PNG, title=run.name)
                run.artifacts.append((str(p), None))
            except Exception as exc:
                self._say(f"mlflow: loss curves of {run.name} not rendered ({type(exc).__name__}: {exc})")
        run.terminate = status
        self._flush(force=True)

    def _sweep_rows(self, trials: list) -> list[dict[str, Any]]:
        """One row per trial of the sweep: from MLflow (trials finished before a resume
        included), overlaid with what this driver saw (newest)."""
        rows: dict[str, dict[str, Any]] = {}
        client = self._client
        if self._parent and self._parent.run_id and client is not None and self._down_since is None:
            try:
                for r in search_all(client, [self._experiment_id],
                                    f"tags.mlflow.parentRunId = '{self._parent.run_id}' and tags.role = '{ROLE_TRIAL}'"):
                    tid = r.data.tags.get("trial_id", r.info.run_id)
                    row = {"trial_id": tid, "trial_name": r.data.tags.get("trial_name", r.info.run_name),
                           "run_id": r.info.run_id, "status": r.data.tags.get("status", r.info.status)}
                    row.update(r.data.params)
                    row.update({k: v for k, v in r.data.metrics.items() if k.startswith(("matrix/", "transfer/", "val/"))})
                    rows[tid] = row
            except Exception as exc:
                self._note_down(exc)
        for tid, run in self._trials.items():
            row = rows.setdefault(tid, {"trial_id": tid})
            row.update({"trial_name": run.name, "status": run.status})
            if run.run_id:
                row["run_id"] = run.run_id
            row.update({k: param_value(v) for k, v in run.config.items()})
            row.update({k: v for k, v in run.latest.items() if k.startswith(("matrix/", "transfer/", "val/"))})
        for t in trials or []:  # trials Ray knows but that never reported in MLflow
            tid = str(t.trial_id)
            if tid not in rows:
                rows[tid] = {"trial_id": tid, "trial_name": str(t), "status": str(getattr(t, "status", ""))}
        return list(rows.values())

    # ------------------------------------------------------------- writing
    @property
    def _down_reason(self) -> str:
        return getattr(self, "_last_error", "unknown")

    def _pending(self) -> int:
        runs = ([self._parent] if self._parent else []) + list(self._trials.values())
        return sum(r.pending() for r in runs)

    def _note_down(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self._last_error = f"{type(exc).__name__}: {first}"
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._backoff = 1.0
            if not self._warned_down:
                self._say(f"mlflow: tracking store {self.tracking_uri} unavailable ({self._last_error}); "
                          f"queuing records in memory and retrying")
                self._warned_down = True
        else:
            self._backoff = min(self._backoff * 2, 60.0)
        self._next_try = now + self._backoff

    def _note_up(self) -> None:
        if self._down_since is not None:
            self._say(f"mlflow: tracking store {self.tracking_uri} is back; writing queued records")
            self._warned_down = False  # a later outage is reported again
        self._down_since = None

    def _flush(self, force: bool = False, ignore_backoff: bool = False) -> None:
        now = time.monotonic()
        if self._down_since is not None and not ignore_backoff and now < self._next_try:
            return
        if not force and now - self._last_flush < self.flush_interval:
            return
        self._last_flush = now
        try:
            client = self._client_or_none()
            if self._experiment_id is None:
                self._experiment_id = ensure_experiment(client, self.experiment, self.tracking_uri)
            if self._parent is not None:
                self._write(client, self._parent, parent_id=None)
                if not self._parent.resolved:
                    return
            for run in list(self._trials.values()):
                self._write(client, run, parent_id=self._parent.run_id if self._parent else None)
        except Exception as exc:
            self._note_down(exc)
            return
        self._note_up()

    def _resolve(self, client: Any, run: _Run, parent_id: str | None) -> None:
        from mlflow.entities import RunStatus

        found = None
        if run.lookup:
            if run.run_id:
                try:
                    found = client.get_run(run.run_id)
                except Exception as exc:
                    if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")) and \
                            "not found" not in str(exc).lower():
                        raise
                    found = None
                if found is not None and found.info.lifecycle_stage == "deleted":
                    found = None
            if found is None:
                if run.key == "parent":
                    filt = f"tags.role = '{ROLE_SWEEP}' and tags.sweep_name = '{_q(self.sweep_name)}'"
                else:
                    filt = f"tags.role = '{ROLE_TRIAL}' and tags.trial_id = '{_q(run.key)}'"
                    if parent_id:
                        filt += f" and tags.mlflow.parentRunId = '{parent_id}'"
                hits = client.search_runs([self._experiment_id], filt, max_results=1,
                                          order_by=["attributes.start_time DESC"])
                found = hits[0] if hits else None
        if found is not None:
            run.run_id = found.info.run_id
            run.logged_params = set(found.data.params)
            self._adopt_history(client, run, found)
            if found.info.status != RunStatus.to_string(RunStatus.RUNNING) and run.reopen and run.terminate is None:
                client.update_run(run.run_id, status="RUNNING")
        else:
            tags = {"mlflow.runName": run.run_name}
            if parent_id:
                tags["mlflow.parentRunId"] = parent_id
            tags.update(run.tags)
            created = client.create_run(self._experiment_id, tags=tags, run_name=run.run_name)
            run.run_id = created.info.run_id
            run.tags = {}
        run.resolved = True

    def _adopt_history(self, client: Any, run: _Run, found: Any) -> None:
        """Continue the existing metric history: steps already in MLflow are not logged again."""
        existing: dict[str, int] = {}
        for key in found.data.metrics:
            hist = client.get_metric_history(run.run_id, key)
            if hist:
                existing[key] = max(m.step for m in hist)
                merged = {s: v for s, v in run.history.get(key, [])}
                merged.update({m.step: m.value for m in hist})
                run.history[key] = sorted(merged.items())
                run.latest.setdefault(key, found.data.metrics[key])
        run.metrics = [m for m in run.metrics if m[3] > existing.get(m[0], -1)]
        for k, s in existing.items():
            run.last_step[k] = max(run.last_step.get(k, -1), s)

    def _write(self, client: Any, run: _Run, parent_id: str | None) -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException

        if not run.resolved:
            self._resolve(client, run, parent_id)
        if run.reopen and run.terminate is None:
            run.reopen = False
        # Params are immutable in MLflow: a reused run keeps the ones it has.
        params = {k: v for k, v in run.params.items() if k not in run.logged_params}
        while run.metrics or params or run.tags:
            m_chunk = run.metrics[:MAX_METRICS_PER_BATCH]
            room = MAX_ENTITIES_PER_BATCH - len(m_chunk)
            p_keys = list(params)[: min(MAX_PARAMS_TAGS_PER_BATCH, room)]
            room -= len(p_keys)
            t_keys = list(run.tags)[: min(MAX_PARAMS_TAGS_PER_BATCH, max(room, 0))]
            batch = dict(metrics=[Metric(k, v, ts, s) for k, v, ts, s in m_chunk],
                         params=[Param(k, params[k]) for k in p_keys],
                         tags=[RunTag(k, run.tags[k]) for k in t_keys])
            try:
                client.log_batch(run.run_id, **batch)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                    raise
                self._log_one_by_one(client, run.run_id, batch)
            del run.metrics[: len(m_chunk)]
            for k in p_keys:
                run.logged_params.add(k)
                params.pop(k)
                run.params.pop(k, None)
            for k in t_keys:
                run.tags.pop(k, None)
        run.params.clear()
        while run.artifacts:
            path, where = run.artifacts[0]
            if os.path.exists(path):
                client.log_artifact(run.run_id, path, where)
            run.artifacts.pop(0)
        if run.terminate is not None:
            client.set_terminated(run.run_id, status=run.terminate)
            run.terminate = None

    def _log_one_by_one(self, client: Any, run_id: str, batch: dict) -> None:
        """A batch the store rejects as invalid: write what it accepts, count and name the rest."""
        from mlflow.exceptions import MlflowException

        for kind in ("metrics", "params", "tags"):
            for item in batch[kind]:
                try:
                    client.log_batch(run_id, **{kind: [item]})
                except MlflowException as exc:
                    if getattr(exc, "error_code", "") != "INVALID_PARAMETER_VALUE":
                        raise
                    self._rejected += 1
                    first = (str(exc).splitlines() or [""])[0][:200]
                    self._say(f"mlflow: rejected {kind[:-1]} {getattr(item, 'key', '?')!r} ({first})")


def _q(s: str) -> str:
    return str(s).replace("'", "\\'")


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
