"""The defense contract: one suite over every registered defense, ours and plug-ins' (docs/extending.md).

Each defense's training batch stays in the ε-ball and [0, 1] with its labels repeated; its step
(a generator's included) leaves the classifier's ``.grad`` and mode alone, so the runner's step
on the defense's loss is the only thing that trains the classifier; a defense that keeps the
default loss (one CE over the batch) starts its batch with the clean batch, one with its own
loss need not; the loss is a finite scalar with the accuracy metrics; its state dict survives a
checkpoint written and read as our checkpoints are (``weights_only``), after which it continues
identically.
"""
from __future__ import annotations

import pytest
import torch

from trainable.config import TrialConfig
from trainable.data import DATASETS
from trainable.defenses import DEFENSES, Defense, build_defense
from trainable.models import build_classifier
from trainable.weights.checkpoint import load_state, save_state

SHAPE = DATASETS["mnist5k"].shape


def _make(name: str, seed: int = 0):
    cfg = TrialConfig.from_dict({"defense": name, "gen_width": 4, "T": 2, "z_dim": 2}).resolved()
    torch.manual_seed(seed)
    clf = build_classifier("lenet5", "mnist5k")
    return cfg, clf, build_defense(cfg, clf, SHAPE, 10, torch.device("cpu"))


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand((n, *SHAPE), generator=g), torch.arange(n) % 10


@pytest.mark.parametrize("name", DEFENSES.names())
def test_batch_stays_in_the_ball_and_leaves_the_classifier_alone(name):
    cfg, clf, defense = _make(name)
    x, y = _batch()
    clf.train()
    sentinel = {n: torch.full_like(p, 0.5) for n, p in clf.named_parameters()}
    for n, p in clf.named_parameters():
        p.grad = sentinel[n].clone()
    before = {k: v.clone() for k, v in clf.state_dict().items() if v.is_floating_point()}
    xt, yt, metrics = defense.batch(x, y, cfg.warmup)
    assert clf.training and all(m.training for m in clf.modules()), f"{name} changed the classifier's mode"
    for n, p in clf.named_parameters():
        assert torch.equal(p.grad, sentinel[n]), f"{name} touched the classifier's {n}.grad"
    for k, v in before.items():  # weights untouched (BN statistics may move: the classifier ran in train mode)
        if "running" not in k:
            assert torch.equal(clf.state_dict()[k], v), f"{name} changed the classifier's {k}"
    assert len(xt) % len(x) == 0 and torch.equal(yt, y.repeat(len(xt) // len(x)))
    if type(defense).classifier_loss is Defense.classifier_loss:  # the default CE reads its first rows as clean
        assert torch.equal(xt[:len(x)], x), "the training batch starts with the clean batch"
    assert torch.isfinite(xt).all() and xt.min() >= 0 and xt.max() <= 1
    for part in xt.split(len(x)):
        assert float((part - x).abs().max()) <= cfg.eps + 1e-6, f"{name} left the ε-ball"
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in metrics.values())
    assert (defense.generator is not None) == (DEFENSES[name].generator is not None)


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if DEFENSES[n].adversarial])
def test_classifier_loss_is_a_finite_scalar_that_trains_the_classifier(name):
    cfg, clf, defense = _make(name)
    x, y = _batch()
    xt, yt, _ = defense.batch(x, y, cfg.warmup)
    clf.train()
    loss, metrics = defense.classifier_loss(xt, yt, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss) and clf.training
    assert {"train/acc_clean", "train/acc_adv"} <= set(metrics)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in metrics.values())
    grads = torch.autograd.grad(loss, list(clf.parameters()), allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), f"{name}'s loss does not reach the classifier"


@pytest.mark.parametrize("name", DEFENSES.names())
def test_state_dict_round_trips_through_a_checkpoint(name, tmp_path):
    cfg, clf, defense = _make(name)
    x, y = _batch()
    defense.batch(x, y, cfg.warmup)  # optimiser state exists once a step was taken
    save_state(tmp_path, {"defense": defense.state_dict()}, cfg.to_dict(), {})
    state, _, _ = load_state(tmp_path)  # weights_only=True: a defense's state is tensors and plain data
    _, clf2, other = _make(name, seed=5)
    clf2.load_state_dict(clf.state_dict())
    other.load_state_dict(state["defense"])

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    a, b = dict(flat(defense.state_dict())), dict(flat(other.state_dict()))
    assert a.keys() == b.keys()
    for k in a:
        assert (torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]), f"{name}: {k} differs"
    torch.manual_seed(3)
    xa, _, _ = defense.batch(x, y, cfg.warmup + 1)
    torch.manual_seed(3)
    xb, _, _ = other.batch(x, y, cfg.warmup + 1)
    assert torch.equal(xa, xb), f"{name} does not continue identically after a restore"
