"""The L2L-DA generator and its recursive attack (DESIGN §3, Eq. 5): shapes, flags, gradients, budgets."""
from __future__ import annotations

import pytest
import torch

from trainable.generators import (CondBatchNorm2d, Generator, L2LStarGenerator, PlainBatchNorm2d, diversity_loss,
                                 input_gradient, normalize_grad, recursive_attack, rollout)
from trainable.generators.losses import l2lda_losses
from trainable.models import build_classifier

SHAPES = [(1, 28, 28), (3, 32, 32)]
EPS, STEP = 0.3, 0.075


def _clf(shape):
    torch.manual_seed(1)
    return build_classifier("lenet5", "mnist5k", shape[0]) if shape[2] == 28 else build_classifier("resnet20", "cifar10")


def _batch(shape, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(0, 10, (n,), generator=g)


def _kick(gen: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Give a fresh generator non-trivial weights (at N(0, .02) init its tanh output is ~0)."""
    with torch.no_grad():
        for p in gen.parameters():
            if p.dim() > 1:
                p.mul_(scale / 0.02)
    return gen


@pytest.mark.parametrize("shape", SHAPES)
def test_output_shapes(shape):
    x, y = _batch(shape)
    g = Generator(shape, 10, width=8)
    out = g(x, torch.randn_like(x), torch.zeros_like(x), torch.randn(6, 8), y)
    assert out.shape == x.shape and out.abs().max() <= 1
    # U-Net resolutions: 28 → 14 → 7, 32 → 16 → 8
    h = shape[1]
    feats = {}
    for name in ("down0", "down1", "down2", "up2", "up1"):
        getattr(g, name).register_forward_hook(lambda m, i, o, name=name: feats.__setitem__(name, o.shape))
    g(x, torch.randn_like(x), torch.zeros_like(x), torch.randn(6, 8), y)
    assert [feats[k][2] for k in ("down0", "down1", "down2", "up2", "up1")] == [h, h // 2, h // 4, h // 2, h]
    assert feats["down2"][1] == 16 and feats["down0"][1] == 8
    star = L2LStarGenerator(shape, width=8)
    assert star(x, torch.randn_like(x)).shape == x.shape
    stack = recursive_attack(g, _clf(shape), x, y, torch.randn(6, 8), eps=EPS, eps_step=STEP, steps=3)
    assert stack.shape == (3, *x.shape)


def test_architecture_matches_design():
    g = Generator((1, 28, 28), 10, width=8, z_dim=8)
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(c.bias is None for c in convs), "all convs are bias-free"
    assert g.down0.in_channels == 3 + 8 and g.down1.in_channels == 8 + 8 and g.down2.in_channels == 8 + 8
    assert g.up2.in_channels == 16 and g.up1.in_channels == 16 and g.out.in_channels == 16
    assert [type(m) for m in (g.norm1, g.norm_up2, g.norm_up1)] == [CondBatchNorm2d] * 3
    assert abs(float(g.down0.weight.detach().std()) - 0.02) < 0.01
    assert torch.all(g.norm1.beta.weight == 0) and abs(float(g.norm1.gamma_shared.detach().mean()) - 1) < 0.02
    with pytest.raises(ValueError, match="divisible by 4"):
        g(torch.rand(2, 1, 30, 30), torch.rand(2, 1, 30, 30), torch.rand(2, 1, 30, 30), torch.randn(2, 8),
          torch.zeros(2, dtype=torch.long))


def test_different_z_give_different_perturbations():
    shape = (1, 28, 28)
    x, y = _batch(shape)
    clf = _clf(shape)
    g = _kick(Generator(shape, 10, width=8)).eval()
    z1, z2 = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), torch.randn(6, 8)
    a1 = recursive_attack(g, clf, x, y, z1, eps=EPS, eps_step=STEP, steps=3)[-1]
    a2 = recursive_attack(g, clf, x, y, z2, eps=EPS, eps_step=STEP, steps=3)[-1]
    a1b = recursive_attack(g, clf, x, y, z1, eps=EPS, eps_step=STEP, steps=3)[-1]
    assert torch.equal(a1, a1b), "the detached attack is deterministic given z"
    assert (a1 - a2).abs().amax(dim=(1, 2, 3)).min() > 1e-4, "every example moves with z"


def test_every_parameter_gets_gradient_through_the_recursion():
    shape = (1, 28, 28)
    x, y = _batch(shape, n=8)
    clf = _clf(shape)
    g = _kick(Generator(shape, 10, width=8), 0.1).train()
    l_cls, l_div, a1, a2 = l2lda_losses(g, clf, x, y, 8, eps=EPS, eps_step=STEP, steps=3)
    params = dict(g.named_parameters())
    grads = torch.autograd.grad(l_cls + 0.5 * l_div, list(params.values()), allow_unused=True)
    missing = [n for (n, p), gr in zip(params.items(), grads) if gr is None or not bool(gr.abs().sum() > 0)]
    # γ[y]/β[y] rows of classes absent from the batch get no gradient; every row of a present class must
    assert not [n for n in missing if not n.endswith(("gamma.weight", "beta.weight"))], missing
    for name in ("norm1.gamma.weight", "norm_up1.beta.weight"):
        gr = grads[list(params).index(name)]
        assert bool((gr[y.unique()].abs().sum(1) > 0).all())
    assert all(p.grad is None for p in clf.parameters()), "the classifier receives no gradient"
    # the gradient flows through δ across steps: the loss at t=3 depends on the generator's output at t=1
    outs = []
    g.register_forward_hook(lambda m, i, o: outs.append(o))
    _, losses = rollout(g, clf, x, y, torch.randn(8, 8), eps=EPS, eps_step=STEP, steps=3, differentiable=True,
                        with_losses=True)
    (gd,) = torch.autograd.grad(losses[-1].sum(), outs[0])
    assert len(outs) == 3 and gd.abs().sum() > 0


def test_use_delta_flag():
    shape = (1, 28, 28)
    x, y = _batch(shape)
    z, gr = torch.randn(6, 8), torch.randn_like(x)
    on = _kick(Generator(shape, 10, width=8, use_delta=True)).eval()
    off = _kick(Generator(shape, 10, width=8, use_delta=False)).eval()
    assert on.down0.in_channels == 3 * 1 + 8 and off.down0.in_channels == 2 * 1 + 8
    d1, d2 = torch.zeros_like(x), torch.full_like(x, 0.3)
    with torch.no_grad():
        assert not torch.allclose(on(x, gr, d1, z, y), on(x, gr, d2, z, y))
        assert torch.equal(off(x, gr, d1, z, y), off(x, gr, d2, z, y)), "δ is not an input when use_delta is off"
        with pytest.raises(ValueError, match="use_delta"):
            on(x, gr, None, z, y)


def test_use_label_flag():
    shape = (1, 28, 28)
    x, y = _batch(shape)
    z, gr, d = torch.randn(6, 8), torch.randn_like(x), torch.zeros_like(x)
    on = _kick(Generator(shape, 10, width=8, use_label=True))
    off = _kick(Generator(shape, 10, width=8, use_label=False))
    assert sum(isinstance(m, CondBatchNorm2d) for m in on.modules()) == 3
    assert sum(isinstance(m, CondBatchNorm2d) for m in off.modules()) == 0
    assert sum(isinstance(m, PlainBatchNorm2d) for m in off.modules()) == 3
    with torch.no_grad():
        on.norm1.gamma.weight.normal_(0, 0.5)  # make the class embeddings matter visibly
        y2 = (y + 1) % 10
        assert not torch.allclose(on.eval()(x, gr, d, z, y), on(x, gr, d, z, y2))
        assert torch.equal(off.eval()(x, gr, d, z, y), off(x, gr, d, z, y2)), "plain BN ignores y"
    # class-conditional γ = γ_shared + γ[y] exactly
    cbn = CondBatchNorm2d(4, 10).eval()
    h = torch.randn(2, 4, 3, 3)
    yy = torch.tensor([3, 7])
    want = cbn.bn(h) * (cbn.gamma_shared + cbn.gamma(yy))[:, :, None, None] + (cbn.beta_shared + cbn.beta(yy))[:, :, None, None]
    assert torch.allclose(cbn(h, yy), want)


@pytest.mark.parametrize("grad_norm", [True, False])
def test_grad_norm_flag(grad_norm):
    shape = (1, 28, 28)
    x, y = _batch(shape)
    clf = _clf(shape)
    g = Generator(shape, 10, width=8, grad_norm=grad_norm).eval()
    seen = []
    g.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    recursive_attack(g, clf, x, y, torch.randn(6, 8), eps=EPS, eps_step=STEP, steps=1)
    raw = input_gradient(clf, x, y, normalize=False)
    want = normalize_grad(raw) if grad_norm else raw
    assert torch.allclose(seen[0], want, atol=1e-6)
    if grad_norm:
        assert torch.allclose(seen[0].flatten(2).norm(dim=2), torch.ones(6, 1), atol=1e-4)
    else:
        assert not torch.allclose(seen[0].flatten(2).norm(dim=2), torch.ones(6, 1), atol=1e-2)


def test_input_gradient_stabiliser_and_no_param_grads():
    # a zero gradient (saturated CE) normalises to 0, not NaN
    assert torch.equal(normalize_grad(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 3, 4, 4))
    g = torch.randn(2, 3, 4, 4)
    assert torch.allclose(normalize_grad(g).flatten(2).norm(dim=2), torch.ones(2, 3), atol=1e-5)
    clf = _clf((1, 28, 28)).train()
    x, y = _batch((1, 28, 28))
    gr = input_gradient(clf, x, y)
    assert clf.training, "mode restored"
    assert not gr.requires_grad and all(p.grad is None for p in clf.parameters())


@pytest.mark.parametrize("steps", [1, 4])
def test_attack_stays_in_ball_and_range(steps):
    shape = (1, 28, 28)
    x, y = _batch(shape, n=10)
    x[:3] = 0.0
    x[3:5] = 1.0  # images at the box edges
    clf = _clf(shape).train()
    g = _kick(Generator(shape, 10, width=8), 1.0).train()
    stack = recursive_attack(g, clf, x, y, torch.randn(10, 8), eps=EPS, eps_step=STEP, steps=steps)
    assert g.training and clf.training, "modes restored after the attack"
    assert not stack.requires_grad
    assert (stack - x).abs().max() <= EPS + 1e-6 and stack.min() >= 0 and stack.max() <= 1
    if steps == 1:  # one-shot generation steps by ε, not ε_step: it can reach the edge of the ball
        assert (stack[0] - x).abs().max() > STEP + 1e-3


def test_one_shot_and_recursive_step_sizes():
    shape = (1, 28, 28)
    x, y = _batch(shape)
    clf = _clf(shape)
    g = _kick(Generator(shape, 10, width=8)).eval()
    z = torch.randn(6, 8)
    # one step of ε_step per iteration: x_adv(1) = clip(x + clip(ε_step·g, ±ε), 0, 1)
    with torch.no_grad():
        out = g(x, input_gradient(clf, x, y), torch.zeros_like(x), z, y)
    two = recursive_attack(g, clf, x, y, z, eps=EPS, eps_step=STEP, steps=2)
    assert torch.allclose(two[0], (x + STEP * out).clamp(0, 1), atol=1e-6)
    one = recursive_attack(g, clf, x, y, z, eps=EPS, eps_step=STEP, steps=1)
    assert torch.allclose(one[0], (x + EPS * out).clamp(0, 1), atol=1e-6)


def test_l2l_star_takes_one_step():
    shape = (1, 28, 28)
    x, y = _batch(shape)
    clf = _clf(shape)
    star = _kick(L2LStarGenerator(shape, width=8)).eval()
    calls = []
    star.register_forward_hook(lambda m, i, o: calls.append(o))
    advs, _ = rollout(star, clf, x, y, None, eps=EPS, eps_step=STEP, steps=1, differentiable=False)
    assert len(advs) == 1 and len(calls) == 1
    # L2L* reads the RAW input gradient (paper §5.2.1: it differs by y, δ and gradient normalisation).
    want = (x + EPS * star(x, input_gradient(clf, x, y, normalize=False))).clamp(0, 1)
    assert torch.allclose(advs[0], want, atol=1e-6)
    assert star.down0.in_channels == 2 and star.z_mlp is None and star.grad_norm is False
    assert not any(isinstance(m, CondBatchNorm2d) for m in star.modules())


def test_z_mlp_is_the_authors_and_z_moves_the_output():
    """z-MLP Linear–ReLU–Linear–ReLU with xavier-uniform weights: at initialisation two z draws
    must move the generator's output by a sizeable fraction of its magnitude (with N(0, 0.02)
    weights it was under 2%, and the diversity loss had nothing to act on)."""
    shape = (1, 28, 28)
    torch.manual_seed(0)
    g = Generator(shape, 10, width=16).train()
    mlp = g.z_mlp
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Linear", "ReLU"]
    bound = (6 / (8 + 8)) ** 0.5  # xavier-uniform bound for 8 → 8
    assert mlp[0].weight.abs().max() <= bound and mlp[0].weight.std() > 0.2
    x, y = _batch(shape)
    grad = torch.randn_like(x)
    delta = torch.zeros_like(x)
    z1, z2 = torch.randn(len(x), 8), torch.randn(len(x), 8)
    with torch.no_grad():
        o1, o2 = g(x, grad, delta, z1, y), g(x, grad, delta, z2, y)
    rel = float((o1 - o2).abs().mean() / o1.abs().mean())
    assert rel > 0.2, rel


def test_diversity_loss_is_eq7():
    a1 = [torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)]
    a2 = [torch.full((2, 1, 2, 2), 0.2), torch.full((2, 1, 2, 2), 0.4)]
    z1, z2 = torch.zeros(2, 4), torch.tensor([[1.0] * 4, [2.0] * 4])
    # per-sample ratio: t=1: 0.2/1, 0.2/2; t=2: 0.4/1, 0.4/2 → batch means 0.15, 0.3 → summed over the
    # steps as the authors' code (0.45), averaged as the paper writes it (0.225)
    assert abs(float(diversity_loss(a1, a2, z1, z2)) - 0.45) < 1e-6
    assert abs(float(diversity_loss(a1, a2, z1, z2, "mean")) - 0.225) < 1e-6
    assert float(diversity_loss(a1, a1, z1, z2)) == 0.0


def test_the_authors_objective_sums_over_the_steps():
    """gen_objective "sum" (the authors' code) is T× the paper's average, terms and gradients alike:
    with SGD and the grad-norm clip that is a T× larger step while the gradient is under the clip."""
    shape, T = (1, 28, 28), 3
    x, y = _batch(shape, n=6)
    clf = _clf(shape)
    g = _kick(Generator(shape, 10, width=8), 0.1).train()
    z = torch.randn(12, 8)
    grads = {}
    for objective in ("sum", "mean"):
        l_cls, l_div, _, _ = l2lda_losses(g, clf, x, y, 8, eps=EPS, eps_step=STEP, steps=T, z=z, objective=objective)
        grads[objective] = (l_cls.detach(), l_div.detach(),
                            torch.autograd.grad(l_cls + 0.5 * l_div, list(g.parameters()), allow_unused=True))
    s, m = grads["sum"], grads["mean"]
    assert torch.allclose(s[0], T * m[0], rtol=1e-5) and torch.allclose(s[1], T * m[1], rtol=1e-5)
    for a, b in zip(s[2], m[2]):
        if a is not None:
            assert torch.allclose(a, T * b, rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="gen_objective"):
        l2lda_losses(g, clf, x, y, 8, eps=EPS, eps_step=STEP, steps=T, z=z, objective="max")
