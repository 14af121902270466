"""Gradient-masking flags and the accuracy-vs-ε curve (issue 5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainable.evaluation.checks import FLAGS, column_flags, eps_curve
from trainable.attacks.primitives import EvalContext
from trainable.evaluation import robustness_matrix


@pytest.fixture(scope="session")
def plain(trained):
    return trained("plain", iterations=800, warmup=0, eps=0.1)  # shared with test_runner


class Quantised(nn.Module):
    """Non-differentiable input quantisation (round has zero gradient): classic gradient masking."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(torch.round(x * 4) / 4)


class Saturated(nn.Module):
    """Logits ×1e4: CE saturates (zero gradient in float32), the scale-invariant DLR loss does not."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x) * 1e4


def _vec(n_ok: int, n: int = 100) -> np.ndarray:
    v = np.zeros(n, dtype=bool)
    v[:n_ok] = True
    return v


def _ctx(exp, **cfg):
    return EvalContext(cfg=exp.cfg.replace(**cfg), data=exp.data, device=exp.device, seed=0)


def test_column_flags_fire_on_constructed_results():
    ok = {"in_ball": True, "in_range": True, "finite": True, "max_linf": 0.3}
    correct = {"natural": _vec(100), "pgd10": _vec(50), "pgd100": _vec(60), "apgd_t": _vec(40),
               "square": _vec(30), "transfer/A/pgd10": _vec(90)}
    f = column_flags(correct, {"pgd10": ok, "square": {**ok, "in_ball": False}})
    assert f["more_steps_help"]["fired"] and f["more_steps_help"]["value"] == pytest.approx(0.10)
    assert f["pfree_gap"]["fired"] and "apgd_t" in f["pfree_gap"]["detail"]
    assert f["blackbox_beats_whitebox"]["fired"]
    assert f["perturbation"]["fired"] and "square" in f["perturbation"]["detail"]
    # Consistent results: nothing fires (and flags whose columns did not run are absent).
    calm = {"natural": _vec(100), "pgd10": _vec(50), "pgd100": _vec(49), "apgd_t": _vec(47),
            "square": _vec(55), "transfer/A/pgd10": _vec(90)}
    f = column_flags(calm, {"pgd10": ok})
    assert not any(v["fired"] for v in f.values())
    assert "unbounded_pgd" not in f
    assert column_flags({"natural": _vec(100), "pgd10": _vec(5)}, {}) == {}


def test_plain_model_raises_no_flag(plain):
    x, y = plain.data.test_x[:100], plain.data.test_y[:100]
    res = robustness_matrix(plain.classifier, x, y, columns=["pgd10", "pgd100", "apgd_ce", "square"], eps=0.3,
                            ctx=_ctx(plain, square_queries=300))
    m = res.metrics
    assert max(m["matrix/pgd10"], m["matrix/pgd100"], m["matrix/apgd_ce"]) <= 0.05, m
    assert set(res.checks["masking"]) == set(FLAGS)
    assert all(m[f"check/{f}"] == 0.0 for f in FLAGS), res.checks["masking"]


def test_quantised_model_is_flagged(plain):
    model = Quantised(plain.classifier.eval())
    x, y = plain.data.test_x[:60], plain.data.test_y[:60]
    res = robustness_matrix(model, x, y, columns=["pgd10", "square"], eps=0.3, ctx=_ctx(plain, square_queries=150))
    assert res.metrics["check/blackbox_beats_whitebox"] == 1.0, res.checks["masking"]
    assert res.metrics["check/unbounded_pgd"] == 1.0, res.checks["masking"]
    assert res.metrics["check/perturbation"] == 0.0


def test_saturated_logits_open_a_parameter_free_gap(plain):
    model = Saturated(plain.classifier.eval())
    x, y = plain.data.test_x[:40], plain.data.test_y[:40]
    res = robustness_matrix(model, x, y, columns=["pgd100", "apgd_t"], eps=0.3, ctx=_ctx(plain))
    assert res.metrics["matrix/apgd_t"] < res.metrics["matrix/pgd100"] - 0.05
    assert res.metrics["check/pfree_gap"] == 1.0, res.checks["masking"]


def test_eps_curve_falls_to_zero_and_lives_in_the_profile(plain):
    model = plain.classifier.eval()
    x, y = plain.data.test_x[:60], plain.data.test_y[:60]
    curve = eps_curve(model, x, y, [0.05, 0.3, 1.0], steps=10, generator=torch.Generator().manual_seed(0))
    acc = [p["accuracy"] for p in curve]
    with torch.no_grad():
        nat = float((model(x).argmax(1) == y).float().mean())
    assert acc[0] <= nat and acc[1] <= acc[0] and acc[2] == 0.0
    with pytest.raises(ValueError, match="eps_curve"):
        eps_curve(model, x, y, [0.0])
    res = robustness_matrix(model, x[:20], y[:20], columns=["fgsm"], eps=0.3,
                            ctx=_ctx(plain, eps_curve=[0.1, 1.0]))
    assert [p["eps"] for p in res.profile["eps_curve"]] == [0.1, 1.0]
    quiet = robustness_matrix(model, x[:20], y[:20], columns=["fgsm"], eps=0.3, ctx=_ctx(plain), masking=False)
    assert "masking" not in quiet.checks and not any(k.startswith("check/") for k in quiet.metrics)
