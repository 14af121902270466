"""Finding a sweep's runs again on resume, so a trial never gets two runs (docs/architecture.md, tracking).

A run is found by the id Ray saved with the callback's state (``get_state``), else by its
tags: the parent by ``role = sweep`` and ``sweep_name``, a child by ``role = trial`` and
``trial_id`` under that parent. A found run continues its metric history: steps already in
MLflow are not logged again.
"""
from __future__ import annotations

from typing import Any

from orchestrator.store import ROLE_SWEEP, ROLE_TRIAL


def quote_filter(s: str) -> str:
    return str(s).replace("'", "\\'")


def find_run(client: Any, experiment_id: str, *, key: str, sweep_name: str, parent_id: str | None,
             known_id: str | None) -> Any | None:
    """The existing run for `key` ("parent" or a trial id), or None (then a new one is created)."""
    found = None
    if known_id:
        try:
            found = client.get_run(known_id)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")) and \
                    "not found" not in str(exc).lower():
                raise
            found = None
        if found is not None and found.info.lifecycle_stage == "deleted":
            found = None
    if found is None:
        if key == "parent":
            filt = f"tags.role = '{ROLE_SWEEP}' and tags.sweep_name = '{quote_filter(sweep_name)}'"
        else:
            filt = f"tags.role = '{ROLE_TRIAL}' and tags.trial_id = '{quote_filter(key)}'"
            if parent_id:
                filt += f" and tags.mlflow.parentRunId = '{parent_id}'"
        hits = client.search_runs([experiment_id], filt, max_results=1, order_by=["attributes.start_time DESC"])
        found = hits[0] if hits else None
    return found


def existing_steps(client: Any, run_id: str, found: Any) -> dict[str, list[tuple[int, float, int]]]:
    """Every metric's (step, value, timestamp) history already in the found run, by step."""
    out: dict[str, list[tuple[int, float, int]]] = {}
    for key in found.data.metrics:
        hist = client.get_metric_history(run_id, key)
        if hist:
            out[key] = sorted({m.step: (m.step, m.value, m.timestamp) for m in hist}.values())
    return out
