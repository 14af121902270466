"""MLflow tracking of a sweep: a Ray Tune callback on the driver is the only writer (docs/architecture.md, tracking).

* :mod:`~orchestrator.tracking.callback` — :class:`MLflowCallback`, which maps Tune events
  (on Tune's controller thread) to records;
* :mod:`~orchestrator.tracking.writer` — the thread that delivers them: bounded queue,
  batches, back-off while the store is down, artifacts;
* :mod:`~orchestrator.tracking.models` — the slow work on a side thread: rendering, logged models;
* :mod:`~orchestrator.tracking.outcome` — the sweep's outcome on its parent run;
* :mod:`~orchestrator.tracking.resume` — finding a sweep's runs again on ``--resume``;
* :mod:`~orchestrator.tracking.records` — what a result becomes: keys, values, run names,
  the trial's dataset.

Workers never touch the store, so concurrent trials never contend for sqlite.
``orchestrator.tracking.MLflowCallback`` is the import path Ray stores in ``tuner.pkl``.
"""
from orchestrator.store import (DEFAULT_TRACKING_URI, ROLE_SWEEP, ROLE_TRIAL, TrackingUnavailable,  # noqa: F401
                                check_tracking_uri, ensure_experiment, make_client, resolve_tracking_uri,
                                search_all, sqlite_path)
from orchestrator.tracking.callback import ACTIVE, MLflowCallback  # noqa: F401
from orchestrator.tracking.records import (KEEP_PLAIN, MAX_KEY, MAX_PARAM_VAL, MAX_TAG_VAL, RAY_KEYS,  # noqa: F401
                                           dataset_input, failure_reason, flatten, git_commit, metric_items,
                                           objectives_from_spec, param_value, resolved_params, run_name,
                                           swept_params)
from orchestrator.tracking.writer import Writer  # noqa: F401

__all__ = ["ACTIVE", "MLflowCallback", "Writer", "TrackingUnavailable", "check_tracking_uri", "make_client",
           "metric_items", "failure_reason", "objectives_from_spec", "search_all", "resolved_params", "run_name"]
