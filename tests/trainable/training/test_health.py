"""The collapse check: a generator that stops fooling is flagged, logged and can stop its trial (docs/method.md)."""
from __future__ import annotations

import torch

from trainable.config import TrialConfig
from trainable.training.health import ACC_GAP, FLAG, REPORTS, CollapseCheck
from trainable.experiment.loop import Experiment
from trainable.generators.losses import clamp_erased

FOOLED = {"train/acc_clean": 0.95, "train/acc_adv": 0.40, "train/adv_spread": 0.05}
COLLAPSED = {"train/acc_clean": 0.95, "train/acc_adv": 0.95, "train/adv_spread": 0.0}


def test_fires_after_consecutive_collapsed_reports_only():
    check = CollapseCheck()
    for i in range(REPORTS - 1):
        assert not check.update(COLLAPSED, 100 * (i + 1))
    assert not check.update(FOOLED, 1000)  # one fooling report resets the streak
    fired = [check.update(COLLAPSED, 2000 + i) for i in range(REPORTS)]
    assert fired == [False] * (REPORTS - 1) + [True] and check.fired_at == 2000 + REPORTS - 1
    assert not check.update(COLLAPSED, 9999)  # fires once
    msg = check.message({**COLLAPSED, "train/clamp_erased": 0.9, "train/gen_grad_norm": 0.008})
    assert "\n" not in msg and "collapsed" in msg and "90%" in msg


def test_a_fooling_or_diverse_generator_never_fires():
    check = CollapseCheck()
    diverse = {**COLLAPSED, "train/adv_spread": 0.02}
    close_but_fooling = {**COLLAPSED, "train/acc_adv": COLLAPSED["train/acc_clean"] - 2 * ACC_GAP}
    for i in range(10):
        assert not check.update(FOOLED if i % 3 == 0 else diverse if i % 3 == 1 else close_but_fooling, i)
    assert not check.fired


def test_clamp_erased_share():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    delta = torch.tensor([[-0.3, 0.3, 0.3]])
    x_adv = (x + delta).clamp(0, 1)
    assert abs(float(clamp_erased(x, x_adv, delta)) - 2 / 3) < 1e-6
    assert float(clamp_erased(x, x, torch.zeros_like(x))) == 0.0


def _experiment(cache_dir, **kw):
    base = dict(dataset="mnist5k", defense="l2lda", warmup=20, iterations=60, batch_size=20, gen_width=4, T=2,
                steps_per_report=10, val_subset=20, test_subset=20, eval_columns=["natural"], threads=1,
                cache_dir=cache_dir, augment=False)
    lines: list[str] = []
    return Experiment(TrialConfig.from_dict({**base, **kw}), log=lines.append, use_cache=False), lines


def test_a_collapsed_generator_is_flagged_logged_and_stops_its_trial(cache_dir, monkeypatch):
    # A generator whose attack is erased (a frozen, saturated output): every adversarial report collapses.
    monkeypatch.setattr(CollapseCheck, "collapsed", staticmethod(lambda m: "train/acc_adv" in m))
    exp, lines = _experiment(cache_dir, stop_on_collapse=True)
    reports = []
    while not exp.done:
        reports.append(exp.step())
    assert [r[FLAG] for r in reports] == [0.0, 0.0] + [0.0] * (REPORTS - 1) + [1.0]
    assert exp.stopped_at == 20 + 10 * REPORTS and exp.iteration == exp.stopped_at
    assert sum("generator collapsed" in line for line in lines) == 1
    assert reports[-1]["matrix"]["profile"]["training"]["stopped_at"] == exp.stopped_at
    # the check's state is part of the checkpoint: a restored trial does not fire again
    state = exp.state_dict()
    exp2, _ = _experiment(cache_dir, stop_on_collapse=True)
    exp2.load_state_dict(state)
    assert exp2.health.fired_at == exp.stopped_at and exp2.done


def test_a_real_short_run_reports_health_metrics_and_stays_silent(cache_dir):
    exp, lines = _experiment(cache_dir)
    out = {}
    while not exp.done:
        out = exp.step()
    assert out[FLAG] == 0.0 and not any("collapsed" in line for line in lines)
    assert 0.0 <= out["train/clamp_erased"] <= 1.0 and out["train/gen_grad_norm"] > 0
