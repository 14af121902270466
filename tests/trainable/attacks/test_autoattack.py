"""APGD-CE, APGD-T (trainable.attacks.apgd), FAB-T (.fab), Square (.square) and the AutoAttack cascade (.autoattack)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from trainable.attacks import pgd
from trainable.attacks.apgd import apgd, apgd_targeted, checkpoints
from trainable.attacks.autoattack import autoattack
from trainable.attacks.fab import fab_targeted, linf_hyperplane_box_projection
from trainable.attacks.square import square, square_p
from trainable.attacks.primitives import EvalContext
from trainable.evaluation import robustness_matrix


@pytest.fixture(scope="session")
def plain(trained):
    return trained("plain", iterations=800, warmup=0, eps=0.1)  # shared with test_runner


@pytest.fixture(scope="session")
def pgd_at(trained):
    return trained("pgd10_at", iterations=150)  # shared with test_attacks


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _assert_valid(x_adv, x, eps):
    assert torch.isfinite(x_adv).all()
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_checkpoints_follow_the_paper_schedule():
    # p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), w_j = ⌈p_j · N⌉
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0 + 1e-9:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    expected = [math.ceil(round(q * 100, 6)) for q in p[1:]]
    assert checkpoints(100) == expected == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("kind", ["apgd_ce", "apgd_t_loss", "apgd_t", "fab_t", "square"])
def test_attacks_keep_ball_range_mode_and_are_seeded(plain, kind):
    model = plain.classifier
    model.train()  # the attack must restore whatever mode it found
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    x, y = plain.data.test_x[:48], plain.data.test_y[:48]
    eps = 0.1
    runs = {
        "apgd_ce": lambda g: apgd(model, x, y, eps=eps, steps=20, generator=g),
        "apgd_t_loss": lambda g: apgd(model, x, y, eps=eps, steps=20, loss="dlr_targeted", target_class=2, generator=g),
        "apgd_t": lambda g: apgd_targeted(model, x, y, eps=eps, steps=10, n_target_classes=3, generator=g),
        # Two restarts: the second starts from a random point, so the seed matters.
        "fab_t": lambda g: fab_targeted(model, x, y, eps=eps, steps=10, n_target_classes=3, n_restarts=2, generator=g),
        "square": lambda g: square(model, x, y, eps=eps, n_queries=60, generator=g),
    }[kind]
    a = runs(torch.Generator().manual_seed(3))
    b = runs(torch.Generator().manual_seed(3))
    assert model.training, "model mode not restored"
    assert all((g is None and p.grad is None) or (g is not None and torch.equal(g, p.grad))
               for g, p in zip(grads, model.parameters())), "a parameter's .grad changed"
    model.eval()
    _assert_valid(a, x, eps)
    assert torch.equal(a, b), "not deterministic under a seeded generator"
    assert _acc(model, a, y) <= _acc(model, x, y)


def test_apgd_is_at_least_as_strong_as_pgd10(plain):
    model = plain.classifier.eval()
    x, y = plain.data.test_x[:150], plain.data.test_y[:150]
    g = torch.Generator().manual_seed(0)
    a_pgd = _acc(model, pgd(model, x, y, eps=0.1, step=0.025, steps=10, generator=g), y)
    a_apgd = _acc(model, apgd(model, x, y, eps=0.1, generator=g), y)
    assert a_apgd <= a_pgd + 0.01, (a_apgd, a_pgd)
    assert a_apgd < _acc(model, x, y) - 0.05


def test_square_schedule_and_queries_only_correct_points(plain):
    # AutoAttack's standard Square (resc_schedule=False): the schedule follows the raw iteration
    # number, whatever the query budget — with 1000 queries the last p is p_init/16, not /512.
    assert square_p(0) == square_p(10) == 0.8 and square_p(11) == 0.8 / 2
    assert square_p(999) == 0.8 / 16 and square_p(1000) == 0.8 / 16 and square_p(1001) == 0.8 / 32
    assert square_p(4999) == 0.8 / 128 and square_p(8001) == square_p(10 ** 6) == 0.8 / 512

    class Counting(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m, self.rows = m, 0

        def forward(self, x):
            self.rows += len(x)
            return self.m(x)

    model = Counting(plain.classifier.eval())
    x, y = plain.data.test_x[:20], plain.data.test_y[:20]
    with torch.no_grad():
        wrong = (plain.classifier(x).argmax(1) + 1) % 10  # labels the model never predicts on x
    # Every point starts misclassified, so after the initial query nothing is queried again.
    square(model, x, wrong, eps=0.01, n_queries=50, generator=torch.Generator().manual_seed(0))
    assert model.rows == len(x)


def test_linf_projection_onto_hyperplane_and_box_matches_a_linear_program():
    optimize = pytest.importorskip("scipy.optimize")
    g = torch.Generator().manual_seed(0)
    n, d = 24, 10
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(n, generator=g, dtype=torch.float64)  # large |b|: the box often binds or blocks
    delta = linf_hyperplane_box_projection(x, w, b)
    z = x + delta
    assert bool(((z >= -1e-12) & (z <= 1 + 1e-12)).all())
    n_feasible = 0
    for i in range(n):
        # min r over (δ, r): w·δ = −(w·x + b), |δ_j| ≤ r, δ_j ∈ [−x_j, 1 − x_j]
        A_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        lp = optimize.linprog(np.r_[np.zeros(d), 1.0], A_ub=A_ub, b_ub=np.zeros(2 * d),
                              A_eq=np.r_[w[i].numpy(), 0.0][None], b_eq=[-float(w[i] @ x[i] + b[i])],
                              bounds=[(-float(v), 1 - float(v)) for v in x[i]] + [(0, None)])
        if lp.status == 0:
            n_feasible += 1
            assert abs(float(w[i] @ z[i] + b[i])) < 1e-9, "the projection is not on the hyperplane"
            assert float(delta[i].abs().max()) == pytest.approx(lp.fun, abs=1e-9)
        else:  # the box never reaches the hyperplane: its corner closest to it in that direction
            h = float(w[i] @ x[i] + b[i])
            corner = torch.where(torch.sign(w[i]) * -np.sign(h) > 0, 1.0, 0.0).to(x.dtype)
            corner = torch.where(w[i] == 0, x[i], corner)
            assert torch.allclose(z[i], corner)
    assert 0 < n_feasible < n  # both cases were exercised


def test_fab_t_reaches_the_minimal_linf_distance_on_a_linear_model():
    # For a linear classifier the least ℓ∞ perturbation onto f_t = f_y is |g(x)| / ‖w_t − w_y‖₁
    # (interior points and small distances: the box does not bind); no adversarial is closer.
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x = 0.4 + 0.2 * torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = lin(x)
        y = z.argmax(1)
        w = lin[1].weight
        d_star = (z[:, 0] - z[:, 1]).abs() / (w[0] - w[1]).abs().sum()
    assert float(d_star.max()) < 0.35  # keeps x + δ inside [0, 1]
    xa = fab_targeted(lin, x, y, eps=1.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert bool((lin(xa).argmax(1) != y).all())
    dist = (xa - x).flatten(1).abs().amax(1)
    assert bool((dist >= d_star * (1 - 1e-4)).all())
    assert bool((dist <= d_star * 1.01).all()), (dist / d_star).max()
    # ε-bounded: with ε just below the minimal distance nothing may be returned as adversarial.
    xb = fab_targeted(lin, x, y, eps=0.9 * float(d_star.min()))
    with torch.no_grad():
        assert bool((lin(xb).argmax(1) == y).all())
    _assert_valid(xb, x, 0.9 * float(d_star.min()))


def test_fab_t_on_a_multiclass_linear_model_stops_at_the_target_boundary():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = 0.45 + 0.1 * torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = lin(x)
        y = z.argmax(1)
        t = z.argsort(1)[:, -2]  # the first target FAB-T tries
        w = lin[1].weight
        dist_to = (z - z.gather(1, y[:, None])).abs() / (w[None] - w[y][:, None]).abs().sum(2)
        dist_to.scatter_(1, y[:, None], float("inf"))
        d_min = dist_to.amin(1)  # least ℓ∞ distance to any wrong class (a union of half-spaces)
        d_t = dist_to.gather(1, t[:, None]).squeeze(1)
    assert float(d_t.max()) < 0.4
    xa = fab_targeted(lin, x, y, eps=1.0, n_target_classes=1)
    dist = (xa - x).flatten(1).abs().amax(1)
    with torch.no_grad():
        assert bool((lin(xa).argmax(1) != y).all())
    assert bool((dist >= d_min * (1 - 1e-4)).all())
    assert bool((dist <= d_t * 1.01).all()), (dist / d_t).max()


def test_fab_t_fools_an_undefended_model(plain):
    model = plain.classifier.eval()
    x, y = plain.data.test_x[:48], plain.data.test_y[:48]
    eps = 0.3  # generous for an undefended MNIST model
    xa = fab_targeted(model, x, y, eps=eps, steps=20, n_target_classes=3)
    _assert_valid(xa, x, eps)
    assert _acc(model, xa, y) <= 0.1 * _acc(model, x, y)


def test_autoattack_below_pgd100_on_pgd_at(pgd_at):
    exp = pgd_at
    x, y = exp.data.test_x[:100], exp.data.test_y[:100]
    ctx = EvalContext(cfg=exp.cfg.replace(square_queries=100), data=exp.data, device=exp.device, seed=0)
    res = robustness_matrix(exp.classifier, x, y, columns=["pgd100", "autoattack"], eps=0.3, ctx=ctx,
                            masking=False)
    m = res.metrics
    assert m["matrix/autoattack"] <= m["matrix/pgd100"], m
    assert res.checks["autoattack"]["in_ball"] and res.checks["autoattack"]["in_range"]
    assert res.profile["budgets"]["autoattack"]["cascade"] == ["apgd_ce", "apgd_t", "fab_t", "square"]


class _CountingForwards(nn.Module):
    """Counts the examples that go through the classifier (every forward pass, with or without autograd)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.examples = 0

    def forward(self, x):
        self.examples += x.shape[0]
        return self.inner(x)


