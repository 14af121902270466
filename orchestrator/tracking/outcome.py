"""The sweep's outcome on its parent run (docs/architecture.md, tracking: what is recorded): one
row per trial (from MLflow, trials finished before a resume included, overlaid with what this
driver saw), counts by status, the best trial by the one selection rule
(:mod:`orchestrator.selection`), and the parent run's description with every trial's matrix.

Functions of the :class:`~orchestrator.tracking.writer.Writer` whose thread runs them at the
sweep's end.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchestrator import selection
from orchestrator.store import ROLE_TRIAL, search_all
from orchestrator.tracking.records import clean_key, param_value, tag

if TYPE_CHECKING:
    from orchestrator.tracking.writer import Writer


def sweep_rows(writer: Writer, trials: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """One row per trial of the sweep: from MLflow (trials finished before a resume
    included), overlaid with what this driver saw (newest)."""
    rows: dict[str, dict[str, Any]] = {}
    client = writer.client
    if writer.parent and writer.parent.run_id and client is not None and writer.down_since is None:
        try:
            for r in search_all(client, [writer.experiment_id],
                                f"tags.mlflow.parentRunId = '{writer.parent.run_id}' and tags.role = '{ROLE_TRIAL}'"):
                tid = r.data.tags.get("trial_id", r.info.run_id)
                row = {"trial_id": tid, "trial_name": r.data.tags.get("trial_name", r.info.run_name),
                       "run_name": r.info.run_name, "run_id": r.info.run_id,
                       "status": r.data.tags.get("status", r.info.status)}
                row.update(r.data.params)
                row.update({k: v for k, v in r.data.metrics.items() if k.startswith(("matrix/", "transfer/", "val/", "check/"))})
                rows[tid] = row
        except Exception as exc:
            writer._note_down(exc)
    for tid, run in writer.trials.items():
        row = rows.setdefault(tid, {"trial_id": tid})
        row.update({"run_name": run.run_name, "status": run.status})
        row.setdefault("trial_name", run.tags.get("trial_name", run.run_name))
        if run.run_id:
            row["run_id"] = run.run_id
        row.update({k: param_value(v) for k, v in run.config.items()})
        row.update({k: v[0] for k, v in run.latest.items() if k.startswith(("matrix/", "transfer/", "val/", "check/"))})
    for tid, name, status in trials:  # trials Ray knows but that never reported in MLflow
        if tid not in rows:
            rows[tid] = {"trial_id": tid, "trial_name": name, "status": status}
    return list(rows.values())


def record_outcome(writer: Writer, rows: list[dict[str, Any]]) -> None:
    """The sweep's result on the parent run: counts by status, the best trial by the one
    selection rule (orchestrator/selection.py), its run and objective."""
    tags = writer.parent.tags
    counts: dict[str, int] = {}
    for r in rows:
        s = str(r.get("status") or "UNKNOWN")
        counts[s] = counts.get(s, 0) + 1
    tags.update({"num_trials": str(len(rows)), "num_failed": str(counts.get("FAILED", 0))})
    tags.update({f"trials.{s.lower()}": str(n) for s, n in sorted(counts.items())})
    writer.outcome = {"counts": counts, "experiment_id": writer.experiment_id,
                    "parent_run_id": writer.parent.run_id,
                    "run_names": {str(r["trial_id"]): str(r["run_name"]) for r in rows if r.get("run_name")}}
    if not writer.objectives:
        matrix_note(writer, rows, None, [])
        return
    metric, mode = writer.objectives[0]
    tags["selection.rule"] = selection.rule_text(metric, mode)
    pick = selection.best((selection.candidate(r["trial_id"], r.get(metric), r.get(selection.TIE_BREAK), r)
                           for r in rows if r.get("status") == "FINISHED"), mode)
    if pick is None:
        tags["best.trial_id"] = "none"
        matrix_note(writer, rows, None, [])
        return
    row = pick.item
    name = str(row.get("run_name") or row.get("trial_name") or pick.trial_id)
    tags.update({"best.trial_id": pick.trial_id, "best.run_name": name, "best.metric": metric,
                 "best.value": f"{pick.value:.6g}"})
    if row.get("run_id"):
        tags["best.run_id"] = str(row["run_id"])
    link = f"#/experiments/{writer.experiment_id}/runs/{row['run_id']}" if row.get("run_id") else ""
    lines = [f"**Best trial:** [{name}]({link})" if link else f"**Best trial:** {name}",
             f"({pick.trial_id}), {metric} = {pick.value:.4f} ({mode}).", "",
             "Trials: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) + ".", "",
             f"Selection: {selection.rule_text(metric, mode)}."]
    matrix_note(writer, rows, pick.trial_id, lines)
    ts = int(time.time() * 1000)
    writer.parent.metrics.append((clean_key(f"best/{metric}"), float(pick.value), ts, 0))
    writer.outcome.update({"best_trial_id": pick.trial_id, "best_run_name": name, "best_run_id": row.get("run_id"),
                         "metric": metric, "mode": mode, "value": pick.value})


def matrix_note(writer: Writer, rows: list[dict[str, Any]], best: str | None, lines: list[str]) -> None:
    """The parent run's description: the outcome `lines`, then the matrix of every trial as the
    end-of-sweep summary prints it (orchestrator/matrix_table.py), in Markdown."""
    from orchestrator import matrix_table

    entries = [(str(r.get("run_name") or r.get("trial_name") or r["trial_id"]), r, r["trial_id"] == best)
               for r in sorted(rows, key=lambda r: str(r.get("trial_id")))]
    table = matrix_table.render(entries, markdown=True)
    text = "\n".join([*lines, *(["", table] if table else [])])
    if text:
        writer.parent.tags["mlflow.note.content"] = tag(text)
