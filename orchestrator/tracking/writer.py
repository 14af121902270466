"""The thread that delivers a sweep's records to MLflow (docs/architecture.md, tracking: delivery).

The Tune callback runs on Tune's controller thread and only turns events into records; it
hands them to :class:`Writer` through a bounded queue. ``submit`` blocks while the queue is
full (back-pressure: the controller waits, nothing is dropped). The writer thread drains the
queue, keeps each run's unwritten records, renders the artifacts (matrix tables and heatmap,
loss curves, sweep table, Pareto plot) and writes in batches through
:class:`mlflow.MlflowClient` with explicit run ids. While the store is unreachable it keeps
draining into memory and retries with back-off, so training never waits on an outage; what
is still unwritten at :meth:`close` (after a few retries) is counted and named in one line.
A second thread (:mod:`~orchestrator.tracking.models`) does the slow, rare work — rendering each
trial's matrix files and loss curves (a second or more of matplotlib each) and logging each
finished trial's classifier as an MLflow LoggedModel (a torch.export trace) — so records never
queue behind it. Runs found again on resume: :mod:`~orchestrator.tracking.resume`; the sweep's
outcome on its parent run: :mod:`~orchestrator.tracking.outcome`.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from orchestrator import artifacts as art
from orchestrator.store import ensure_experiment, make_client
from orchestrator.tracking import outcome
from orchestrator.tracking import resume as rs
from orchestrator.tracking.models import SideWorker
from orchestrator.tracking.records import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MAX_ENTITIES_PER_BATCH,
                                           MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, clean_key,
                                           dataset_input, flatten, param_value, resolved_params)

DEFAULT_QUEUE = 10_000  # records in flight between the controller and the writer (docs/architecture.md)
DRAIN = 2_000  # records taken off the queue before one write



@dataclass
class _Run:
    """One MLflow run as the writer sees it: its id (None until created or found) and the
    records not yet written."""

    key: str  # "parent" or the trial id
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
    latest: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # key -> value, ts, step
    config: dict[str, Any] = field(default_factory=dict)
    logged_params: set[str] = field(default_factory=set)
    status: str = "RUNNING"
    dataset: dict[str, Any] | None = None  # logged as the run's input once the run exists
    model_checkpoint: str | None = None  # log the classifier from here once the run's records are written

    def pending(self) -> int:
        return (len(self.metrics) + len(self.params) + len(self.tags) + len(self.artifacts)
                + (self.terminate is not None) + (not self.resolved) + (self.dataset is not None))


class Writer:
    """Owns every run's state and the MLflow client; all of it lives on the writer thread."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_name: str, *, say: Callable[[str], None],
                 objectives: list[tuple[str, str]], flush_interval: float = 2.0,
                 retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0), max_queue: int = DEFAULT_QUEUE,
                 log_models: bool = True) -> None:
        self.tracking_uri, self.experiment, self.sweep_name = tracking_uri, experiment, sweep_name
        self.say, self.objectives = say, objectives
        self.flush_interval, self.retry_delays = flush_interval, tuple(retry_delays)
        self.log_models = log_models
        self.q: queue.Queue = queue.Queue(maxsize=max(1, int(max_queue)))
        self.client: Any = None
        self.experiment_id: str | None = None
        self.parent: _Run | None = None
        self.trials: dict[str, _Run] = {}
        self.run_ids: dict[str, str] = {}  # key -> run id, read by the callback's get_state
        self.outcome: dict[str, Any] = {}  # the sweep's result for the driver's summary
        self.stage: str | None = None
        self.down_since: float | None = None
        self.next_try = 0.0
        self.backoff = 1.0
        self.last_flush = 0.0
        self.last_error = "unknown"
        self.warned_down = False
        self.rejected = 0
        self.lost = 0
        self.closed = False
        self._thread: threading.Thread | None = None
        self._side = SideWorker(self)

    # ------------------------------------------------------------ controller side
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="l2lda-mlflow-writer", daemon=True)
            self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, op: tuple) -> None:
        """Queue one record; blocks while the queue is full (never drops while the writer runs)."""
        if self.closed:
            return
        while True:
            try:
                self.q.put(op, timeout=1.0)
                return
            except queue.Full:
                if not self.alive():  # a writer that died cannot drain: count instead of waiting forever
                    self.lost += 1
                    return

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far was applied and a write attempted (tests, close)."""
        if not self.alive():
            return False
        ev = threading.Event()
        self.submit(("barrier", ev))
        return ev.wait(timeout)

    def close(self, timeout: float | None = None) -> int:
        """Write what is queued (retrying `retry_delays`), stop the thread; records lost."""
        if self.closed:
            return self.lost
        if self.alive():
            self.submit(("close",))
            self._thread.join(timeout)
            if self._thread.is_alive():
                n = self.q.qsize() + self.pending()
                self.say(f"mlflow: the tracking writer did not finish within {timeout:g} s; {n} records not written")
                self.lost = n
        self.closed = True
        return self.lost

    def pending(self) -> int:
        runs = ([self.parent] if self.parent else []) + list(self.trials.values())
        return sum(r.pending() for r in runs) + self.q.qsize() + self._side.pending()

    # --------------------------------------------------------------- writer thread
    def _loop(self) -> None:
        while True:
            try:
                ops = [self.q.get(timeout=self._wait())]
            except queue.Empty:
                ops = []
            while ops and len(ops) < DRAIN:
                try:
                    ops.append(self.q.get_nowait())
                except queue.Empty:
                    break
            urgent, closing, barriers = False, False, []
            for op in ops:
                kind = op[0]
                if kind == "close":
                    closing = True
                elif kind == "barrier":
                    barriers.append(op[1])
                    urgent = True
                else:
                    try:
                        urgent |= bool(self._apply(op))
                    except Exception as exc:  # a bug or a bad value costs one record, never the writer
                        first = (str(exc).strip().splitlines() or [""])[0][:200]
                        self.say(f"mlflow: a {kind} record was not applied ({type(exc).__name__}: {first})")
            if closing:
                self._finish()
                for ev in barriers:
                    ev.set()
                return
            self._flush(force=urgent)
            for ev in barriers:
                ev.set()

    def _wait(self) -> float:
        if self.pending() == 0:
            return 1.0
        now = time.monotonic()
        due = self.next_try if self.down_since is not None else self.last_flush + self.flush_interval
        return min(1.0, max(0.0, due - now))

    def _stage_dir(self, *parts: str) -> Path:
        if self.stage is None:
            self.stage = tempfile.mkdtemp(prefix="l2lda-mlflow-")
        d = Path(self.stage, *parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _apply(self, op: tuple) -> bool:
        """Fold one record into the runs; True when it should be written at once (an event)."""
        kind, body = op[0], op[1]
        if kind == "parent":
            self.parent = _Run("parent", run_name=body["run_name"], run_id=body.get("known_id"),
                               lookup=body["lookup"], reopen=body["lookup"])
            self.parent.tags.update(body["tags"])
            if body.get("spec_text"):
                p = self._stage_dir("parent") / "spec.yaml"
                p.write_text(body["spec_text"])
                self.parent.artifacts.append((str(p), None))
            return True
        if kind == "trial":
            return self._trial(body)
        run = self.trials.get(body.get("key", ""))
        if kind == "tags":
            if run is not None:
                run.tags.update(body["tags"])
                if "status" in body["tags"]:
                    run.status = body["tags"]["status"]
                if body.get("reopen"):
                    run.reopen = True
            return body.get("urgent", False)
        if kind == "result":
            return self._result(run, body) if run is not None else False
        if kind == "finish":
            if run is not None:
                self._finish_trial(run, body)
            return True
        if kind == "interrupt":
            self._mark_interrupted(body.get("by"))
            return True
        if kind == "end":
            self._end(body)
            return True
        raise ValueError(f"unknown record kind {kind!r}")

    def _trial(self, body: Mapping[str, Any]) -> bool:
        key = body["key"]
        run = self.trials.get(key)
        if run is None:
            run = _Run(key, run_name=body["name"], run_id=body.get("known_id"), lookup=body["lookup"])
            config = dict(body.get("config") or {})
            run.config = flatten(resolved_params(config))
            run.params = {clean_key(k): param_value(v) for k, v in run.config.items()}
            run.dataset = dataset_input(run.config)
            self.trials[key] = run
        run.tags.update(body["tags"])
        run.status = body["tags"].get("status", run.status)
        run.reopen = run.reopen or body.get("reopen", False)
        return True

    def _result(self, run: _Run, body: Mapping[str, Any]) -> bool:
        step, ts = body["step"], body["ts"]
        for k, v in body["metrics"].items():
            if step <= run.last_step.get(k, -1):
                continue  # a restored trial re-reports steps already logged: one history
            run.metrics.append((k, v, ts, step))
            run.last_step[k] = step
            run.history.setdefault(k, []).append((step, v))
            run.latest[k] = (v, ts, step)
        run.tags.update(body.get("tags") or {})
        matrix = body.get("matrix")
        if isinstance(matrix, Mapping) and "correct" in matrix:
            d = self._stage_dir(run.key, "matrix")
            self._side.render(run, "robustness matrix", lambda: art.render_matrix(matrix, d, title=run.run_name))
            return True
        return bool(body.get("done"))

    def _finish_trial(self, run: _Run, body: Mapping[str, Any]) -> None:
        tags = dict(body.get("tags") or {})
        if tags.get("checkpoint_path"):
            tags["checkpoint_iteration"] = str(max(run.last_step.values(), default=0))
        run.tags.update(tags)
        run.status = body["status"]
        run.tags["status"] = body["status"]
        if run.history:
            history = {k: list(v) for k, v in run.history.items()}
            path = self._stage_dir(run.key, "curves") / art.CURVES_PNG
            self._side.render(run, "loss curves", lambda: [art.write_curves(history, path, title=run.run_name)])
        ckpt = tags.get("checkpoint_path")
        if body["status"] == "FINISHED" and self.log_models and ckpt:  # local or remote (fetched, orchestrator.cluster)
            run.model_checkpoint = ckpt
        run.terminate = body["status"]

    def _mark_interrupted(self, by: str | None) -> None:
        """Every run not yet ended → KILLED (status tag INTERRUPTED); --resume reopens them."""
        for run in self.trials.values():
            if run.terminate is None and run.status not in ("FINISHED", "FAILED", "KILLED"):
                run.tags["status"] = run.status = "INTERRUPTED"
                if by:
                    run.tags["interrupted_by"] = by
                run.terminate = "KILLED"
        if self.parent is not None and self.parent.terminate is None:
            self.parent.tags["status"] = "INTERRUPTED"
            if by:
                self.parent.tags["interrupted_by"] = by
            self.parent.terminate = "KILLED"

    def _end(self, body: Mapping[str, Any]) -> None:
        if self.parent is None:
            return
        self._flush(force=True, ignore_backoff=True)  # every run exists before the outcome names one
        rows = outcome.sweep_rows(self, body.get("trials") or [])
        d = self._stage_dir("parent", "end")
        try:
            table = art.write_sweep_table(rows, d / art.SWEEP_TABLE)
            pareto = art.write_pareto(rows, d / art.PARETO_PNG, title=f"{self.experiment} / {self.sweep_name}")
            self.parent.artifacts += [(str(table), None), (str(pareto), None)]
        except Exception as exc:  # rendering must never cost the sweep its records
            self.say(f"mlflow: sweep table/Pareto plot not rendered ({type(exc).__name__}: {exc})")
        outcome.record_outcome(self, rows)
        if body.get("unfinished") or body.get("interrupted"):
            self._mark_interrupted(body.get("interrupted"))
            return
        self.parent.tags["status"] = "FINISHED"
        self.parent.terminate = "FINISHED"

    def _finish(self) -> None:
        self._side.close()  # rendered files join their runs' records; logged models are done
        self._flush(force=True, ignore_backoff=True)
        for delay in self.retry_delays:
            if self.pending() == 0:
                break
            time.sleep(delay)
            self._flush(force=True, ignore_backoff=True)
        lost = self.pending()
        self.lost += lost + self.rejected
        if lost:
            self.say(f"mlflow: {lost} tracking records could not be written to {self.tracking_uri} and are lost "
                     f"(store unavailable: {self.last_error})")
        elif self.rejected:
            self.say(f"mlflow: {self.rejected} records were rejected by the store (see warnings above)")
        if self.stage and lost == 0:
            shutil.rmtree(self.stage, ignore_errors=True)

    # ------------------------------------------------------------------- writing
    def _note_down(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self.last_error = f"{type(exc).__name__}: {first}"
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self.backoff = 1.0
            if not self.warned_down:
                self.say(f"mlflow: tracking store {self.tracking_uri} unavailable ({self.last_error}); "
                         f"queuing records in memory and retrying")
                self.warned_down = True
        else:
            self.backoff = min(self.backoff * 2, 60.0)
        self.next_try = now + self.backoff

    def _note_up(self) -> None:
        if self.down_since is not None:
            self.say(f"mlflow: tracking store {self.tracking_uri} is back; writing queued records")
            self.warned_down = False  # a later outage is reported again
        self.down_since = None

    def _flush(self, force: bool = False, ignore_backoff: bool = False) -> None:
        force = self._side.collect() or force
        now = time.monotonic()
        if self.down_since is not None and not ignore_backoff and now < self.next_try:
            return
        if not force and now - self.last_flush < self.flush_interval:
            return
        self.last_flush = now
        try:
            if self.client is None:
                self.client = make_client(self.tracking_uri)
            client = self.client
            if self.experiment_id is None:
                self.experiment_id = ensure_experiment(client, self.experiment, self.tracking_uri)
                exp = client.get_experiment(self.experiment_id)
                if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # a kind the user chose stays
                    client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            if self.parent is not None:
                self._write(client, self.parent, parent_id=None)
                if not self.parent.resolved:
                    return
            for run in list(self.trials.values()):
                self._write(client, run, parent_id=self.parent.run_id if self.parent else None)
        except Exception as exc:
            self._note_down(exc)
            return
        self._note_up()

    def _write(self, client: Any, run: _Run, parent_id: str | None) -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException

        if not run.resolved:
            rs.resolve_run(self, client, run, parent_id)
        if run.reopen and run.terminate is None:
            run.reopen = False
        if run.dataset is not None:
            self._log_dataset(client, run)
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
        if run.model_checkpoint:
            self._side.log_model(run, run.model_checkpoint)
            run.model_checkpoint = None
        if run.terminate is not None:
            client.set_terminated(run.run_id, status=run.terminate)
            run.terminate = None

    def _log_dataset(self, client: Any, run: _Run) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        d = run.dataset
        ds = Dataset(name=d["name"], digest=d["digest"], source_type="l2lda-tune",
                     source=json.dumps({"dataset": d["name"], "loader": "trainable.data.load_dataset"}),
                     schema=None, profile=json.dumps(d["profile"], sort_keys=True))
        client.log_inputs(run.run_id, [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "train")])])
        run.dataset = None

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
                    self.rejected += 1
                    first = (str(exc).splitlines() or [""])[0][:200]
                    self.say(f"mlflow: rejected {kind[:-1]} {getattr(item, 'key', '?')!r} ({first})")

