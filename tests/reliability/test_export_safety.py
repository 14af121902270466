"""Exports that never write or read outside their folder (docs/reliability.md, "Exports"):
a non-empty --out needs --force, symlinks inside --out are replaced rather than written
through, a weights file is loaded only against its recorded SHA-256 and only from inside the
folder, config.json must name the model, integer-typed weights are refused. Each CLI case:
exit 2, one line, no traceback, nothing outside the export changed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _cli import invoke
from _fake_runs import fake_trial_run
from _files import tree
from trainable.weights.checkpoint import CheckpointError
from trainable.weights.export_dir import CLASSIFIER_FILE, load_export


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A real (tiny) checkpoint recorded as the FINISHED trial of experiment `safe` in a fresh store."""
    from trainable.config import TrialConfig
    from trainable.experiment.loop import Experiment

    tmp = tmp_path_factory.mktemp("safe")
    cfg = TrialConfig.from_dict(dict(dataset="mnist5k", defense="plain", iterations=2, warmup=0, batch_size=8,
                                     steps_per_report=2, val_subset=8, test_subset=8, cache_dir=str(tmp / "c"),
                                     threads=1))
    exp = Experiment(cfg)
    ckpt = tmp / "ckpt"
    exp.save(ckpt)
    store = f"sqlite:///{tmp}/mlflow.db"
    fake_trial_run(store, "safe", str(ckpt))
    return store, tmp


def export(argv: list[str], capsys, store: str) -> tuple[int, str, str]:
    return invoke(["export", "--experiment", "safe", "--tracking-uri", store, *argv], capsys)


def one_line(rc: int, err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in err, (rc, err)


def test_non_empty_out_refused_without_force(source, tmp_path, capsys):
    store, _ = source
    other = tmp_path / "other_model"
    other.mkdir()
    (other / CLASSIFIER_FILE).write_bytes(b"another model's weights")
    (other / "config.json").write_text('{"dataset": "cifar10"}')
    before = tree(tmp_path)
    rc, out, err = export(["--out", str(other)], capsys, store)
    one_line(rc, err, "is not empty (2 entries")
    assert tree(tmp_path) == before
    rc, out, err = export(["--out", str(other), "--force"], capsys, store)
    assert rc == 0, err
    assert json.loads((other / "config.json").read_text())["dataset"] == "mnist5k"
    load_export(other)


def test_symlinks_in_out_are_replaced_not_written_through(source, tmp_path, capsys):
    store, _ = source
    outside = tmp_path / "precious"
    outside.mkdir()
    for name in (CLASSIFIER_FILE, "config.json", "export.json", "model_card.md", "generator.safetensors"):
        (outside / name).write_text(f"precious {name}")
    keep = tree(outside)
    out = tmp_path / "out"
    out.mkdir()
    for name in (CLASSIFIER_FILE, "config.json", "export.json", "model_card.md", "generator.safetensors"):
        (out / name).symlink_to(outside / name)
    rc, _, err = export(["--out", str(out)], capsys, store)
    one_line(rc, err, "is not empty")
    rc, _, err = export(["--out", str(out), "--force"], capsys, store)
    assert rc == 0, err
    assert tree(outside) == keep, "an export wrote through a symlink"
    assert not any((out / n).is_symlink() for n in (CLASSIFIER_FILE, "config.json", "export.json", "model_card.md"))
    assert not (out / "generator.safetensors").exists() and (outside / "generator.safetensors").exists()
    load_export(out)


def test_out_file_and_empty_register_write_nothing(source, tmp_path, capsys):
    store, _ = source
    (tmp_path / "afile").write_text("x")
    before = tree(tmp_path)
    rc, _, err = export(["--out", str(tmp_path / "afile")], capsys, store)
    one_line(rc, err, "is a file")
    rc, _, err = export(["--out", str(tmp_path / "new"), "--register", "  "], capsys, store)
    one_line(rc, err, "--register: empty model name")
    rc, _, err = export(["--out", str(tmp_path / "new2"), "--metric", "matrix/natural"], capsys, store)
    one_line(rc, err, "validation metrics only")
    assert tree(tmp_path) == before, "a failed export left files"


@pytest.fixture
def good_export(source, tmp_path, capsys):
    store, _ = source
    rc, _, err = export(["--out", str(tmp_path / "e")], capsys, store)
    assert rc == 0, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"
    return tmp_path / "e"


def _eval_refuses(d: Path, capsys, expected: str) -> None:
    rc, out, err = invoke(["eval", "--export", str(d), "--test-subset", "4", "--columns", "natural"], capsys)
    one_line(rc, err, expected)


def test_weights_symlinked_out_of_the_folder_refused(good_export, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(good_export / CLASSIFIER_FILE, elsewhere)
    (good_export / CLASSIFIER_FILE).symlink_to(elsewhere)
    with pytest.raises(CheckpointError, match="symlink out of the export folder"):
        load_export(good_export)
    (good_export / "export.json").unlink()  # without hashes it is refused all the more
    with pytest.raises(CheckpointError, match="symlink out of the export folder|no export.json"):
        load_export(good_export)
    _eval_refuses(good_export, capsys, "symlink out of the export folder")


def test_config_symlinked_out_refused(good_export, tmp_path, capsys):
    (tmp_path / "cfg.json").write_text((good_export / "config.json").read_text())
    (good_export / "config.json").unlink()
    (good_export / "config.json").symlink_to(tmp_path / "cfg.json")
    with pytest.raises(CheckpointError, match="symlink out of the export folder"):
        load_export(good_export)


def test_missing_hashes_refused(good_export, capsys):
    (good_export / "export.json").unlink()
    with pytest.raises(CheckpointError, match="no export.json"):
        load_export(good_export)
    _eval_refuses(good_export, capsys, "no export.json")


def test_hash_not_recorded_refused(good_export):
    meta = json.loads((good_export / "export.json").read_text())
    meta["files"] = {}
    (good_export / "export.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records no SHA-256"):
        load_export(good_export)


@pytest.mark.parametrize("content,expected", [("{}", "lacks dataset, model, defense"),
                                               ('{"dataset": "mnist5k"}', "lacks model, defense"),
                                               ("", "config.json"), ("[]", "expected a JSON object")])
def test_empty_or_partial_config_refused(good_export, content, expected, capsys):
    (good_export / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=expected.replace("(", r"\(")):
        load_export(good_export)
    _eval_refuses(good_export, capsys, expected)


def test_integer_weights_refused_not_cast(good_export):
    from safetensors.torch import load_file, save_file

    from trainable.weights import export_dir as export_io

    state = load_file(str(good_export / CLASSIFIER_FILE))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].round().to(torch.int32)
    save_file(state, str(good_export / CLASSIFIER_FILE))
    meta = json.loads((good_export / "export.json").read_text())
    meta["files"][CLASSIFIER_FILE] = export_io._sha256(good_export / CLASSIFIER_FILE)  # hash matches: dtype decides
    (good_export / "export.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{key} holds int32 values where the model has float32"):
        load_export(good_export)
