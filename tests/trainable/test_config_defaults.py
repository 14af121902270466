"""Per-defense training defaults follow their sources (docs/method.md, "Defaults and their sources")."""
import pytest
import torch

from trainable.config import ConfigError, TrialConfig
from trainable.experiment import Experiment

BASELINES = ("plain", "fgsm_at", "pgd10_at", "pgd100_at", "cw100_at")
OWN_METHOD = ("l2lda", "l2l_star")


@pytest.mark.parametrize("defense", BASELINES + OWN_METHOD)
def test_resolved_pipeline_per_defense_on_mnist(defense):
    r = TrialConfig.from_dict({"dataset": "mnist5k", "defense": defense}).resolved()
    own = defense in OWN_METHOD
    assert r.augment is own  # authors' L2L-DA loader crops; mister_ed / Madry do not
    assert r.clf_grad_clip == (1.0 if own else 0.0)
    # authors' StepLR: ×0.1 at step 50,000 of 100,000, warm-up (1000) included; mister_ed constant
    assert r.lr_decay_at == ((50_000 - 1000) / 100_000 if own else None)
    assert r.resolved() == r  # idempotent


@pytest.mark.parametrize("defense", OWN_METHOD)
def test_a_run_shorter_than_the_sources_decay_point_never_decays(defense):
    """The source decays at its step 50,000: a 1,100-iteration run is all before it (docs/method.md)."""
    r = TrialConfig.from_dict({"defense": defense, "warmup": 300, "iterations": 800}).resolved()
    assert r.lr_decay_at is None
    exp_lr = [TrialConfig.from_dict({"defense": defense, "warmup": 0, "iterations": 60_000}).resolved().lr_decay_at]
    assert exp_lr == [50_000 / 60_000]


def test_classifiers_follow_their_sources_normalisation():
    assert TrialConfig.from_dict({"dataset": "mnist5k"}).resolved().input_norm == "none"
    assert TrialConfig.from_dict({"dataset": "fashion_mnist"}).resolved().input_norm == "none"
    assert TrialConfig.from_dict({"dataset": "cifar10"}).resolved().input_norm == "imagenet"
    assert TrialConfig.from_dict({"dataset": "mnist5k", "input_norm": "dataset"}).resolved().input_norm == "dataset"
    with pytest.raises(ConfigError, match="input_norm"):
        TrialConfig.from_dict({"input_norm": "zscore"})


def test_generator_objective_defaults_to_the_authors_sum():
    assert TrialConfig.from_dict({}).gen_objective == "sum"
    assert TrialConfig.from_dict({"gen_objective": "mean"}).gen_objective == "mean"
    with pytest.raises(ConfigError, match="gen_objective"):
        TrialConfig.from_dict({"gen_objective": "max"})


def test_generator_batch_norms_use_the_authors_eps():
    from trainable.defenses.registry import build_generator

    cfg = TrialConfig.from_dict({"dataset": "mnist5k", "defense": "l2lda", "gen_width": 4}).resolved()
    assert cfg.gen_bn_eps == 1e-10
    for defense in ("l2lda", "l2l_star"):
        gen = build_generator(cfg.replace(defense=defense), (1, 28, 28), 10)
        eps = {m.eps for m in gen.modules() if isinstance(m, torch.nn.BatchNorm2d)}
        assert eps == {1e-10}, defense
    with pytest.raises(ConfigError, match="gen_bn_eps"):
        TrialConfig.from_dict({"gen_bn_eps": 0})


def test_a_stored_config_without_the_new_fields_loads_as_it_was_trained():
    cfg = TrialConfig.from_stored({"dataset": "mnist5k", "defense": "l2lda"})
    assert (cfg.input_norm, cfg.gen_objective, cfg.gen_bn_eps) == ("dataset", "mean", 1e-5)
    cfg = TrialConfig.from_stored({"dataset": "mnist5k", "input_norm": "auto", "gen_objective": "sum"})
    assert (cfg.resolved().input_norm, cfg.gen_objective) == ("none", "sum")


def test_cifar10_augments_every_defense():
    for d in BASELINES + OWN_METHOD:
        assert TrialConfig.from_dict({"dataset": "cifar10", "defense": d}).resolved().augment is True


def test_explicit_values_override_the_defense_default():
    r = TrialConfig.from_dict({"defense": "pgd10_at", "lr_decay_at": 0.25, "augment": True, "clf_grad_clip": 2.0}).resolved()
    assert (r.lr_decay_at, r.augment, r.clf_grad_clip) == (0.25, True, 2.0)
    assert TrialConfig.from_dict({"defense": "l2lda", "lr_decay_at": None}).resolved().lr_decay_at is None


@pytest.mark.parametrize("bad", ["soon", 1.5, -0.1, True])
def test_bad_lr_decay_at_is_a_one_line_error(bad):
    with pytest.raises(ConfigError, match="lr_decay_at") as err:
        TrialConfig.from_dict({"lr_decay_at": bad})
    assert "\n" not in str(err.value)


def _exp(defense, **kw):
    cfg = TrialConfig.from_dict({"dataset": "mnist5k", "defense": defense, "warmup": 100, "iterations": 1000,
                                 "threads": 1, "test_subset": 10, "val_subset": 10, **kw})
    return Experiment(cfg, log=lambda *a: None, use_cache=False)


def test_schedule_and_clip_as_the_training_loop_applies_them():
    own = _exp("l2lda", gen_width=4, T=1, lr_decay_at=0.5)
    assert [own.lr_at(i) for i in (0, 599, 600)] == pytest.approx([0.01, 0.01, 0.001])
    short = _exp("l2lda", gen_width=4, T=1)  # auto: the source's step 50,000 lies beyond this run
    assert {short.lr_at(i) for i in (0, 600, 1099)} == {0.01}
    assert (own.clip_at(99), own.clip_at(100)) == (0.0, 1.0)  # the clean warm-up never clips
    base = _exp("pgd10_at")
    assert {base.lr_at(i) for i in (0, 600, 1099)} == {0.01}
    assert (base.clip_at(99), base.clip_at(100)) == (0.0, 0.0)
