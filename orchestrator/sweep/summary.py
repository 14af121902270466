"""The end of a sweep (docs/architecture.md, summary): one row per trial, the robustness matrix of
every trial, the best trial by the one selection rule (:mod:`orchestrator.selection`), and where
the sweep's MLflow record is with the exact commands to open it.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from orchestrator.spec.study import Study
from trainable.text import quote


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def _fmt_param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _error_line(err: BaseException) -> str:
    """The line naming the exception in a (possibly remote, multi-line) trial error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln)]
    line = named[-1] if named else (lines[-1] if lines else type(err).__name__)
    return re.sub(r"\s+job_id=.*$", "", line)[:300]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize(results: Any, study: Study, wall_s: float | None = None, tracking: Mapping[str, Any] | None = None) -> str:
    """The end-of-sweep table (one row per trial), the best trial by the selection rule of
    :mod:`orchestrator.selection` (the parent run and ``export`` use the same), and, given the
    sweep's `tracking` (:func:`tracking_info`), where to look next."""
    from orchestrator import selection

    tracking = tracking or {}
    names = tracking.get("run_names") or {}
    varied = [p.name for p in study.params.values() if p.kind != "fixed"]
    metric_cols = list(dict.fromkeys(study.metrics))  # the matrix has its own table below
    show_names = bool(names)
    head = ["trial", *(["run"] if show_names else []), *varied, "status", "iter", *metric_cols, "checkpoint"]
    rows = [head]
    n_err = 0
    failures: list[str] = []
    cands = []
    for r in results:
        m = r.metrics or {}
        tid = str(m.get("trial_id") or getattr(r, "path", "?")).rsplit("/", 1)[-1]
        status = "ERROR" if r.error else ("DONE" if m.get("done") else "STOPPED")
        n_err += bool(r.error)
        ck = r.checkpoint.path if r.checkpoint else "-"
        if r.error:
            failures.append(f"  {tid}: {_error_line(r.error)}")
        rows.append([tid, *([names.get(tid, "-")] if show_names else []),
                     *(_fmt_param((r.config or {}).get(k, "")) for k in varied), status,
                     _fmt(int(m.get("iteration", 0) or 0)), *(_fmt(m.get(c, "-")) for c in metric_cols), ck])
        if not r.error and r.checkpoint:
            cands.append(selection.candidate(tid, m.get(study.metric), m.get(selection.TIE_BREAK), r))
    lines = [f"\nsweep summary — study {quote(study.name)}, {len(rows) - 1} trials"
             + (f", {n_err} failed" if n_err else "") + (f", {wall_s:.0f} s" if wall_s is not None else ""),
             _table(rows)]
    if failures:
        lines.append("failed trials:")
        lines.extend(failures)
    pick = selection.best(cands, study.mode)
    matrix = _matrix_summary(results, names, pick.trial_id if pick is not None else None)
    if matrix:
        lines.append(matrix)
    if pick is not None:
        named = f" = {names[pick.trial_id]}" if pick.trial_id in names else ""
        lines.append(f"best trial: {pick.trial_id}{named} ({study.metric} = {pick.value:.4f}, {study.mode}); "
                     f"checkpoint: {pick.item.checkpoint.path}")
        lines.append(f"  selection: {selection.rule_text(study.metric, study.mode)}")
    else:
        lines.append(f"best trial: none reported {study.metric} with a checkpoint")
    lines.extend(next_steps(study, tracking))
    return "\n".join(lines)


def _matrix_summary(results: Any, names: Mapping[str, str], best: str | None) -> str:
    """One row per trial: every matrix column (short names), worst, masking flags; the best trial marked."""
    from orchestrator import matrix_table

    entries, n = [], None
    for r in results:
        m = r.metrics or {}
        tid = str(m.get("trial_id") or getattr(r, "path", "?")).rsplit("/", 1)[-1]
        entries.append((names.get(tid, tid), m, tid == best))
        n = n or matrix_table.points_of(m)
    return matrix_table.render(entries, n=n)


def tracking_info(callbacks: list, tracking_uri: str, name: str) -> dict[str, Any]:
    """What the summary says about the sweep's MLflow record, from its tracking callback."""
    info: dict[str, Any] = {"tracking_uri": tracking_uri, "sweep_name": name}
    for cb in callbacks:
        if getattr(cb, "sweep_name", None) != name:
            continue
        outcome = cb.outcome
        names = dict(outcome.get("run_names") or {})  # trials finished before a resume included
        names.update({tid: cb.run_name_of(tid) for tid in getattr(cb, "_seen", {})})
        info.update(parent_run_id=cb.parent_run_id, experiment_id=cb.experiment_id, run_names=names)
        if outcome.get("best_run_id"):
            info["best_run_id"] = outcome["best_run_id"]
    return info


def _store_for_commands(uri: str) -> str:
    """The tracking URI as a command run from any directory needs it (a relative sqlite path made absolute)."""
    from orchestrator.store import sqlite_path

    if uri.startswith("sqlite:"):
        try:
            db = sqlite_path(uri)
        except Exception:
            return uri
        if db is not None and str(db) not in ("", ":memory:"):
            return f"sqlite:///{db.resolve()}" if not str(db).startswith("/") else f"sqlite:///{db}"
    return uri


MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui` serves here by default


def next_steps(study: Study, tracking: Mapping[str, Any]) -> list[str]:
    """Where to look next: the store, the parent run and its UI link, the exact commands."""
    import shlex

    uri = tracking.get("tracking_uri")
    if not uri:
        return []
    uri = _store_for_commands(uri)
    sweep = tracking.get("sweep_name")
    q = shlex.quote
    remote = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if remote else MLFLOW_UI
    lines = [f"tracking: {uri} (experiment {quote(study.name)})"]
    eid, pid = tracking.get("experiment_id"), tracking.get("parent_run_id")
    if pid:
        lines.append(f"  parent run: {pid}" + (f" — {base}/#/experiments/{eid}/runs/{pid}" if eid else ""))
    if tracking.get("best_run_id") and eid:
        lines.append(f"  best trial's run: {base}/#/experiments/{eid}/runs/{tracking['best_run_id']}")
    if not remote:
        lines.append(f"  browse:  mlflow ui --backend-store-uri {q(uri)}   (then open {MLFLOW_UI})")
    lines.append(f"  export:  l2lda-tune export --experiment {q(study.name)}"
                 + (f" --sweep {q(sweep)}" if sweep else "") + f" --out best/ --tracking-uri {q(uri)}")
    lines.append(f"  report:  l2lda-tune report --experiment {q(study.name)} --out reports/ --tracking-uri {q(uri)}")
    return lines
