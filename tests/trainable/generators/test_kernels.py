"""The training step's fast path and its options (docs/performance.md).

The current eager path against the frozen pre-change one (bench/reference_l2lda.py) on a
fixed seed: same losses, iterates and generator update within float tolerance. Each option
(channels_last, compile, amp) against eager: losses within a stated tolerance and the same
attack success on a fixed batch. torch.compile on CPU takes tens of seconds, so the compiled
comparison is marked slow; its fallback is checked cheaply.
"""
from __future__ import annotations

import copy

import pytest
import torch

from bench import reference_l2lda as ref
from trainable.generators import kernels
from trainable.attacks import fgsm, frozen_params, pgd
from trainable.config import ConfigError, TrialConfig
from trainable.generators.kernels import CompiledOrEager, build_kernels
from trainable.generators import (EAGER, Generator, L2LStarGenerator, RolloutKernels, ce_and_input_gradient,
                                 ce_and_input_gradient_functional, diversity_loss, generator_update, rollout)
from trainable.generators.losses import generator_step, l2lda_losses
from trainable.models import build_classifier
from trainable.experiment import Experiment

EPS, STEP, T, LAM = 0.3, 0.075, 3, 0.02
# Float tolerance of "exact": the new path sums the same terms in another order; the kicked
# generator (weights ×10, so BN rescales large activations) turns fp32 rounding into up to
# ~1e-5 on a pixel in [0, 1].
RTOL, ATOL = 1e-4, 2e-5


