"""The report's input (docs/architecture.md, checkpoints and export): one record per finished trial
of a study in MLflow — params (the flat TrialConfig fields), metrics ``matrix/<col>``,
``transfer/<X>/<attack>`` and ``check/<flag>``, and from the artifacts the test-point count, the
ε-curve, the masking flags' numbers (``robustness_matrix.json``) and the per-example correctness
vectors (``robustness_matrix.parquet``) the paired tests need.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from orchestrator.artifacts import MATRIX_JSON, MATRIX_PARQUET, read_matrix_parquet
from trainable.text import Clock, quote


class ReportError(FileNotFoundError):
    """The study cannot be reported (unknown experiment, no finished trial); one line."""


# ------------------------------------------------------------------ reading MLflow
def _runs(client: Any, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"experiment {quote(experiment)}: not found in the tracking store")
    out, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.role = 'trial' and attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            break
    return out


def _matrix_json(client: Any, run_id: str, tmp: Path) -> dict:
    try:
        p = client.download_artifacts(run_id, MATRIX_JSON, str(tmp / run_id))
        return json.loads(Path(p).read_text())
    except Exception:  # a run without the artifact still has its metrics
        return {}


def _matrix_vectors(client: Any, run_id: str, tmp: Path) -> dict | None:
    """The run's per-example correctness vectors (robustness_matrix.parquet), or None."""
    try:
        p = client.download_artifacts(run_id, MATRIX_PARQUET, str(tmp / run_id))
        return read_matrix_parquet(p)
    except Exception:  # older runs, or a matrix that was not rendered: no paired test for them
        return None


def collect(client: Any, experiment: str | Sequence[str],
            log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One record per finished trial of the experiment(s): params, metrics, test-point count,
    masking flags, ε-curve, and ``matrix`` — the correctness vectors and test indices for paired
    comparisons (or None). Several experiments are reported as one (their rows pair when they
    ran on the same test points). `log` hears a progress line while the runs' matrices download."""
    clock = Clock(log, "report")
    clock.current = "reading the finished trial runs"
    with clock.heartbeat():  # a line at least every 10 s, however slow the store
        return _collect(client, experiment, clock)


def _collect(client: Any, experiment: str | Sequence[str], clock: Clock) -> list[dict[str, Any]]:
    names = [experiment] if isinstance(experiment, str) else list(dict.fromkeys(experiment))
    runs = [r for name in names for r in _runs(client, name)]
    clock.stage(f"{len(runs)} finished trial runs in {', '.join(quote(n) for n in names)}; downloading their matrices")
    recs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(runs, 1):
            if i > 1:
                clock.tick("matrices downloaded", i - 1, len(runs))
            mj = _matrix_json(client, r.info.run_id, Path(tmp))
            metrics = dict(r.data.metrics)
            if not any(k.startswith("matrix/") for k in metrics) and mj.get("metrics"):
                metrics.update(mj["metrics"])
            if not any(k.startswith("matrix/") for k in metrics):
                continue  # finished without a matrix (e.g. stopped early by the scheduler)
            profile = mj.get("profile", {}) or {}
            n = int(mj.get("n") or profile.get("n") or 0)
            recs.append({"run_id": r.info.run_id, "name": r.data.tags.get("trial_name", r.info.run_id),
                         "params": dict(r.data.params), "device": r.data.tags.get("device"), "metrics": metrics, "n": n, "eps": profile.get("eps"),
                         "masking": (mj.get("checks", {}) or {}).get("masking", {}),
                         "eps_curve": profile.get("eps_curve") or [],
                         "matrix": _matrix_vectors(client, r.info.run_id, Path(tmp))})
        if runs:
            clock.tick("matrices downloaded", len(runs), len(runs))
    return recs
