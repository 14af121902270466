"""The Ray Tune callback that records a sweep in MLflow (docs/architecture.md, tracking).

It runs on Tune's controller thread and only maps events to records — names, tags, metric
values — which it hands to the :class:`~orchestrator.tracking.writer.Writer`; everything that
touches the store or renders a file happens on the writer's thread. Experiment = study name;
one parent run per sweep (the spec as ``spec.yaml``, versions, git commit, storage path, the
objective, and at the end the sweep's outcome); one nested child run per trial, named after
its defense and swept values, with the whole resolved trial config as params.
"""
from __future__ import annotations

import atexit
import functools
import json
import platform
import socket
import sys
import time
from typing import Any, Callable, Mapping

from ray.tune import Callback

from orchestrator.store import ROLE_SWEEP, ROLE_TRIAL
from orchestrator.tracking.records import (failure_reason, failure_type, metric_items, objectives_from_spec, run_name,
                                           swept_params, tag, git_commit)
from orchestrator.tracking.writer import DEFAULT_QUEUE, Writer

# The callbacks of the sweeps this process runs (a resumed sweep's callback is unpickled by
# Tune, not built by us): the driver asks them, after fit(), how many records were lost.
ACTIVE: list["MLflowCallback"] = []


def _guarded(hook: Callable) -> Callable:
    """A tracking hook never raises into Tune: a bug or a bad value costs a record, not the sweep."""

    @functools.wraps(hook)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self._say(f"mlflow: {hook.__name__} failed ({type(exc).__name__}: {first}); the sweep goes on")
            return None

    return wrapper


# Result keys a trial reports about its device (trainable.training.resources.Placement) → run tags.
DEVICE_TAGS = {"device/name": "device", "device/cuda_visible_devices": "cuda_visible_devices",
               "device/memory_cap": "memory_cap"}


