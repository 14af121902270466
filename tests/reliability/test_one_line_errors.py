"""Other inputs checked early (docs/reliability.md, "Other inputs checked early"): non-UTF-8
studies, bad --name or --storage, Optuna storage, seeds, devices, duplicate keys, ``when``
conditions that never hold, non-finite numbers, duplicate columns, and the eval, report, figure2 and
export flags are each refused in one line before any compute. Each refused case asserts the exit
code, one line on stderr, no traceback and an unchanged working tree (``refused`` in tests/_cli.py)."""
from __future__ import annotations

import pytest
import yaml

from _cli import fill, refused
from _specs import GOOD_STUDY, spec_file
from orchestrator.sweep import connect


BAD = [  # (spec dict or text or None, argv with {spec}/{tmp}, expected)
    (b"name: t\xff\xfe\nspace: {seed: 0}\n", ["--space", "{spec}"], "not UTF-8 text (byte 0xff"),
    (b"\xef\xbb\xbfname: t\nspace: {seed: 0}\n\x80", ["--space", "{spec}"], "not UTF-8 text"),
    (None, ["--space", "{spec}", "--name", "n" * 300], "--name:"),
    (None, ["--space", "{spec}", "--name", "a b"], "--name:"),
    (None, ["--space", "{spec}", "--name", ".hidden"], "--name:"),
    (None, ["--space", "{spec}", "--name", "../up"], "--name:"),
    (None, ["--space", "{spec}", "--storage", "foo://bucket"], "--storage: unknown filesystem 'foo'"),
    (None, ["--space", "{spec}", "--storage", "s3://"], "names no bucket"),
    ({**GOOD_STUDY, "space": {"lr": {"choice": [0.1, 0.01]}}, "search": {"type": "optuna", "metric": "val/natural",
      "storage": "sqlite:///{tmp}/missing/optuna.db"}}, ["--space", "{spec}"], "search.storage: directory"),
    ({**GOOD_STUDY, "space": {"lr": {"choice": [0.1, 0.01]}}, "search": {"type": "optuna", "metric": "val/natural",
      "storage": "postgresql://u@127.0.0.1/optuna"}}, ["--space", "{spec}"], "search.storage: the postgresql driver"),
    ({**GOOD_STUDY, "space": {"lr": {"choice": [0.1, 0.01]}}, "search": {"type": "optuna", "metric": "val/natural",
      "storage": "foo://x"}}, ["--space", "{spec}"], "search.storage: unknown database 'foo'"),
    ({**GOOD_STUDY, "search": {"seed": -1}}, ["--space", "{spec}"], "search.seed: must be in [0, 2**32), got -1"),
    ({**GOOD_STUDY, "search": {"seed": 2**40}}, ["--space", "{spec}"], "search.seed: must be in [0, 2**32)"),
    ({**GOOD_STUDY, "base": {**GOOD_STUDY["base"], "device": "cuda"}}, ["--space", "{spec}"], "base.device: 'cuda' but resources.gpu is 0"),
    ({**GOOD_STUDY, "base": {**GOOD_STUDY["base"], "device": "cuda:1"}, "resources": {"gpu": 0}}, ["--space", "{spec}"],
     "resources.gpu is 0"),
    ("name: t\nname: u\nspace: {seed: 0}\n", ["--space", "{spec}"], "duplicate key 'name' (first at line 1) at line 2"),
    ("name: t\nbase: {lr: 0.1, lr: 0.2}\nspace: {seed: 0}\n", ["--space", "{spec}"], "duplicate key 'lr'"),
    ("name: t\nspace: {seed: {grid: [0]}, seed: 1}\n", ["--space", "{spec}"], "duplicate key 'seed'"),
    ({**GOOD_STUDY, "base": {**GOOD_STUDY["base"], "diversity": False},
      "space": {"seed": {"grid": [0, 1]}, "lam": {"grid": [0.1], "when": {"diversity": True}}}},
     ["--space", "{spec}"], "space.lam.when.diversity: diversity is False (base) in every trial"),
    ({**GOOD_STUDY, "space": {"seed": {"grid": [0, 1]}, "T": {"grid": [3], "when": {"defense": "l2lda"}}}},
     ["--space", "{spec}"], "space.T.when.defense: defense is 'plain' (base)"),
    ({**GOOD_STUDY, "base": {k: v for k, v in GOOD_STUDY["base"].items() if k != "defense"},
      "space": {"seed": {"grid": [0, 1]}, "T": {"grid": [3], "when": {"recursive": False}}}},
     ["--space", "{spec}"], "recursive is True (the default) in every trial"),
    ("name: t\nbase: {weight_decay: .inf}\nspace: {seed: 0}\n", ["--space", "{spec}"], "non-finite number '.inf'"),
    ("name: t\nbase: {lr: .nan}\nspace: {seed: 0}\n", ["--space", "{spec}"], "non-finite number '.nan'"),
    ("name: t\nspace: {lr: {uniform: [0.01, .inf]}}\nsearch: {type: random}\n", ["--space", "{spec}"], "non-finite"),
    ("name: t\nspace: {seed: 0}\nresources: {cpu: -.inf}\n", ["--space", "{spec}"], "non-finite"),
    ({**GOOD_STUDY, "base": {**GOOD_STUDY["base"], "val_columns": ["natural", "natural"]}}, ["--space", "{spec}"],
     "base.val_columns: has a duplicate column (natural)"),
    ({**GOOD_STUDY, "base": {**GOOD_STUDY["base"], "val_columns": []}}, ["--space", "{spec}"], "val_columns: must name at least one"),
    (None, ["eval", "--checkpoint", "{tmp}/x", "--device", "tpu"], "--device 'tpu': expected cpu, cuda or cuda:N"),
    (None, ["eval", "--checkpoint", "{tmp}/x", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (None, ["eval", "--checkpoint", "{tmp}/x", "--out", "{tmp}/afile"], "--out {tmp}/afile: is a file"),
    (None, ["eval", "--compare", "{tmp}/a", "{tmp}/b", "--out", "{tmp}/afile"], "is a file"),
    (None, ["eval", "--checkpoint", "{tmp}/x", "--out", "{tmp}/afile/sub"], "cannot be created"),
    (None, ["report", "--experiment", "e", "--out", "{tmp}/afile"], "--out {tmp}/afile: is a file"),
    (None, ["figure2", "--checkpoint", "{tmp}/x", "--out", "{tmp}/f", "--images", "0"], "'--images': 0 is not in the range"),
    (None, ["figure2", "--checkpoint", "{tmp}/x", "--out", "{tmp}/f", "--draws", "0"], "'--draws': 0 is not in the range"),
    (None, ["figure2", "--checkpoint", "{tmp}/x", "--out", "{tmp}/afile"], "is a file"),
    (None, ["export", "--experiment", "e", "--out", "{tmp}/afile"], "--out {tmp}/afile: is a file"),
    (None, ["export", "--experiment", "e", "--out", "{tmp}/o", "--register", " "], "--register: empty model name"),
]


@pytest.mark.parametrize("spec,argv,expected", BAD, ids=[f"{i}-{e[:30]}" for i, (_, _, e) in enumerate(BAD)])
def test_bad_input_one_line_before_compute(spec, argv, expected, no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    (no_run / "afile").write_text("not a folder")
    if isinstance(spec, dict):
        text = yaml.safe_dump(spec, sort_keys=False).replace("{tmp}", str(no_run))
        spec_file(no_run, text=text)
    elif spec is not None:
        spec_file(no_run, text=spec)
    else:
        spec_file(no_run)
    args = fill(argv, spec=str(no_run / "spec.yaml"), tmp=str(no_run))
    refused(args, capsys, no_run, expected.format(tmp=no_run))


def test_one_value_conditional_grid_still_allowed(tmp_path):
    from orchestrator.spec.load import load_spec

    raw = {**GOOD_STUDY, "base": {**GOOD_STUDY["base"], "defense": "l2lda"},
           "space": {"recursive": {"grid": [True, False]}, "T": {"grid": [3], "when": {"recursive": True}}}}
    study = load_spec(spec_file(tmp_path, raw))
    assert study.trial_count() == 2 and study.params["T"].when