def test_autoattack_cascade_runs_on_survivors_and_is_identical_with_or_without_stage_columns(pgd_at):
    exp = pgd_at
    x, y = exp.data.test_x[:40], exp.data.test_y[:40]
    ctx = EvalContext(cfg=exp.cfg.replace(square_queries=60), data=exp.data, device=exp.device, seed=3)
    stages = ["apgd_ce", "apgd_t", "fab_t", "square"]

    def matrix(columns):
        model = _CountingForwards(exp.classifier)
        res = robustness_matrix(model, x, y, columns=columns, eps=0.3, ctx=ctx, masking=False)
        return res, model.examples

    alone, n_alone = matrix(["autoattack"])
    with_stages, n_with = matrix([*stages, "autoattack"])
    stages_only, n_stages = matrix(stages)
    first, _ = matrix(["autoattack", "apgd_t"])  # the stage column completes after the cascade
    middle, _ = matrix(["fab_t", "autoattack"])  # a later stage first: the cascade runs up to it
    # The same per-example correctness vector whether or not the stages are columns too, and
    # whichever order the matrix lists them in.
    for other in (with_stages, first, middle):
        assert np.array_equal(alone.correct["autoattack"], other.correct["autoattack"])
    # Worst case per example over the stages, as the stage columns of that matrix computed them.
    worst = np.logical_and.reduce([with_stages.correct[s] for s in stages])
    assert np.array_equal(with_stages.correct["autoattack"], worst)
    assert with_stages.metrics["matrix/worst"] == float(worst.mean())
    # A stage column covers every clean-correct point (not only the survivors) ...
    for res, s in ((with_stages, "apgd_t"), (first, "apgd_t"), (middle, "fab_t")):
        assert not (res.correct[s] & ~res.correct["natural"]).any()
        assert (res.correct[s] >= res.correct["autoattack"]).all()
    # Square, the weakest stage, fails on points the stages before it broke: the column attacked them
    # too (a column run on the survivors only would count them as broken).
    before_square = with_stages.correct["apgd_ce"] & with_stages.correct["apgd_t"] & with_stages.correct["fab_t"]
    assert (with_stages.correct["square"] & ~before_square).any()
    # ... with the budget it has alone.
    assert with_stages.profile["budgets"]["apgd_t"] == stages_only.profile["budgets"]["apgd_t"]
    # The stages actually differ (a cascade that only repeated APGD-CE would not pass this).
    assert with_stages.correct["autoattack"].sum() < with_stages.correct["apgd_ce"].sum()
    # Alone, each stage attacks only the survivors of the earlier ones: cheaper than its stages as columns.
    attacked = alone.profile["composites"]["autoattack"]["attacked"]
    assert list(attacked) == stages
    assert attacked["apgd_ce"] == int(alone.correct["natural"].sum())
    assert attacked["apgd_t"] == int((with_stages.correct["apgd_ce"]).sum())
    assert attacked["square"] < attacked["apgd_ce"]
    assert n_alone < n_stages
    # Next to its stage columns, no attack runs twice: the same work as the stage columns alone, up to
    # a clean and a scoring forward more per stage for the split into survivors and the rest, and the
    # few-percent spread of early stopping under the split's other random starts (docs/method.md);
    # an attack run twice would double it.
    assert 0.95 * n_stages <= n_with <= 1.05 * n_stages + 2 * len(x) * len(stages)
    assert with_stages.profile["composites"]["autoattack"]["reused"] == stages
    assert alone.profile["composites"]["autoattack"]["reused"] == []
    assert "apgd_ce" not in alone.correct  # stages that are not columns are not reported as columns
    assert set(alone.profile["budgets"]["autoattack"]["stages"]) == set(stages)