class _Seen:
    """What the controller side remembers of a trial: its run name, nodes and last step."""

    __slots__ = ("name", "nodes", "last_step", "host", "ip", "device")

    def __init__(self, name: str) -> None:
        self.name, self.nodes, self.last_step, self.host, self.ip = name, [], 0, None, None
        self.device: dict[str, str] = {}


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
        flush_interval: seconds between batched writes of metrics (events are written at once).
        retry_delays: pauses between the last attempts to write at the end.
        max_queue: records in flight to the writer thread before a report waits for it.
        log_models: log each finished trial's classifier as an MLflow LoggedModel.
        log: where warnings go (one line each).
    """

    def __init__(self, tracking_uri: str, experiment: str, spec: dict, spec_text: str, sweep_name: str,
                 resume: bool = False, storage_path: str | None = None, *,
                 objectives: list[tuple[str, str]] | None = None, flush_interval: float = 2.0,
                 retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0), max_queue: int = DEFAULT_QUEUE,
                 log_models: bool = True, log: Callable[[str], None] | None = None) -> None:
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
        self.max_queue = max_queue
        self.log_models = log_models
        self._log = log
        self._restored_parent: str | None = None
        self._restored_trials: dict[str, str] = {}
        self._reset_runtime()

    # ------------------------------------------------------------ plumbing
    def _reset_runtime(self) -> None:
        self._writer = Writer(self.tracking_uri, self.experiment, self.sweep_name, say=self._say,
                              objectives=self.objectives, flush_interval=self.flush_interval,
                              retry_delays=self.retry_delays, max_queue=getattr(self, "max_queue", DEFAULT_QUEUE),
                              log_models=getattr(self, "log_models", True))
        self._seen: dict[str, _Seen] = {}
        self._names: set[str] = set()
        self._swept = swept_params(self.spec)
        self._started = False
        self._ended = False
        self.lost = 0
        self.interrupted: str | None = None  # "SIGINT"/"SIGTERM" once the driver was told to stop

    def __getstate__(self) -> dict:
        # Ray pickles the RunConfig (and so this callback) into tuner.pkl: keep only the
        # configuration and the run ids, never a client, a thread or queued records.
        state = {k: v for k, v in self.__dict__.items()
                 if k in ("tracking_uri", "experiment", "spec", "spec_text", "sweep_name", "resume",
                          "storage_path", "objectives", "flush_interval", "retry_delays", "max_queue", "log_models")}
        state["_restored_parent"] = self._known_parent()
        state["_restored_trials"] = self._known_trials()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)  # a state pickled before max_queue/log_models existed gets the defaults
        self.__dict__.setdefault("max_queue", DEFAULT_QUEUE)
        self.__dict__.setdefault("log_models", True)
        self._log = None
        self._reset_runtime()

    def _known_parent(self) -> str | None:
        return self._writer.run_ids.get("parent") or self._restored_parent

    def _known_trials(self) -> dict[str, str]:
        ids = dict(self._writer.run_ids)
        ids.pop("parent", None)
        return {**self._restored_trials, **ids}

    def get_state(self) -> dict | None:
        """Saved by Ray with the experiment state, so ``Tuner.restore`` finds our runs again."""
        parent = self._known_parent()
        return {"parent_run_id": parent, "trial_runs": self._known_trials()} if parent else None

    def set_state(self, state: dict) -> None:
        self._restored_parent = state.get("parent_run_id")
        self._restored_trials = dict(state.get("trial_runs") or {})

    def _say(self, msg: str) -> None:
        (self._log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    # The writer's state, for callers (and tests) that look at it through the callback.
    @property
    def _client(self) -> Any:
        return self._writer.client

    @_client.setter
    def _client(self, client: Any) -> None:
        self._writer.client = client

    @property
    def _next_try(self) -> float:
        return self._writer.next_try

    @_next_try.setter
    def _next_try(self, t: float) -> None:
        self._writer.next_try = t

    def _pending(self) -> int:
        return self._writer.pending()

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until the writer applied every record submitted so far and tried to write it."""
        return self._writer.sync(timeout)

    @property
    def parent_run_id(self) -> str | None:
        return self._known_parent()

    @property
    def experiment_id(self) -> str | None:
        return self._writer.experiment_id

    @property
    def outcome(self) -> dict[str, Any]:
        """The sweep's outcome as written on the parent run (after on_experiment_end)."""
        return dict(self._writer.outcome)

    def run_name_of(self, trial_id: str) -> str | None:
        seen = self._seen.get(str(trial_id))
        return seen.name if seen else None

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
        if self._swept:
            tags["swept_params"] = ",".join(self._swept)
        lookup = self.resume or bool(self._restored_parent)
        self._writer.start()
        self._started = True
        self._writer.submit(("parent", {"run_name": self.sweep_name, "known_id": self._restored_parent,
                                        "lookup": lookup, "tags": {k: tag(v) for k, v in tags.items()},
                                        "spec_text": self.spec_text}))
        if self not in ACTIVE:
            ACTIVE.append(self)
        # A driver stopped by Ctrl-C (or any normal exit) before the experiment ended still
        # writes what it queued and marks the sweep INTERRUPTED; --resume reopens the runs.
        atexit.register(self._at_exit)

    def _at_exit(self, timeout: float | None = None) -> None:
        if self._ended or not self._started:
            return
        self._writer.submit(("interrupt", {"by": self.interrupted}))
        self.close(timeout)

    def interrupt(self, signame: str) -> None:
        """The driver got SIGINT/SIGTERM: from the next Tune step on, errors of trials are the
        interruption's (KILLED, not FAILED), and every open run is written as KILLED at once, so
        the records hold even if the process does not survive the shutdown."""
        self.interrupted = signame
        self._interrupt_pending = True

    def _apply_interrupt(self) -> None:
        if getattr(self, "_interrupt_pending", False) and not self._ended:
            self._interrupt_pending = False
            self._writer.submit(("interrupt", {"by": self.interrupted}))

    def _trial(self, trial: Any, **tags: str) -> str:
        """Register the trial with the writer on first sight; returns its id."""
        tid = str(trial.trial_id)
        if tid in self._seen:
            return tid
        config = dict(getattr(trial, "config", None) or {})
        name = run_name(config, self._swept) if self._swept or config.get("defense") else \
            str(getattr(trial, "trial_name", None) or trial)
        if name in self._names:  # the same values twice (num_samples > 1): the trial's number makes it unique
            name = f"{name}-{tid.rsplit('_', 1)[-1]}"
        self._names.add(name)
        self._seen[tid] = _Seen(name)
        ray_name = str(getattr(trial, "trial_name", None) or trial)
        t = {"role": ROLE_TRIAL, "trial_id": tid, "trial_name": tag(ray_name), "sweep_name": self.sweep_name,
             "status": "RUNNING"}
        res = self._resources(trial)
        if res:
            t["resources"] = tag(json.dumps(res, sort_keys=True))
            t["threads"] = str(int(config.get("threads") or 0) or int(res.get("CPU", 1) or 1))
        t.update(tags)
        known = self._restored_trials.get(tid)
        self._writer.submit(("trial", {"key": tid, "name": name, "config": config, "tags": t, "known_id": known,
                                       "lookup": bool(known) or self.resume or bool(self._restored_parent),
                                       "reopen": False}))  # on_trial_start reopens a found run
        return tid

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

    def _tags(self, tid: str, tags: Mapping[str, str], urgent: bool = True, reopen: bool = False) -> None:
        self._writer.submit(("tags", {"key": tid, "tags": dict(tags), "urgent": urgent, "reopen": reopen}))

    @_guarded
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._trial(trial)
        self._tags(tid, {"status": "RUNNING"}, reopen=True)

    @_guarded
    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._trial(trial)
        self._tags(tid, {"restored_from": tag(self._checkpoint_path(trial) or "")})

    @_guarded
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = self._trial(trial)
        seen = self._seen[tid]
        step = int(result.get("training_iteration") or (seen.last_step + 1))
        seen.last_step = max(seen.last_step, step)
        tags: dict[str, str] = {}
        host, ip = result.get("hostname"), result.get("node_ip")
        if host and seen.host != str(host):
            seen.host = str(host)
            tags["hostname"] = tag(host)
        if ip and seen.ip != str(ip):
            seen.ip = str(ip)
            tags["node_ip"] = tag(ip)
        # What the trial actually ran on (docs/reliability.md, devices): tags, written when they change.
        for key, name in DEVICE_TAGS.items():
            value = result.get(key)
            if isinstance(value, str) and seen.device.get(name) != value:
                seen.device[name] = value
                tags[name] = tag(value)
        node = ip or host
        if node and str(node) not in seen.nodes:
            seen.nodes.append(str(node))
            tags["nodes"] = tag(",".join(seen.nodes))
        matrix = result.get("matrix")
        self._writer.submit(("result", {"key": tid, "step": step, "ts": int(time.time() * 1000),
                                        "metrics": metric_items(result), "tags": tags,
                                        "matrix": matrix if isinstance(matrix, Mapping) else None,
                                        "done": bool(result.get("done"))}))

    @_guarded
    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        path = self._checkpoint_path(trial, checkpoint)
        if path:
            tid = self._trial(trial)
            self._tags(tid, {"checkpoint_path": tag(path),
                             "checkpoint_iteration": str(self._seen[tid].last_step)}, urgent=False)

    @_guarded
    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._trial(trial)
        tags = {"status": "RECOVERING", "last_failure": failure_reason(trial),
                "num_failures": str(getattr(trial, "num_failures", "") or "")}
        # Tune calls on_trial_restore only for a driver-side restore, not when it recovers a
        # crashed actor: record here which checkpoint the retried trial continues from.
        path = self._checkpoint_path(trial)
        if path:
            tags["restored_from"] = tag(path)
        self._tags(tid, tags)

    def _finish(self, trial: Any, status: str, reason: str | None = None) -> None:
        tid = self._trial(trial)
        tags: dict[str, str] = {}
        path = self._checkpoint_path(trial)
        if path:
            tags["checkpoint_path"] = tag(path)
        if reason:
            tags["failure_reason"] = reason
            if status == "FAILED":
                tags["failure_type"] = failure_type(reason)
        self._writer.submit(("finish", {"key": tid, "status": status, "tags": tags}))

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    @_guarded
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.interrupted:  # a worker that got the same signal: the interruption, not a failure
            self._finish(trial, "KILLED", f"interrupted by {self.interrupted}")
            return
        self._finish(trial, "FAILED", failure_reason(trial))

    @_guarded
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._apply_interrupt()

    @_guarded
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not self._started:  # setup never ran (e.g. driven by hand)
            return
        known = [(str(t.trial_id), str(t), str(getattr(t, "status", ""))) for t in trials or []]
        # Tune also ends the experiment when the driver is interrupted (SIGINT): trials still
        # pending or running mean the sweep is not finished and --resume will reopen it.
        unfinished = any(str(getattr(t, "status", "TERMINATED")) not in ("TERMINATED", "ERROR") for t in trials or [])
        self._writer.submit(("end", {"trials": known, "unfinished": unfinished, "interrupted": self.interrupted}))
        self.close()

    def close(self, timeout: float | None = None) -> int:
        """Write everything still queued, retrying a few times; returns the number of records
        lost (reported in one line when non-zero). Idempotent."""
        if self._ended:
            return 0
        self._writer.retry_delays = tuple(self.retry_delays)
        lost = self._writer.close(timeout)
        self.lost = lost
        self._ended = True
        try:
            atexit.unregister(self._at_exit)
        except Exception:
            pass
        return lost


# Ray stores the callback's import path in tuner.pkl: keep the one sweeps started with.
MLflowCallback.__module__ = "orchestrator.tracking"
