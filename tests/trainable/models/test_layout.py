"""The evaluation layout (trainable.models.layout): LeNet-5 is evaluated NHWC on a CPU and given back as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainable.attacks.primitives import EvalContext
from trainable.evaluation import robustness_matrix
from trainable.models import LeNet5, ResNet20
from trainable.models.layout import evaluation_layout, prefers_channels_last


def _nhwc(model):
    weights = [p for p in model.parameters() if p.dim() == 4]
    return (all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
            and not all(w.is_contiguous() for w in weights))


def test_lenet_is_nhwc_inside_and_restored_with_the_same_parameters_and_values():
    model = LeNet5()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    with evaluation_layout(model):
        assert _nhwc(model)
    assert not _nhwc(model) and all(p.is_contiguous() for p in model.parameters())
    after = list(model.parameters())
    assert all(a is b for a, b in zip(after, params))  # an optimizer holding them keeps working
    assert all(torch.equal(a, b) for a, b in zip(after, before))


def test_layout_is_restored_when_the_evaluation_fails():
    model = LeNet5()
    with pytest.raises(RuntimeError, match="boom"):
        with evaluation_layout(model):
            raise RuntimeError("boom")
    assert all(p.is_contiguous() for p in model.parameters())


def test_models_that_do_not_gain_or_are_already_nhwc_are_left_alone():
    assert not prefers_channels_last(ResNet20())  # its input gradients measured no faster NHWC
    nhwc = LeNet5().to(memory_format=torch.channels_last)  # a trial trained with channels_last
    assert not prefers_channels_last(nhwc)
    with evaluation_layout(nhwc):
        pass
    assert _nhwc(nhwc)  # kept as the trial keeps it


def test_the_matrix_gives_the_classifier_back_and_agrees_with_an_nchw_evaluation(trained, monkeypatch):
    exp = trained("pgd10_at", iterations=150)  # shared with the attack tests
    model = exp.classifier
    x, y = exp.data.test_x[:100], exp.data.test_y[:100]
    ctx = EvalContext(cfg=exp.cfg, data=exp.data, device=exp.device, seed=0)

    def matrix():
        return robustness_matrix(model, x, y, columns=["pgd10"], eps=0.3, ctx=ctx, masking=False).correct

    res = robustness_matrix(model, x, y, columns=["pgd10"], eps=0.3, ctx=ctx, masking=False)
    assert res.profile["layout"] == "channels_last"  # recorded with the result
    nhwc = res.correct
    assert all(p.is_contiguous() for p in model.parameters())
    monkeypatch.setattr(type(model), "EVAL_CHANNELS_LAST_ON_CPU", False)
    nchw = matrix()
    assert robustness_matrix(model, x, y, columns=["natural"], eps=0.3, ctx=ctx,
                             masking=False).profile["layout"] == "contiguous"
    np.testing.assert_array_equal(nhwc["natural"], nchw["natural"])
    # the same attack, only the convolution kernels differ: at most a borderline point may flip
    assert (nhwc["pgd10"] != nchw["pgd10"]).sum() <= 1
