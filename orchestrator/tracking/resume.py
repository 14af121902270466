"""Finding a sweep's runs again on resume, so a trial never gets two runs (docs/architecture.md, tracking).

A run is found by the id Ray saved with the callback's state (``get_state``), else by its
tags: the parent by ``role = sweep`` and ``sweep_name``, a child by ``role = trial`` and
``trial_id`` under that parent. A found run continues its metric history: steps already in
MLflow are not logged again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.store import ROLE_SWEEP, ROLE_TRIAL

if TYPE_CHECKING:
    from orchestrator.tracking.writer import Writer, _Run


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


def resolve_run(writer: Writer, client: Any, run: _Run, parent_id: str | None) -> None:
    """Give `run` its MLflow run: the one found again (resume: its history continued, reopened if it
    ended) or a new one under `parent_id`."""
    from mlflow.entities import RunStatus

    found = None
    if run.lookup:
        found = find_run(client, writer.experiment_id, key=run.key, sweep_name=writer.sweep_name,
                         parent_id=parent_id, known_id=run.run_id)
    if found is not None:
        run.run_id = found.info.run_id
        run.logged_params = set(found.data.params)
        adopt_history(client, run, found)
        if found.info.status != RunStatus.to_string(RunStatus.RUNNING) and run.reopen and run.terminate is None:
            client.update_run(run.run_id, status="RUNNING")
        if found.inputs is not None and found.inputs.dataset_inputs:
            run.dataset = None  # logged when the run was created
    else:
        tags = {"mlflow.runName": run.run_name}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        tags.update(run.tags)
        created = client.create_run(writer.experiment_id, tags=tags, run_name=run.run_name)
        run.run_id = created.info.run_id
        run.tags = {}
    run.resolved = True
    writer.run_ids[run.key] = run.run_id


def adopt_history(client: Any, run: _Run, found: Any) -> None:
    """Continue the existing metric history: steps already in MLflow are not logged again."""
    existing = existing_steps(client, run.run_id, found)
    for key, hist in existing.items():
        merged = dict(run.history.get(key, []))
        merged.update({s: v for s, v, _ in hist})
        run.history[key] = sorted(merged.items())
        step, value, ts = hist[-1]
        if key not in run.latest or run.latest[key][2] <= step:
            run.latest[key] = (value, ts, step)
    run.metrics = [m for m in run.metrics if m[0] not in existing or m[3] > existing[m[0]][-1][0]]
    for k, hist in existing.items():
        run.last_step[k] = max(run.last_step.get(k, -1), hist[-1][0])
