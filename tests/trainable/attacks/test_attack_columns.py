"""The column contract: one suite over every registered column of the robustness matrix, ours and
plug-ins' (docs/extending.md). A new column is tested by registering it.

Every column keeps the ε-ball and [0, 1], restores every module's mode, leaves parameter ``.grad``
alone, raises the loss on clean-correct points, is deterministic under a seed and never leaves
more points correct than clean input. Its entry says which suite runs it (``test``): ``fast`` in
the default run, ``slow`` under ``-m slow``, ``own`` in its own test file (natural, transfer).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainable.attacks import COLUMNS, pgd, preserve_mode
from trainable.attacks.primitives import EvalContext
from trainable.evaluation import prepare_column, robustness_matrix

FAST = [e.name for e in COLUMNS.values() if e.test == "fast"]
SLOW = [e.name for e in COLUMNS.values() if e.test == "slow"]


@pytest.fixture(scope="module")
def setup(trained):
    exp = trained("pgd10_at", iterations=300, warmup=300, augment=False)  # shared with test_runner
    idx = torch.arange(0, 1000, 20)  # 50 fixed test points, all classes
    x, y = exp.data.test_x[idx], exp.data.test_y[idx]
    return exp, x, y


def _run(column, exp, x, y, seed=0):
    # Generator columns train their attacker first; 60 steps make it a (weak) attack at this scale.
    cfg = exp.cfg.replace(gen_attack_steps=60) if COLUMNS[column].kind == "generator" else exp.cfg
    ctx = EvalContext(cfg=cfg, data=exp.data, device=exp.device, generator=exp.defense.generator, seed=seed)
    torch.manual_seed(seed)
    outs = []
    for name, fn, budget in prepare_column(column, exp.classifier, ctx):
        outs.append(fn(exp.classifier, x, y, eps=exp.cfg.eps, generator=torch.Generator().manual_seed(seed)))
    return outs


def _suite(column, setup):
    exp, x, y = setup
    model = exp.classifier
    model.train()  # the attack must restore whatever mode it found
    sentinel = {n: torch.full_like(p, 0.123) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    outs = _run(column, exp, x, y)
    assert model.training and all(m.training for m in model.modules())
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[n]), f"{column} touched {n}.grad"
        p.grad = None
    eps = exp.cfg.eps
    with torch.no_grad(), preserve_mode(model, False):
        clean_ok = model(x).argmax(1) == y
    for x_adv in outs:
        assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
        assert float((x_adv - x).abs().max()) <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad(), preserve_mode(model, False):
            ce_adv = F.cross_entropy(model(x_adv[clean_ok]), y[clean_ok])
            ce_clean = F.cross_entropy(model(x[clean_ok]), y[clean_ok])
        # An attack must actually attack: it raises the loss on the points correct on clean input
        # (generator columns trained for a few steps in this suite may not yet flip any of them).
        assert ce_adv > ce_clean, f"{column} did not raise the loss ({ce_adv:.4f} <= {ce_clean:.4f})"
    # Accuracy under attack, as the matrix reports it, never exceeds clean accuracy.
    ctx = EvalContext(cfg=exp.cfg, data=exp.data, device=exp.device, generator=exp.defense.generator, seed=0)
    res = robustness_matrix(model, x, y, columns=["natural", column], eps=eps, ctx=ctx, masking=False)
    for k, v in res.metrics.items():
        if k not in ("matrix/natural", "matrix/worst") and not k.startswith("check/"):
            assert v <= res.metrics["matrix/natural"], f"{k} above clean accuracy"
    again = _run(column, exp, x, y)
    for a, b in zip(outs, again):
        assert torch.equal(a, b), f"{column} is not seeded-deterministic"


@pytest.mark.parametrize("column", FAST)
def test_attack_suite(column, setup):
    _suite(column, setup)


@pytest.mark.slow
@pytest.mark.parametrize("column", SLOW)
def test_attack_suite_slow(column, setup):
    _suite(column, setup)


def test_registry_has_the_paper_columns():
    assert {"fgsm", "pgd10", "pgd100", "cw100", "cw1000"} <= set(COLUMNS)
    assert COLUMNS["pgd10"].budget["step"] == "eps/4" and COLUMNS["pgd100"].budget["step"] == "eps/12"


def test_the_plugin_column_is_in_the_fast_suite():
    # tests/plugins/l2lda_tune_toy registers `rfgsm` through an entry point: the suite above runs it.
    assert "rfgsm" in FAST and COLUMNS["rfgsm"].kind == "gradient"


def test_keep_best_never_loses_to_the_last_iterate(setup):
    exp, x, y = setup
    m = exp.classifier
    a = pgd(m, x, y, eps=0.3, step=0.1, steps=20, keep_best=True, early_stop=False,
            generator=torch.Generator().manual_seed(1))
    b = pgd(m, x, y, eps=0.3, step=0.1, steps=20, keep_best=False, early_stop=False,
            generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), preserve_mode(m, False):
        fooled_a = m(a).argmax(1) != y
        fooled_b = m(b).argmax(1) != y
    assert bool((fooled_a | ~fooled_b).all())  # every point the last iterate fooled, keep-best fooled too


def test_early_stop_gives_the_same_accuracy(setup):
    exp, x, y = setup
    m = exp.classifier
    kw = dict(eps=0.3, step=0.025, steps=40, keep_best=True, generator=None)
    torch.manual_seed(3)
    a = pgd(m, x, y, early_stop=True, **kw)
    torch.manual_seed(3)
    b = pgd(m, x, y, early_stop=False, **kw)
    with torch.no_grad(), preserve_mode(m, False):
        assert torch.equal(m(a).argmax(1) == y, m(b).argmax(1) == y)


def test_matrix_structure_and_worst(setup):
    exp, x, y = setup
    ctx = EvalContext(cfg=exp.cfg, data=exp.data, device=exp.device, seed=0)
    res = robustness_matrix(exp.classifier, x, y, columns=["natural", "fgsm", "pgd10"], eps=exp.cfg.eps, ctx=ctx)
    c = res.correct
    assert set(c) == {"natural", "fgsm", "pgd10"} and all(v.shape == (len(y),) for v in c.values())
    worst = c["natural"] & c["fgsm"] & c["pgd10"]
    assert res.metrics["matrix/worst"] == pytest.approx(worst.mean())
    assert res.metrics["matrix/min"] == pytest.approx(min(c["fgsm"].mean(), c["pgd10"].mean()))
    for col in ("fgsm", "pgd10"):  # a point wrong on clean input is never counted robust
        assert not np.any(c[col] & ~c["natural"])
    assert res.checks["perturbation_ok"] and res.profile["budgets"]["pgd10"]["steps"] == 10