def _setup(shape=(1, 28, 28), n=6, width=8, seed=0, **flags):
    torch.manual_seed(seed)
    clf = build_classifier("lenet5", "mnist5k", shape[0]) if shape[1] == 28 else build_classifier("resnet20", "cifar10")
    with torch.no_grad():  # a classifier with non-trivial gradients
        for p in clf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = Generator(shape, 10, width=width, **flags)
    with torch.no_grad():  # at N(0, .02) init the generator's output is ~0: give it weight
        for p in gen.parameters():
            if p.dim() > 1:
                p.mul_(10.0)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((n, *shape), generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    z = torch.randn((2 * n, 8), generator=g)
    return clf, gen, x, y, z


def _step_new(gen, clf, x, y, z, kernels=None, lam=LAM):
    opt = torch.optim.SGD(gen.parameters(), lr=0.01, momentum=0.9)
    # the frozen reference averages over the T steps (the paper's Eq. 6): compare like with like
    lc, ld, a1, a2 = l2lda_losses(gen, clf, x, y, 8, eps=EPS, eps_step=STEP, steps=T, z=z, kernels=kernels,
                                  objective="mean")
    generator_step(gen, opt, lc + lam * ld if lam > 0 else lc, 1.0)
    return lc.detach(), ld.detach(), a1.detach(), a2.detach()


def _close(a, b, rtol=RTOL, atol=ATOL):
    return torch.allclose(a, b, rtol=rtol, atol=atol)


def _grads_match(gen, clf, x, y, z, rtol=1e-9):
    """Gradients of L_cls + λ·L_div w.r.t. the generator: frozen reference vs the current eager path.

    In float64, so that the check is of the mathematics (fp32 rounding of the two summation
    orders reaches ~1% of the largest entry for a RGB batch through the ×10-kicked generator).
    """
    n = len(x)
    gen, clf, x, z = copy.deepcopy(gen).double(), copy.deepcopy(clf).double(), x.double(), z.double()
    g_ref = copy.deepcopy(gen)
    advs, losses = ref.rollout(g_ref, clf, torch.cat([x, x]), torch.cat([y, y]), z, eps=EPS, eps_step=STEP, steps=T,
                               differentiable=True, with_losses=True)
    lc = torch.stack([c.mean() for c in losses]).mean()
    ld = diversity_loss([a[:n] for a in advs], [a[n:] for a in advs], z[:n], z[n:], "mean")
    want = torch.autograd.grad(lc + LAM * ld, list(g_ref.parameters()))
    lc2, ld2, _, _ = l2lda_losses(gen, clf, x, y, 8, eps=EPS, eps_step=STEP, steps=T, z=z, objective="mean")
    got = torch.autograd.grad(lc2 + LAM * ld2, list(gen.parameters()))
    assert _close(lc, lc2) and _close(ld, ld2)
    for (name, _), a, b in zip(gen.named_parameters(), want, got):
        scale = a.abs().max().item() + 1e-20
        assert torch.allclose(a, b, rtol=rtol, atol=rtol * scale), f"{name}: gradient differs"


@pytest.mark.parametrize("flags", [{}, {"use_delta": False}, {"use_label": False}, {"grad_norm": False}])
def test_eager_step_matches_the_frozen_reference(flags):
    clf, g_new, x, y, z = _setup(**flags)
    _grads_match(g_new, clf, x, y, z)
    g_ref = copy.deepcopy(g_new)
    opt = torch.optim.SGD(g_ref.parameters(), lr=0.01, momentum=0.9)
    want = ref.l2lda_step(g_ref, opt, clf, x, y, z, eps=EPS, eps_step=STEP, steps=T, lam=LAM, clip=1.0)
    got = _step_new(g_new, clf, x, y, z)
    for w, h in zip(want, got):  # L_cls, L_div, x_adv(T)(z1), x_adv(T)(z2)
        assert _close(w, h)
    for a, b in zip([*g_ref.parameters(), *g_ref.buffers()], [*g_new.parameters(), *g_new.buffers()]):
        assert _close(a.float(), b.float())  # updated weights and BN running statistics
    # the classifier got no gradient and is trainable again afterwards
    assert all(p.grad is None and p.requires_grad for p in clf.parameters())


def test_eager_matches_reference_for_rgb_resnet_and_l2l_star():
    clf, g_new, x, y, z = _setup(shape=(3, 32, 32), n=4)
    _grads_match(g_new, clf, x, y, z)
    # L2L*: one step of ε on [x, raw ∇L(x)], no z
    torch.manual_seed(3)
    star = L2LStarGenerator((3, 32, 32), width=8)
    advs_ref, losses_ref = ref.rollout(star, clf, x, y, None, eps=EPS, eps_step=EPS, steps=1, differentiable=True,
                                       with_losses=True)
    advs, losses = rollout(star, clf, x, y, None, eps=EPS, eps_step=EPS, steps=1, differentiable=True, with_losses=True)
    assert _close(advs_ref[0], advs[0]) and _close(losses_ref[0], losses[0])
    params = list(star.parameters())
    g_a = torch.autograd.grad(losses_ref[0].mean(), params)
    g_b = torch.autograd.grad(losses[0].mean(), params)
    assert all(torch.allclose(a, b, rtol=RTOL, atol=RTOL * a.abs().max().item()) for a, b in zip(g_a, g_b))


def test_detached_rollout_matches_reference_and_keeps_no_graph():
    clf, gen, x, y, z = _setup()
    gen.eval()
    want, _ = ref.rollout(gen, clf, x, y, z[:6], eps=EPS, eps_step=STEP, steps=T, differentiable=False)
    got, losses = rollout(gen, clf, x, y, z[:6], eps=EPS, eps_step=STEP, steps=T, differentiable=False,
                          with_losses=True)
    assert all(_close(a, b) for a, b in zip(want, got))
    assert not any(t.requires_grad for t in [*got, *losses])


def test_functional_input_gradient_equals_autograd():
    clf, _, x, y, _ = _setup()
    ce_a, g_a = ce_and_input_gradient(clf.eval(), x, y)
    ce_b, g_b = ce_and_input_gradient_functional(clf, x, y)
    assert _close(ce_a, ce_b) and _close(g_a, g_b, atol=1e-7)
    assert all(p.grad is None for p in clf.parameters())


def _success(clf, adv, y):
    with torch.no_grad():
        return clf.eval()(adv).argmax(1) != y


def _compare_to_eager(kernels_or_cl, rtol, atol, shape=(1, 28, 28), n=6):
    """One generator step with eager kernels and with the option, from the same weights."""
    clf, g_eager, x, y, z = _setup(shape=shape, n=n)
    g_opt, clf_opt = copy.deepcopy(g_eager), copy.deepcopy(clf)
    kernels = None
    if kernels_or_cl == "channels_last":
        g_opt = g_opt.to(memory_format=torch.channels_last)
        clf_opt = clf_opt.to(memory_format=torch.channels_last)
        x_opt = x.contiguous(memory_format=torch.channels_last)
    else:
        kernels, x_opt = kernels_or_cl, x
    want = _step_new(g_eager, clf, x, y, z)
    got = _step_new(g_opt, clf_opt, x_opt, y, z, kernels=kernels)
    for w, h in zip(want, got):
        assert torch.allclose(w.float(), h.float(), rtol=rtol, atol=atol)
    # same attack success on the fixed batch: x_adv(T) of both halves
    for w, h in zip(want[2:], got[2:]):
        assert torch.equal(_success(clf, w, y), _success(clf, h.float(), y))
    return g_eager, g_opt


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_channels_last_agrees_with_eager(shape):
    g_eager, g_cl = _compare_to_eager("channels_last", RTOL, ATOL, shape=shape, n=4)
    assert g_cl.down1.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(g_eager.parameters(), g_cl.parameters()):
        assert _close(a, b)


def test_amp_autocast_keeps_the_classifier_in_fp32():
    """bf16 is offered on CUDA only; the same kernels run CPU autocast here to check the dtype plumbing.

    Tolerance: bf16 keeps 8 mantissa bits (~0.4% relative), compounded over T steps: 2% on the
    CE values, a mean |Δ| of 0.01 per pixel (single pixels where the generator's tanh is in
    its linear range move further: ~0.1 after 3 steps).
    """
    clf, gen, x, y, z = _setup()
    kernels = RolloutKernels(amp_dtype=torch.bfloat16)
    advs, losses = rollout(copy.deepcopy(gen).train(), clf, torch.cat([x, x]), torch.cat([y, y]), z, eps=EPS,
                           eps_step=STEP, steps=T, differentiable=True, with_losses=True, kernels=kernels)
    want, want_losses = rollout(copy.deepcopy(gen).train(), clf, torch.cat([x, x]), torch.cat([y, y]), z, eps=EPS,
                                eps_step=STEP, steps=T, differentiable=True, with_losses=True)
    assert all(a.dtype == torch.float32 for a in advs) and all(c.dtype == torch.float32 for c in losses)
    assert all((a - b).abs().mean() < 0.01 for a, b in zip(advs, want))
    assert all(torch.allclose(a, b, rtol=0.02, atol=1e-3) for a, b in zip(losses, want_losses))
    grads = torch.autograd.grad(torch.stack([c.mean() for c in losses]).mean(), list(gen.parameters()),
                                allow_unused=True)
    assert all(g is None for g in grads)  # the copy was differentiated, not `gen`


def test_amp_is_cuda_only_with_one_line_errors():
    with pytest.raises(ConfigError, match=r"^amp: bf16 runs on CUDA only") as e:
        TrialConfig.from_dict({"amp": "bf16", "device": "cpu"})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^amp: expected null or one of bf16, got 'fp16'"):
        TrialConfig.from_dict({"amp": "fp16"})
    assert TrialConfig.from_dict({"amp": False}).amp is None  # configs written before the bf16 option
    cfg = TrialConfig.from_dict({"amp": "bf16"})  # device auto: decided where the trial runs
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^amp: bf16 runs on CUDA only \(this trial's device is cpu\)"):
            build_kernels(cfg, torch.device("cpu"))
        with pytest.raises(ConfigError, match=r"^amp: bf16 runs on CUDA only"):
            Experiment(cfg, use_cache=False)  # before any data is loaded or model built


def test_options_are_recorded_as_params():
    cfg = TrialConfig.from_dict({"compile": True, "channels_last": True}).resolved()
    flat = cfg.flat()
    assert flat["compile"] == "True" and flat["channels_last"] == "True" and flat["amp"] == "None"
    assert TrialConfig.from_dict({"amp": "bf16"}).flat()["amp"] == "bf16"
    with pytest.raises(ConfigError, match=r"^compile: expected true/false"):
        TrialConfig.from_dict({"compile": "yes"})


def test_compile_falls_back_to_eager_with_one_line(monkeypatch, capsys):
    def refuse(*a, **k):
        raise RuntimeError("Dynamo is not supported on this Python\nsecond line")

    monkeypatch.setattr(torch, "compile", refuse)
    cfg = TrialConfig.from_dict({"compile": True})
    kernels = build_kernels(cfg, torch.device("cpu"))
    clf, g_eager, x, y, z = _setup()
    g_c = copy.deepcopy(g_eager)
    want = _step_new(g_eager, clf, x, y, z)
    got = _step_new(g_c, clf, x, y, z, kernels=kernels)
    assert all(_close(a, b) for a, b in zip(want, got))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("compile:")]
    assert len(lines) == 2  # one per kernel, each once
    assert all("running eager" in ln and "second line" not in ln for ln in lines)


def test_compiler_error_at_first_call_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(torch, "compile", lambda fn, **k: (lambda *a, **kw: (_ for _ in ()).throw(OSError("no cc"))))
    wrapped = CompiledOrEager(lambda a: a + 1, "a test kernel")
    assert wrapped(1) == 2 and wrapped(2) == 3 and wrapped.fell_back
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["compile: torch.compile unavailable for a test kernel (OSError: no cc); running eager"]


def test_attacks_freeze_parameters_and_restore_them():
    clf, _, x, y, _ = _setup()
    seen = []
    hook = clf.conv1.register_forward_hook(lambda m, i, o: seen.append(m.weight.requires_grad))
    pgd(clf, x, y, eps=EPS, step=STEP, steps=2)
    fgsm(clf, x, y, eps=EPS)
    hook.remove()
    assert seen and not any(seen)  # no parameter required grad while attacking
    assert all(p.requires_grad and p.grad is None for p in clf.parameters())
    with pytest.raises(RuntimeError):
        with frozen_params(clf):
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in clf.parameters())


@pytest.mark.slow
def test_compiled_step_agrees_with_eager():
    """torch.compile of both kernels (tens of seconds to compile on CPU): losses within 1e-4 relative."""
    cfg = TrialConfig.from_dict({"compile": True})
    kernels = build_kernels(cfg, torch.device("cpu"))
    _compare_to_eager(kernels, 1e-4, 1e-5, n=4)
    assert not kernels.ce_grad.fell_back and not kernels.update.fell_back


def test_default_kernels_are_eager():
    assert EAGER.ce_grad is ce_and_input_gradient and EAGER.update is generator_update and EAGER.amp_dtype is None
    k = build_kernels(TrialConfig.from_dict({}), torch.device("cpu"))
    assert k.ce_grad is ce_and_input_gradient and k.update is generator_update
    assert kernels.AMP_DTYPES == {"bf16": torch.bfloat16}
