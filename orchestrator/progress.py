"""The sweep's progress table, with the test matrix's progress (docs/architecture.md, progress).

A trial's finishing step runs the test robustness matrix, minutes during which Tune gets
no result and its table would show the trial frozen at its last report. Trials post where
their matrix stands to :class:`trainable.trainable.ProgressBoard`; :class:`MatrixCLIReporter`
is Tune's command-line reporter with one status line per trial in its matrix, e.g.

    test matrix L2LDATrainable_1c2f3_00000: 4/13 pgd100: 240/480 examples, 1 min 20 s elapsed, about 3 min left
"""
from __future__ import annotations

from typing import Any

from ray.tune import CLIReporter


def progress_lines(records: dict[str, dict[str, Any]], names: dict[str, str]) -> list[str]:
    """One line per trial in its test matrix: `records` trial id → Progress.to_dict()."""
    from trainable.evaluation import Progress

    lines = []
    for tid, rec in sorted(records.items(), key=lambda kv: names.get(kv[0], kv[0])):
        if tid not in names or rec.get("finished"):
            continue
        p = Progress(**{k: rec[k] for k in ("column", "index", "count", "done", "total", "unit", "elapsed", "left")},
                     work=int(rec.get("work", 0) or 0))  # forward passes inside the current batch
        lines.append(f"test matrix {names[tid]}: {p.line().removeprefix('matrix ')}")
    return lines


class MatrixCLIReporter(CLIReporter):
    """CLIReporter whose status block adds the test-matrix progress of the running trials."""

    BOARD_TIMEOUT_S = 2.0

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        super().report(trials, done, *sys_info, *self._matrix_lines(trials))

    def _matrix_lines(self, trials: list) -> list[str]:
        import ray

        from trainable.trainable import progress_board

        running = {t.trial_id: str(t) for t in trials if getattr(t, "status", None) == "RUNNING"}
        if not running:
            return []
        try:
            board = progress_board()
            if board is None:
                return []
            records = ray.get(board.get.remote(list(running)), timeout=self.BOARD_TIMEOUT_S)
        except Exception:  # the table never fails over a progress line
            return []
        return progress_lines(records, running)
