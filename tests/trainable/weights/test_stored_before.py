"""Checkpoints and exports written before `input_norm` and `gen_objective` existed load as they were trained.

Earlier versions normalised every classifier by its dataset's statistics and averaged the
generator's losses over the T steps; their config files name neither (docs/method.md,
"Classifiers").
"""
from __future__ import annotations

import json

import torch

from trainable.config import TrialConfig
from trainable.experiment.loop import Experiment
from trainable.weights.export_dir import load_checkpoint_modules, load_export, load_state_dict_file, save_export

NEW_KEYS = ("input_norm", "gen_objective")


def _old_style_checkpoint(tmp_path, cache_dir):
    cfg = TrialConfig.from_dict(dict(dataset="mnist5k", defense="l2lda", warmup=5, iterations=5, batch_size=10,
                                     gen_width=4, T=2, threads=1, cache_dir=cache_dir, input_norm="dataset",
                                     gen_objective="mean", steps_per_report=5, val_subset=10, test_subset=10))
    exp = Experiment(cfg, log=lambda m: None, use_cache=False)
    exp.train(10)
    d = tmp_path / "old"
    exp.save(d)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in NEW_KEYS}))
    return exp, d


def test_an_old_checkpoint_loads_with_its_normalisation_and_objective(tmp_path, cache_dir):
    exp, d = _old_style_checkpoint(tmp_path, cache_dir)
    x = exp.data.test_x[:16]
    want = exp.classifier.eval()(x)
    cfg, clf, gen, _ = load_checkpoint_modules(d)
    assert cfg.input_norm == "dataset" and cfg.gen_objective == "mean"
    assert "normalize.mean" in dict(clf.named_buffers()) and gen is not None
    assert torch.equal(clf(x), want)
    resumed = Experiment.from_checkpoint(d, log=lambda m: None)
    assert (resumed.cfg.input_norm, resumed.cfg.gen_objective, resumed.iteration) == ("dataset", "mean", 10)
    assert torch.equal(resumed.classifier.eval()(x), want)


def test_an_old_export_and_an_old_state_dict_file_load_as_trained(tmp_path, cache_dir):
    exp, d = _old_style_checkpoint(tmp_path, cache_dir)
    x = exp.data.test_x[:16]
    want = exp.classifier.eval()(x)
    config = {k: v for k, v in exp.cfg.to_dict().items() if k not in NEW_KEYS}
    out = save_export(tmp_path / "export", exp.classifier.state_dict(), config)
    assert torch.equal(load_export(out)(x), want)
    torch.save(exp.classifier.state_dict(), tmp_path / "old.pt")  # a plain file carrying the buffers
    _, clf = load_state_dict_file(tmp_path / "old.pt")
    assert torch.equal(clf(x), want)
    # a new export records its choice and rebuilds the raw-pixel LeNet-5
    new = TrialConfig.from_dict({**config, "input_norm": "auto"}).resolved()
    fresh = Experiment(new.replace(warmup=0, iterations=0), log=lambda m: None, use_cache=False)
    out2 = save_export(tmp_path / "export2", fresh.classifier.state_dict(), new.to_dict())
    assert json.loads((out2 / "config.json").read_text())["input_norm"] == "none"
    assert not dict(load_export(out2).named_buffers())
