"""A finished trial's classifier as an MLflow LoggedModel, and the slow, rare work of the writer
(docs/architecture.md, tracking: delivery) on a thread of its own: rendering a trial's matrix files
and loss curves, and logging its model, so records never queue behind matplotlib or torch.export.
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from orchestrator.store import make_client
from orchestrator.tracking.records import MAX_METRICS_PER_BATCH, param_value

if TYPE_CHECKING:
    from orchestrator.tracking.writer import Writer, _Run

MODEL_ATTEMPTS = 3


class SideWorker:
    """The slow, rare work on its own thread, so records never queue behind it: rendering a
    trial's matrix files and loss curves (the files then join the run's records on the writer
    thread) and logging a finished trial's classifier as an MLflow LoggedModel."""

    def __init__(self, writer: Writer) -> None:
        self.w = writer
        self.q: queue.Queue = queue.Queue()
        self.done: list[tuple[_Run, list]] = []
        self._thread: threading.Thread | None = None
        self._busy = 0
        self._lock = threading.Lock()

    def pending(self) -> int:
        with self._lock:
            return self.q.qsize() + self._busy + len(self.done)

    def _put(self, job: tuple) -> None:
        with self._lock:
            self.q.put(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="l2lda-mlflow-side", daemon=True)
            self._thread.start()

    def render(self, run: _Run, what: str, fn: Callable[[], list]) -> None:
        self._put(("render", run, what, fn))

    def log_model(self, run: _Run, checkpoint: str) -> None:
        metrics = {k: v for k, v in run.latest.items() if k.startswith(("matrix/", "val/", "transfer/"))}
        job = {"run_id": run.run_id, "name": run.run_name, "checkpoint": checkpoint, "metrics": metrics,
               "step": max(run.last_step.values(), default=0),
               "params": {k: run.config[k] for k in ("defense", "dataset", "model", "eps", "lam", "seed")
                          if k in run.config}}
        self._put(("model", job))

    def collect(self) -> bool:
        """On the writer thread: hand rendered files to their runs; True when there were any."""
        with self._lock:
            done, self.done = self.done, []
        for run, paths in done:
            run.artifacts.extend((str(p), None) for p in paths)
        return bool(done)

    def close(self) -> None:
        if self._thread is not None:
            self.q.put(None)
            self._thread.join()
            self._thread = None
        self.collect()

    def _loop(self) -> None:
        client = None
        while True:
            job = self.q.get()
            if job is None:
                return
            with self._lock:
                self._busy += 1
            try:
                if job[0] == "render":
                    _, run, what, fn = job
                    try:
                        paths = list(fn())
                        with self._lock:
                            self.done.append((run, paths))
                    except Exception as exc:
                        self.w.say(f"mlflow: {what} of {run.run_name} not rendered ({type(exc).__name__}: {exc})")
                    continue
                spec = job[1]
                for attempt in range(MODEL_ATTEMPTS):
                    try:
                        client = client or make_client(self.w.tracking_uri)
                        log_classifier(client, self.w.experiment_id, spec)
                        break
                    except Exception as exc:
                        if attempt + 1 == MODEL_ATTEMPTS or not _transient(exc):
                            first = (str(exc).strip().splitlines() or [""])[0][:200]
                            self.w.say(f"mlflow: the classifier of {spec['name']} was not logged as an MLflow model "
                                       f"({type(exc).__name__}: {first})")
                            break
                        time.sleep(2.0 * (attempt + 1))
            finally:
                with self._lock:
                    self._busy -= 1


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "Connection" in type(exc).__name__ \
        or "connection" in str(exc).lower()


def log_classifier(client: Any, experiment_id: str, job: Mapping[str, Any]) -> str:
    """Log the classifier of a trial's checkpoint as a LoggedModel of its run, with the trial's
    matrix and validation numbers as the model's metrics; returns the model id.

    Stored in MLflow's pytorch flavour as a torch.export ("pt2") graph traced on an input in
    [0, 1], so loading it never unpickles classes (docs/architecture.md, checkpoints and export)."""
    import torch
    from mlflow.entities import LoggedModelOutput, Metric, RunTag
    from mlflow.models import Model
    import mlflow.pytorch

    from trainable.data.registry import DATASETS
    from trainable.weights.export_dir import load_checkpoint_modules

    from orchestrator.cluster import local_checkpoint

    with local_checkpoint(job["checkpoint"]) as where:  # s3://… and other remote storage: fetched through pyarrow
        cfg, clf, _gen, meta = load_checkpoint_modules(where)
    params = {k: param_value(v) for k, v in job["params"].items()}
    model = client.create_logged_model(experiment_id, name="classifier", source_run_id=job["run_id"], params=params,
                                       tags={"trial_run_name": job["name"], "checkpoint_path": job["checkpoint"],
                                             "checkpoint_iteration": str(meta.get("iteration", ""))},
                                       model_type=f"{cfg.model_name} classifier")
    with tempfile.TemporaryDirectory(prefix="l2lda-model-") as tmp:
        mm = Model(artifact_path=model.artifact_location, run_id=job["run_id"], model_id=model.model_id,
                   model_uuid=model.model_id)
        # a batch of two: torch.export keeps the batch dimension free (a batch of one fixes it to 1)
        example = torch.rand((2, *DATASETS[cfg.dataset].shape))
        mlflow.pytorch.save_model(clf.cpu().eval(), path=os.path.join(tmp, "model"), mlflow_model=mm,
                                  input_example=example.numpy(), serialization_format="pt2",
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        client.log_model_artifacts(model.model_id, os.path.join(tmp, "model"))
    client.finalize_logged_model(model.model_id, "READY")
    step = int(job["step"])
    client.log_outputs(job["run_id"], [LoggedModelOutput(model.model_id, step)])
    # The same values, timestamps and steps as the run's own: MLflow stores them once for the
    # run and links them to the model.
    metrics = [Metric(k, v, ts, s, model_id=model.model_id) for k, (v, ts, s) in job["metrics"].items()]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(job["run_id"], metrics=metrics[i:i + MAX_METRICS_PER_BATCH])
    client.log_batch(job["run_id"], tags=[RunTag("model_id", model.model_id)])
    return model.model_id
