"""The experiment: one trial trained, validated and evaluated in a plain Python process, no Ray needed.

``Experiment`` is the :class:`~trainable.training.trainer.Trainer` (training, checkpoints) plus
evaluation: :meth:`Experiment.step` is what Ray Tune's ``Trainable.step`` calls —
``steps_per_report`` iterations, then cheap validation metrics on a fixed validation subset;
the step that finishes training also returns the test robustness matrix.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from trainable.attacks.primitives import EvalContext
from trainable.config import TrialConfig
from trainable.evaluation.matrix import MatrixResult, robustness_matrix
from trainable.training.trainer import Trainer


class Experiment(Trainer):
    """One trial: build from a config, train, validate, evaluate, checkpoint."""

    def __init__(self, cfg: TrialConfig, log: Callable[[str], None] | None = None, use_cache: bool = True) -> None:
        super().__init__(cfg, log=log, use_cache=use_cache)
        # Where the test matrix reports its progress (a Ray trial posts it to the driver's table).
        self.matrix_progress: Callable[[Any], None] | None = None

    def _ctx(self) -> EvalContext:
        return EvalContext(cfg=self.cfg, data=self.data, device=self.device, generator=self.defense.generator,
                           seed=self.cfg.seed, log=self.log)

    def validate(self) -> dict[str, float]:
        """Natural and cheap-attack accuracy on the fixed validation subset (what selection reads)."""
        x, y = self.data.val_x[self.val_idx], self.data.val_y[self.val_idx]
        res = robustness_matrix(self.classifier, x, y, columns=self.cfg.val_columns, eps=self.cfg.eps,
                                ctx=self._ctx(), batch_size=self.cfg.eval_batch_size, masking=False)
        out = {}
        for k, v in res.metrics.items():
            if k.startswith("matrix/") and k != "matrix/min":
                out["val/" + k.split("/", 1)[1]] = v
        return out

    def robustness_matrix(self, columns: tuple[str, ...] | None = None) -> MatrixResult:
        """The test robustness matrix on the fixed test indices (never an objective)."""
        idx = torch.as_tensor(self.test_idx, device=self.device)
        x, y = self.data.test_x[idx], self.data.test_y[idx]
        ctx = self._ctx()
        ctx.progress = self.matrix_progress
        res = robustness_matrix(self.classifier, x, y, columns=columns or self.cfg.eval_columns, eps=self.cfg.eps,
                                ctx=ctx, indices=self.test_idx, batch_size=self.cfg.eval_batch_size)
        res.profile["split"] = "test"
        res.profile["dataset"] = self.cfg.dataset
        res.profile.update({k: getattr(self.cfg, k) for k in ("gen_attack_steps", "gen_attack_samples", "square_queries")})
        # How the classifier was trained, resolved (docs/method.md): tables built from these
        # profiles say when their rows used different pipelines.
        res.profile["training"] = {k: getattr(self.cfg, k) for k in
                                   ("defense", "augment", "clf_grad_clip", "lr_decay_at", "warmup", "iterations",
                                    "batch_size", "lr", "input_norm", "gen_objective")}
        if self.stopped_at is not None:
            res.profile["training"]["stopped_at"] = self.stopped_at  # stop_on_collapse ended training early
        return res

    def step(self) -> dict[str, Any]:
        """One reporting step: train, validate; the finishing step adds the robustness matrix."""
        start = self.iteration
        out: dict[str, Any] = self.train(self.cfg.steps_per_report)
        self.check_health(out, start)
        out.update(self.validate())
        self.history.append({k: v for k, v in out.items() if isinstance(v, float)})
        if self.done:
            t0 = time.perf_counter()
            res = self.robustness_matrix()
            out.update(res.metrics)
            out["time/matrix_s"] = time.perf_counter() - t0
            out["matrix"] = res.to_dict()
            out["done"] = True
        out["time/train_total_s"] = self.train_time
        return out


def run(cfg: TrialConfig, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train one trial to the end in this process and return its last report (with the matrix)."""
    exp = Experiment(cfg, log=log)
    last: dict[str, Any] = {}
    while not exp.done:
        last = exp.step()
        if log:
            shown = {k: round(v, 4) for k, v in last.items() if k.startswith(("val/", "train/loss"))}
            log(f"it {exp.iteration}/{exp.cfg.total_iterations} {shown} {last['time/iter_s'] * 1e3:.1f} ms/it")
    if not last:  # nothing to train (iterations 0 and warm-up cached): still evaluate
        last = {**exp.validate()}
        res = exp.robustness_matrix()
        last.update(res.metrics)
        last["matrix"] = res.to_dict()
    return last
