"""The sweep's artifacts (orchestrator/artifacts.py): the Pareto front, the sweep table's column
types, the Pareto plot."""
from __future__ import annotations

from orchestrator import artifacts as art


def test_pareto_front_and_sweep_table_types(tmp_path):
    assert sorted(art.pareto_front([(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (float("nan"), 1.0)])) == [0, 1, 3]
    rows = [{"trial_id": "a", "lr": "0.01", "T": "10", "recursive": "True", "matrix/worst": 0.5},
            {"trial_id": "b", "lr": 0.1, "T": 5, "recursive": False}]
    t = art.sweep_table(rows)
    assert t.column_names == ["trial_id", "T", "lr", "recursive", "matrix/worst"]
    assert [str(t.schema.field(c).type) for c in t.column_names] == ["string", "int64", "double", "bool", "double"]
    p = art.write_pareto([{"matrix/natural": 0.9, "matrix/worst": 0.5}], tmp_path / "p.png")
    assert p.read_bytes()[:4] == b"\x89PNG"
