"""TRADES and MART (docs/method.md): their losses against the papers' formulas written out directly,
their inner maximisation's mode and budget, their source settings, and a short trial of each."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainable.config import TrialConfig
from trainable.data import DATASETS
from trainable.defenses import DEFENSES, build_defense
from trainable.defenses.trades_mart import mart_loss, trades_loss
from trainable.experiment.loop import Experiment
from trainable.models import build_classifier


def _logits(seed: int = 0, n: int = 6, k: int = 10):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 3, torch.randn(n, k, generator=g) * 3,
            torch.randint(0, k, (n,), generator=g))


def test_trades_loss_is_ce_plus_beta_batchmean_kl():
    clean, adv, y = _logits()
    loss, ce, kl = trades_loss(clean, adv, y, beta=6.0)
    p, q = F.softmax(clean, 1), F.softmax(adv, 1)
    direct_kl = sum(float((p[i] * (p[i].log() - q[i].log())).sum()) for i in range(len(y))) / len(y)
    direct_ce = -sum(float(F.log_softmax(clean, 1)[i, y[i]]) for i in range(len(y))) / len(y)
    assert math.isclose(float(ce), direct_ce, rel_tol=1e-5) and math.isclose(float(kl), direct_kl, rel_tol=1e-5)
    assert math.isclose(float(loss), direct_ce + 6.0 * direct_kl, rel_tol=1e-5)
    # TRADES' code: KLDivLoss(sum)(log_softmax(f(x_adv)), softmax(f(x))) / batch
    ref = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="sum") / len(y)
    assert torch.allclose(kl, ref, rtol=1e-5)


def test_mart_loss_is_boosted_ce_plus_weighted_kl():
    clean, adv, y = _logits(1)
    loss, bce, wkl = mart_loss(clean, adv, y, beta=6.0)
    p, q = F.softmax(clean, 1), F.softmax(adv, 1)
    n = len(y)
    direct_bce = direct_kl = 0.0
    for i in range(n):
        wrong = max(float(q[i, k]) for k in range(10) if k != int(y[i]))
        direct_bce += (-math.log(float(q[i, y[i]])) - math.log(1.0001 - wrong + 1e-12)) / n
        kl_i = float((p[i] * (p[i].log() - (q[i] + 1e-12).log())).sum())
        direct_kl += kl_i * (1.0000001 - float(p[i, y[i]])) / n
    assert math.isclose(float(bce), direct_bce, rel_tol=1e-5)
    assert math.isclose(float(wkl), direct_kl, rel_tol=1e-4)
    assert math.isclose(float(loss), direct_bce + 6.0 * direct_kl, rel_tol=1e-5)


def test_both_losses_reach_the_clean_logits_through_the_kl():
    """As in both sources, the clean prediction in the KL is not detached: its gradient trains f on x too."""
    for fn in (trades_loss, mart_loss):
        clean, adv, y = _logits(2)
        clean.requires_grad_(True)
        zero_ce = fn(clean, adv, y, 0.0)[0]
        (g0,) = torch.autograd.grad(zero_ce, clean)
        (g1,) = torch.autograd.grad(fn(clean, adv, y, 1.0)[0], clean)
        assert not torch.allclose(g0, g1)


class _ModeSpy(nn.Module):
    """A LeNet-5 that records its mode at every forward (TRADES/MART attack in eval mode, train in train mode)."""

    def __init__(self):
        super().__init__()
        self.net = build_classifier("lenet5", "mnist5k")
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_inner_maximisation_runs_in_eval_mode_and_the_loss_in_train_mode(name):
    cfg = TrialConfig.from_dict({"defense": name}).resolved()
    torch.manual_seed(0)
    clf = _ModeSpy()
    defense = build_defense(cfg, clf, DATASETS["mnist5k"].shape, 10, torch.device("cpu"))
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    clf.train()
    xt, yt, _ = defense.batch(x, y, 0)
    steps = DEFENSES[name].settings_for("mnist5k")["steps"]
    assert clf.modes and not any(clf.modes) and len(clf.modes) >= steps and clf.training
    assert float((xt[4:] - x).abs().max()) <= cfg.eps + 1e-6 and float((xt[4:] - x).abs().max()) > 0.1
    clf.modes.clear()
    loss, metrics = defense.classifier_loss(xt, yt, x, y)
    assert clf.modes == [True, True] and torch.isfinite(loss)
    assert {"train/acc_clean", "train/acc_adv"} <= set(metrics)


def test_settings_are_the_sources_per_dataset():
    t, m = DEFENSES["trades"], DEFENSES["mart"]
    assert t.settings_for("mnist5k") == {"steps": 40, "step_frac": 0.01 / 0.3, "beta": 1.0}
    assert t.settings_for("cifar10")["beta"] == 6.0 and t.settings_for("cifar10")["steps"] == 10
    assert m.settings_for("mnist")["beta"] == 6.0 and m.settings_for("cifar10")["steps"] == 10
    cfg = TrialConfig.from_dict({"defense": "trades"}).resolved()
    d = build_defense(cfg, build_classifier("lenet5", "mnist5k"), (1, 28, 28), 10, torch.device("cpu"))
    assert math.isclose(d.step, 0.01) and d.steps == 40 and d.beta == 1.0
    assert DEFENSES["pgd10_at"].settings_for("mnist") == {}


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_a_short_trial_trains_and_reports_finite_metrics(name, tmp_path):
    cfg = TrialConfig.from_dict({"defense": name, "warmup": 2, "iterations": 3, "batch_size": 16, "threads": 1,
                                 "steps_per_report": 5, "val_subset": 16, "test_subset": 16,
                                 "eval_columns": ["natural", "pgd10"], "cache_dir": str(tmp_path)})
    exp = Experiment(cfg, use_cache=False)
    before = [p.detach().clone() for p in exp.classifier.parameters()]
    out = exp.step()
    assert out.get("done") and exp.iteration == 5
    for k in ("train/loss", "train/acc_clean", "train/acc_adv", "train/loss_kl", "val/natural", "matrix/pgd10"):
        assert math.isfinite(out[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(before, exp.classifier.parameters()))


def test_resolved_pipeline_follows_the_sources():
    """No MNIST augmentation or clip in either source; TRADES' MNIST script decays at iteration 25,326, MART keeps its rate."""
    t = TrialConfig.from_dict({"dataset": "mnist5k", "defense": "trades"}).resolved()
    m = TrialConfig.from_dict({"dataset": "mnist5k", "defense": "mart"}).resolved()
    assert (t.augment, t.clf_grad_clip, m.augment, m.clf_grad_clip) == (False, 0.0, False, 0.0)
    assert t.lr_decay_at == (54 * 469 - 1000) / 100_000 and m.lr_decay_at is None
    assert TrialConfig.from_dict({"defense": "trades", "warmup": 300, "iterations": 300}).resolved().lr_decay_at is None
    assert TrialConfig.from_dict({"dataset": "cifar10", "defense": "mart"}).resolved().augment is True
    assert DEFENSES["trades"].iteration_ms({"dataset": "mnist"}) > DEFENSES["trades"].iteration_ms({"dataset": "cifar10"})
