"""Where a robustness matrix stands (docs/architecture.md, progress): the :class:`Progress` record
and the tracker that plans each column's cost, calibrates it by the time spent, and reports."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from trainable.attacks.registry import COLUMNS, column_steps


def training_steps(col: str, cfg: Any) -> float:
    """Example input-gradient steps spent training the column's attacker or surrogates (its registry
    entry's ``training``; rough). Per attacked example: :func:`trainable.attacks.column_steps`."""
    return COLUMNS[col].training_steps(cfg)


@dataclass
class Progress:
    """Where a robustness matrix stands: the column being run, how far, time spent and left."""

    column: str  # the (sub-)column being prepared or run
    index: int  # 1-based position among the matrix's columns
    count: int  # columns in the matrix (natural included)
    done: int  # examples attacked, or training steps done
    total: int
    unit: str  # "examples" or "training steps"
    elapsed: float  # seconds since the matrix started
    left: float | None  # estimated seconds until the matrix is done (None: nothing to go by yet)
    finished: bool = False
    work: int = 0  # examples through the classifier so far in the batch being attacked (moves inside a batch)

    def line(self) -> str:
        from trainable.text import duration

        if self.finished:
            return f"matrix done: {self.count} columns in {duration(self.elapsed)}"
        work = f" (this batch: {self.work:,} forward passes)" if self.work else ""
        text = (f"matrix {self.index}/{self.count} {self.column}: {self.done}/{self.total} {self.unit}{work}, "
                f"{duration(self.elapsed)} elapsed")
        return text + (f", about {duration(self.left)} left" if self.left is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("column", "index", "count", "done", "total", "unit", "elapsed", "left",
                                              "finished", "work")}


class _Tracker:
    """Progress of one matrix: planned cost per column (COLUMN_STEPS), calibrated by the time spent
    so far, reported to ctx.progress (at most once a second between a stage's first and last
    record) and as a log line every LOG_EVERY seconds of a long column — inside a batch too: the
    classifier's forward passes move it (docs/architecture.md, progress)."""

    LOG_EVERY = 10.0
    SINK_EVERY = 1.0

    def __init__(self, ctx: Any, columns: list[str], n_attacked: int, t0: float,
                 batch_size: int = 500) -> None:
        self.ctx, self.t0 = ctx, t0
        self.n_attacked, self.batch_size = max(n_attacked, 1), batch_size
        self.columns = ["natural", *[c for c in columns if c != "natural"]]
        cols = tuple(self.columns)
        self.plan = {c: (training_steps(c, ctx.cfg), column_steps(c, ctx.cfg, cols) * n_attacked) for c in cols}
        self.plan["natural"] = (0.0, column_steps("natural", ctx.cfg) * n_attacked)
        self.total = sum(a + b for a, b in self.plan.values()) or 1.0
        self.finished_units = self.plan["natural"][1]
        self.col, self.index, self.col_units = "natural", 1, 0.0
        self.last_sink = self.last_log = 0.0

    def start(self, col: str) -> None:
        self.col, self.index, self.col_units = col, self.columns.index(col) + 1, 0.0
        self.last_log = time.perf_counter()

    def _left(self, now: float) -> float | None:
        done = self.finished_units + self.col_units
        if done <= 0 or now - self.t0 <= 0:
            return None
        return max(0.0, (now - self.t0) * (self.total - done) / done)

    def work(self, name: str, done: int, total: int, forwards: int) -> None:
        """Inside a batch (called at every classifier forward: cheap unless a report is due)."""
        now = time.perf_counter()
        if not ((self.ctx.progress is not None and now - self.last_sink >= self.SINK_EVERY)
                or now - self.last_log >= self.LOG_EVERY):
            return
        # forward passes per attacked example ≈ its planned steps (an upper bound: attacks stop early)
        per_example = max(self.plan.get(self.col, (0.0, 0.0))[1] / self.n_attacked, 1.0)
        in_batch = min(forwards / per_example, 0.9 * min(self.batch_size, max(total - done, 0)))
        self.update(name, done, total, "examples", partial=in_batch, work=forwards)

    def update(self, name: str, done: int, total: int, unit: str, *, boundary: bool = False,
               partial: float = 0.0, work: int = 0) -> None:
        train_u, attack_u = self.plan.get(self.col, (0.0, 0.0))
        frac = (done + partial) / total if total else 1.0
        if unit == "examples":
            self.col_units = train_u + attack_u * frac
        else:
            self.col_units = train_u * frac
        now = time.perf_counter()
        p = Progress(name, self.index, len(self.columns), int(done), int(total), unit, now - self.t0, self._left(now),
                     work=int(work))
        if self.ctx.progress is not None and (boundary or done >= total or now - self.last_sink >= self.SINK_EVERY):
            self.last_sink = now
            self.ctx.progress(p)
        if not boundary and now - self.last_log >= self.LOG_EVERY:
            self.last_log = now
            self.ctx.log(p.line())

    def finish_column(self) -> None:
        self.finished_units += sum(self.plan.get(self.col, (0.0, 0.0)))
        self.col_units = 0.0

    def status(self) -> str:
        """'; 3 min 5 s elapsed, about 2 min left' for the line that ends a column."""
        from trainable.text import duration

        now = time.perf_counter()
        left = self._left(now)
        return f"; {duration(now - self.t0)} elapsed" + (f", about {duration(left)} left" if left is not None else "")

    def done(self) -> None:
        if self.ctx.progress is not None:
            now = time.perf_counter()
            self.ctx.progress(Progress("", len(self.columns), len(self.columns), 0, 0, "", now - self.t0, 0.0,
                                       finished=True))
