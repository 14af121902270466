"""What a Tune result becomes in MLflow (orchestrator/tracking/records.py): metric items, the
study's objectives, a failed trial's one-line reason."""
from __future__ import annotations

import numpy as np

from orchestrator.tracking import failure_reason, metric_items, objectives_from_spec


def test_metric_items_and_helpers():
    r = {"train/loss": 0.5, "val/natural": np.float32(0.25), "iteration": 20.0, "check/ok": True, "pid": 3,
         "training_iteration": 2, "time_total_s": 1.0, "node/pid": "123", "matrix": {"x": 1}, "hostname": "h"}
    assert metric_items(r) == {"train/loss": 0.5, "val/natural": 0.25, "iteration": 20.0, "check/ok": 1.0}
    assert objectives_from_spec({"search": {"metric": "val/worst", "mode": "max"}}) == [("val/worst", "max")]
    assert objectives_from_spec({}) == []

    class T:
        error_file = None
        error_msg = "Traceback (most recent call last):\n  File x\nValueError: bad lam"

    assert failure_reason(T()) == "ValueError: bad lam"
