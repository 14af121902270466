"""Registries and plug-ins (docs/extending.md): names are taken once, entries are typed, a broken
plug-in names itself, the example plug-in's entries sit beside ours, and old import paths work."""
from __future__ import annotations

import importlib

import pytest

from trainable.attacks import COLUMNS, ColumnEntry, with_role
from trainable.config import ConfigError, TrialConfig
from trainable.data import DATASETS
from trainable.defenses import DEFENSES
from trainable.models import CLASSIFIERS, build_classifier, count_parameters
from trainable.registry import Registry, RegistryError


def test_a_name_is_taken_once_and_entries_are_typed():
    reg: Registry[ColumnEntry] = Registry("attack column", "l2lda_tune.nothing_here", ColumnEntry)
    reg.add(ColumnEntry("a", "gradient", attack=lambda *a, **k: None))
    with pytest.raises(RegistryError, match="already registered"):
        reg.add(ColumnEntry("a", "gradient", attack=lambda *a, **k: None))
    with pytest.raises(RegistryError, match="expected a"):
        reg.add("not an entry")
    with pytest.raises(RegistryError, match=r"unknown attack column 'b' \(choose from a\)"):
        reg["b"]
    with pytest.raises(RegistryError, match="kind"):
        ColumnEntry("c", "magic", attack=lambda *a, **k: None)


def test_a_broken_plugin_names_its_entry_point(monkeypatch):
    import importlib.metadata as md

    broken = md.EntryPoint("oops", "no_such_module_here:THING", "l2lda_tune.broken")
    monkeypatch.setattr(md, "entry_points", lambda group=None: [broken] if group == "l2lda_tune.broken" else [])
    reg = Registry("defense", "l2lda_tune.broken", ColumnEntry)
    with pytest.raises(RegistryError) as exc:
        reg.names()
    assert "'oops'" in str(exc.value) and "no_such_module_here" in str(exc.value) and "\n" not in str(exc.value)


def test_the_example_plugin_adds_one_entry_per_kind_after_ours():
    assert COLUMNS.names()[-1] == "rfgsm" and "rfgsm" in with_role("whitebox")
    assert DEFENSES.names()[-1] == "fgsm_rs_at" and DEFENSES["fgsm_rs_at"].adversarial
    assert DATASETS.names()[-1] == "npz_digits" and CLASSIFIERS.names()[-1] == "mlp"
    cfg = TrialConfig.from_dict({"defense": "fgsm_rs_at", "model": "mlp", "eval_columns": ["natural", "rfgsm"]})
    assert cfg.resolved().augment is False and cfg.resolved().clf_grad_clip == 0.0  # the entry's defaults
    m = build_classifier("mlp", "mnist5k")
    assert "normalize.mean" in dict(m.named_buffers()) and count_parameters(m) > 0
    with pytest.raises(ConfigError, match="unknown defense 'nope'.*fgsm_rs_at"):
        TrialConfig.from_dict({"defense": "nope"})


@pytest.mark.parametrize("old", ["trainable.runner", "trainable.autoattack", "trainable.genattacks", "trainable.transfer",
                                 "trainable.l2lda", "trainable.generator", "trainable.checks", "trainable.figure2",
                                 "trainable.export_io", "trainable.checkpoint", "trainable.fast", "trainable._moved"])
def test_module_paths_of_earlier_versions_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_what_ray_pickles_from_trainable_imports_where_it_lives():
    from trainable.trainable import L2LDATrainable, with_resources  # noqa: F401  (Ray's tuner.pkl names it)

    assert L2LDATrainable.__module__ == "trainable.trainable"