def test_autoattack_cascade_returns_first_fooling_point(plain):
    model = plain.classifier.eval()
    x, y = plain.data.test_x[:60], plain.data.test_y[:60]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]  # the cascade attacks the clean-correct points only
    lines: list[str] = []
    xa = autoattack(model, x, y, eps=0.1, steps=10, n_target_classes=2, fab_steps=10, n_queries=30,
                    generator=torch.Generator().manual_seed(1), log=lines.append)
    _assert_valid(xa, x, 0.1)
    stages = [ln.split("after ")[1].split()[0] for ln in lines]
    assert stages == ["apgd_ce", "apgd_t", "fab_t", "square"][:len(stages)] and "fab_t" in stages, lines
    xc = apgd(model, x, y, eps=0.1, steps=10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fooled_ce = model(xc).argmax(1) != y
    # Same generator state at the start: the cascade's first stage is exactly this APGD-CE run.
    assert torch.equal(xa[fooled_ce], xc[fooled_ce])
    assert _acc(model, xa, y) <= _acc(model, xc, y)


def test_bad_inputs_are_one_line_errors(plain):
    model = plain.classifier
    x, y = plain.data.test_x[:4], plain.data.test_y[:4]
    with pytest.raises(ValueError, match="loss"):
        apgd(model, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="target_class"):
        apgd(model, x, y, eps=0.1, loss="dlr_targeted")
    with pytest.raises(ValueError, match="eps"):
        square(model, x, y, eps=0.0)


def test_pgd_agrees_with_foolbox_linf_pgd(pgd_at):
    fb = pytest.importorskip("foolbox")
    model = pgd_at.classifier.eval()
    x, y = pgd_at.data.test_x[:500], pgd_at.data.test_y[:500]
    eps, steps, step = 0.3, 20, 0.3 / 8
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    torch.manual_seed(0)
    _, clipped, success = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=True)(
        fmodel, x, y, epsilons=eps)
    acc_fb = 1.0 - float(success.float().mean())
    ours = pgd(model, x, y, eps=eps, step=step, steps=steps, keep_best=False, early_stop=False,
               generator=torch.Generator().manual_seed(0))
    acc_ours = _acc(model, ours, y)
    assert abs(acc_ours - acc_fb) <= 0.015, (acc_ours, acc_fb)
    assert np.isclose(float((clipped - x).abs().max()), eps, atol=1e-5)
