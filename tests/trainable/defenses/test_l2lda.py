"""L2L-DA / L2L* defenses (Algorithm 1), the generator-based matrix columns and Figure 2's data."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainable.config import TrialConfig
from trainable.attacks.primitives import EvalContext
from trainable.generators.nets import Generator, L2LStarGenerator
from trainable.defenses.l2lda import L2LDADefense, L2LStarDefense

TINY = dict(dataset="mnist5k", gen_width=8, T=3, batch_size=32, warmup=20, iterations=20, gen_attack_steps=20,
            test_subset=64, gen_attack_samples=2, val_subset=64, steps_per_report=20)


@pytest.fixture(scope="session")
def lenet(trained):
    """One small PGD-AT LeNet-5 on mnist5k, trained once per session (shared with test_attacks)."""
    return trained("pgd10_at", iterations=150)


def _cfg(**kw) -> TrialConfig:
    return TrialConfig.from_dict({**TINY, **kw}).resolved()


def _frozen_copy(exp):
    clf = copy.deepcopy(exp.classifier)
    for p in clf.parameters():
        p.grad = None
    return clf


def _count_forwards(gen):
    calls = []
    gen.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


def test_l2lda_batch_is_algorithm_1(lenet):
    cfg = _cfg(defense="l2lda")
    clf = _frozen_copy(lenet).train()
    torch.manual_seed(0)
    d = L2LDADefense(cfg, clf, (1, 28, 28), 10, torch.device("cpu"))
    calls = _count_forwards(d.generator)
    x, y = lenet.data.train_x[:16], lenet.data.train_y[:16]
    before_clf = [p.detach().clone() for p in clf.parameters()]
    before_gen = [p.detach().clone() for p in d.generator.parameters()]
    xt, yt, m = d.batch(x, y, 0)
    assert xt.shape == (48, 1, 28, 28) and torch.equal(yt, torch.cat([y, y, y])) and torch.equal(xt[:16], x)
    assert not xt.requires_grad
    assert (xt[16:] - torch.cat([x, x])).abs().max() <= cfg.eps + 1e-6 and xt.min() >= 0 and xt.max() <= 1
    assert set(m) == {"train/loss_cls", "train/loss_div", "train/adv_spread", "train/gen_grad_norm",
                      "train/clamp_erased"} and all(v.dim() == 0 for v in m.values())
    assert float(m["train/gen_grad_norm"]) > 0 and 0 <= float(m["train/clamp_erased"]) <= 1
    assert len(calls) == cfg.T, "z fixed, doubled batch: one generator forward per recursion step"
    assert clf.training, "classifier mode restored"
    assert all(p.grad is None for p in clf.parameters()), "the classifier receives no gradient from the generator"
    assert all(torch.equal(a, b) for a, b in zip(before_clf, clf.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_gen, d.generator.parameters())), "generator stepped"
    assert float(m["train/loss_div"]) > 0, "z1 ≠ z2 give different perturbations"
    # state round trip (generator + optimiser)
    d2 = L2LDADefense(cfg, clf, (1, 28, 28), 10, torch.device("cpu"))
    d2.load_state_dict(d.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(d.generator.state_dict().values(), d2.generator.state_dict().values()))
    assert d2.optimizer.state_dict()["state"].keys() == d.optimizer.state_dict()["state"].keys()


def test_ablation_flags_reach_the_defense(lenet):
    x, y = lenet.data.train_x[:8], lenet.data.train_y[:8]
    one_shot = L2LDADefense(_cfg(defense="l2lda", recursive=False), _frozen_copy(lenet), (1, 28, 28), 10,
                            torch.device("cpu"))
    calls = _count_forwards(one_shot.generator)
    xt, _, _ = one_shot.batch(x, y, 0)
    assert len(calls) == 1
    assert (xt[8:] - torch.cat([x, x])).abs().max() > _cfg().eps_step + 1e-4, "one-shot steps by ε"
    flags = L2LDADefense(_cfg(defense="l2lda", use_delta=False, use_label=False, grad_norm=False, gen_width=4),
                         _frozen_copy(lenet), (1, 28, 28), 10, torch.device("cpu")).generator
    assert not flags.use_delta and not flags.use_label and not flags.grad_norm and flags.width == 4
    assert _cfg(defense="l2lda", diversity=False).lam_value == 0.0


def test_l2l_star_defense_one_step(lenet):
    cfg = _cfg(defense="l2l_star")
    clf = _frozen_copy(lenet)
    d = L2LStarDefense(cfg, clf, (1, 28, 28), 10, torch.device("cpu"))
    assert isinstance(d.generator, L2LStarGenerator)
    calls = _count_forwards(d.generator)
    x, y = lenet.data.train_x[:8], lenet.data.train_y[:8]
    xt, yt, m = d.batch(x, y, 0)
    assert len(calls) == 1 and xt.shape == (16, 1, 28, 28) and set(m) == {"train/loss_cls", "train/gen_grad_norm", "train/clamp_erased"}
    assert (xt[8:] - x).abs().max() <= cfg.eps + 1e-6
    assert all(p.grad is None for p in clf.parameters())


def _ctx(exp, cfg, generator=None):
    return EvalContext(cfg=cfg, data=exp.data, device=torch.device("cpu"), generator=generator, seed=3)


@pytest.mark.parametrize("column", ["l2lda", "advgan", "gap"])
def test_generator_attacks_keep_ball_range_and_are_seeded(lenet, column):
    from trainable.attacks import generative as genattacks

    cfg = _cfg(defense="pgd10_at", gen_attack_steps=3)
    clf = _frozen_copy(lenet).train()
    rng_before = torch.get_rng_state()
    prep = getattr(genattacks, f"prepare_{column}")(clf, _ctx(lenet, cfg))
    assert torch.equal(rng_before, torch.get_rng_state()), "the trial's RNG is untouched"
    (name, fn, budget), = prep
    assert name == column and budget["train_steps"] == 3 and budget["width"] == 8
    assert clf.training and all(p.grad is None for p in clf.parameters())
    x, y = lenet.data.test_x[:24].clone(), lenet.data.test_y[:24]
    x[:4] = 0.0
    for eps in (0.3, 0.1):
        a = fn(clf, x, y, eps=eps, generator=torch.Generator().manual_seed(5))
        b = fn(clf, x, y, eps=eps, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b), "seeded-deterministic"
        assert (a - x).abs().max() <= eps + 1e-6 and a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    assert all(p.grad is None for p in clf.parameters())
    # preparing twice with the same seed gives the same attacker
    (_, fn2, _), = getattr(genattacks, f"prepare_{column}")(clf, _ctx(lenet, cfg))
    same = torch.Generator().manual_seed(5)
    assert torch.equal(fn2(clf, x, y, eps=0.3, generator=same), fn(clf, x, y, eps=0.3, generator=torch.Generator().manual_seed(5)))


def test_l2lda_column_fine_tunes_the_trial_generator(lenet):
    from trainable.attacks.generative import prepare_l2lda

    cfg = _cfg(defense="l2lda", gen_attack_steps=2)
    own = Generator((1, 28, 28), 10, width=8)
    snapshot = copy.deepcopy(own.state_dict())
    (_, _, budget), = prepare_l2lda(_frozen_copy(lenet), _ctx(lenet, cfg, own))
    assert budget["fine_tuned"] is True and budget["samples"] == 2 and budget["T"] == 3
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in snapshot.items()), "the trial's generator is a copy"
    (_, _, budget), = prepare_l2lda(_frozen_copy(lenet), _ctx(lenet, cfg, L2LStarGenerator((1, 28, 28), width=8)))
    assert budget["fine_tuned"] is False


def test_fine_tuned_l2lda_attack_beats_untrained_generator(lenet):
    from trainable.attacks.generative import prepare_l2lda

    clf = _frozen_copy(lenet)
    x, y = lenet.data.test_x[:200], lenet.data.test_y[:200]

    def attack_loss(steps: int) -> float:
        (_, fn, _), = prepare_l2lda(clf, _ctx(lenet, _cfg(defense="pgd10_at", gen_attack_steps=steps)))
        xa = fn(clf, x, y, eps=0.3, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return float(F.cross_entropy(clf(xa), y))

    untrained, tuned = attack_loss(0), attack_loss(40)
    assert tuned > untrained + 0.1, (untrained, tuned)


def test_joint_training_end_to_end_with_full_matrix(cache_dir, tmp_path):
    from trainable.experiment.loop import Experiment, run

    cfg = TrialConfig.from_dict({**TINY, "defense": "l2lda", "cache_dir": cache_dir, "val_columns": ["natural"],
                                 "eval_columns": ["natural", "fgsm", "l2lda", "advgan", "gap"]})
    out = run(cfg, log=None)
    assert out["done"]
    for k in ("matrix/l2lda", "matrix/advgan", "matrix/gap", "matrix/worst", "train/loss_cls", "train/loss_div"):
        assert k in out and np.isfinite(out[k]), k
    mat = out["matrix"]
    assert mat["checks"]["perturbation_ok"]
    assert set(mat["correct"]) == {"natural", "fgsm", "l2lda", "advgan", "gap"}
    assert all(len(v) == 64 for v in mat["correct"].values())
    budgets = mat["profile"]["budgets"]
    assert budgets["l2lda"]["fine_tuned"] and budgets["l2lda"]["train_steps"] == 20
    assert budgets["advgan"]["width"] == 8 and budgets["gap"]["train_steps"] == 20
    json.dumps(mat)
    # the generator travels with the checkpoint
    exp = Experiment(cfg.replace(iterations=1, warmup=0), use_cache=False)
    exp.train(1)
    exp.save(tmp_path / "ck")
    back = Experiment.from_checkpoint(tmp_path / "ck")
    assert all(torch.equal(a, b) for a, b in zip(exp.defense.generator.state_dict().values(),
                                                  back.defense.generator.state_dict().values()))


def test_figure2_data_and_files(lenet, tmp_path):
    from orchestrator.figures import save_figure2
    from trainable.evaluation.loss_curves import compute_figure2

    cfg = _cfg(defense="pgd10_at", gen_attack_steps=2)
    data = compute_figure2(_frozen_copy(lenet), cfg, lenet.data, n_images=12, steps=3, draws=3, seed=0)
    assert data["iterations"] == [1, 2, 3] and set(data["methods"]) == {"pgd", "l2l", "l2lda"}
    for c in data["methods"].values():
        assert len(c["max"]) == 3 and all(np.isfinite(c["max"]))
        assert all(s >= 0 for s in c["std"]) and all(mx >= mn - 1e-6 for mx, mn in zip(c["max"], c["mean"]))
    pgd = data["methods"]["pgd"]["max"]
    assert pgd[-1] > pgd[0], "PGD's loss rises over its iterations"
    again = compute_figure2(_frozen_copy(lenet), cfg, lenet.data, n_images=12, steps=3, draws=3, seed=0)
    assert again["methods"] == data["methods"], "seeded"
    js, png = save_figure2(data, tmp_path)
    assert json.loads(js.read_text())["methods"] == data["methods"] and png.stat().st_size > 1000


def test_cifar_sized_defense_and_columns_with_resnet():
    """3×32×32 inputs end to end on random data: ResNet-20's BN statistics stay untouched by the
    generator's step (classifier in eval mode), and every column keeps the 8/255 ball."""
    from trainable.attacks import generative as genattacks
    from trainable.data import DataSplits
    from trainable.models import build_classifier

    g = torch.Generator().manual_seed(0)
    mk = lambda n: (torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    (tx, ty), (vx, vy), (sx, sy) = mk(16), mk(4), mk(6)
    data = DataSplits("cifar10", tx, ty, vx, vy, sx, sy, np.arange(4))
    cfg = _cfg(dataset="cifar10", defense="l2lda", gen_attack_steps=1, batch_size=8, T=2)
    clf = build_classifier("resnet20", "cifar10").train()
    stats = {k: v.clone() for k, v in clf.state_dict().items() if "running" in k}
    d = L2LDADefense(cfg, clf, (3, 32, 32), 10, torch.device("cpu"))
    xt, yt, _ = d.batch(tx[:4], ty[:4], 0)
    assert xt.shape == (12, 3, 32, 32) and (xt[4:] - torch.cat([tx[:4]] * 2)).abs().max() <= 8 / 255 + 1e-6
    assert all(torch.equal(v, clf.state_dict()[k]) for k, v in stats.items())
    assert cfg.lam_value == 0.5 and abs(cfg.eps_step - 2 / 255) < 1e-9
    ctx = EvalContext(cfg=cfg, data=data, device=torch.device("cpu"), generator=d.generator, seed=0)
    for col in ("l2lda", "advgan", "gap"):
        (_, fn, _), = getattr(genattacks, f"prepare_{col}")(clf, ctx)
        a = fn(clf, sx, sy, eps=8 / 255, generator=torch.Generator().manual_seed(1))
        assert a.shape == sx.shape and (a - sx).abs().max() <= 8 / 255 + 1e-6 and 0 <= a.min() and a.max() <= 1
