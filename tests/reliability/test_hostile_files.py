"""Hostile and broken files (issue 6 §6), on top of tests/orchestrator/test_export.py (which already shows
that `export_command`, `eval_command`, `load_state_dict_file` and `load_export` refuse a pickle
payload and a truncated file): here the remaining entry points — ``Experiment.from_checkpoint``
and the `l2lda-tune export` / `eval` command lines (exit 2, one line, payload never run) — and
mismatched checkpoints (another architecture, another dataset), and `--resume` on directories
that are not (usable) sweeps.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _cli import invoke  # one CLI call in-process: (exit code, stdout, stderr)
from _fake_runs import fake_trial_run
from _hostile_pickles import Payload, hostile_checkpoint
from trainable.weights.checkpoint import CheckpointError
from trainable.experiment.loop import Experiment


def one_line_exit_2(argv: list[str], capsys, expected: str) -> str:
    code, out, err = invoke(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("l2lda-tune: error: ") and expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def evil(tiny_run, tmp_path):
    """A copy of a real checkpoint whose state.pt carries a payload that would create `marker`."""
    marker = tmp_path / "pwned"
    ckpt = hostile_checkpoint(tiny_run[2], tmp_path / "evil_ckpt", marker)
    yield ckpt, marker
    assert not marker.exists(), "the pickle payload was executed"


def test_from_checkpoint_refuses_a_pickle_payload(evil):
    ckpt, marker = evil
    with pytest.raises(CheckpointError, match="pickled objects") as ei:
        Experiment.from_checkpoint(ckpt)
    assert "\n" not in str(ei.value)


def test_cli_eval_and_export_refuse_a_pickle_payload(evil, store, capsys, tmp_path):
    ckpt, marker = evil
    one_line_exit_2(["eval", "--checkpoint", str(ckpt), "--columns", "natural", "--test-subset", "16"], capsys,
                    "carries pickled objects")
    fake_trial_run(store, "rel-evil", str(ckpt))
    one_line_exit_2(["export", "--experiment", "rel-evil", "--out", str(tmp_path / "out"), "--tracking-uri", store],
                    capsys, "carries pickled objects")
    assert not (tmp_path / "out" / "classifier.safetensors").exists()
    # a plain state-dict file with a payload, through eval's plain-file path
    import torch

    torch.save({"conv1.weight": Payload(str(marker))}, tmp_path / "evil.pt")
    one_line_exit_2(["eval", "--checkpoint", str(tmp_path / "evil.pt")], capsys, "carries pickled objects")


def _edited(src: str, dst: Path, **changes: str) -> Path:
    """A copy of checkpoint `src` whose config and meta claim other settings (weights unchanged)."""
    shutil.copytree(src, dst)
    for name in ("config.json", "meta.json"):
        data = json.loads((dst / name).read_text())
        data.update(changes)
        (dst / name).write_text(json.dumps(data))
    return dst


def test_mismatched_checkpoints_are_one_line_errors(tiny_run, tmp_path, capsys):
    config, _, ckpt = tiny_run
    # LeNet-5 weights under a ResNet-20 label: the weights do not fit the model it builds.
    wrong_arch = _edited(ckpt, tmp_path / "arch", model="resnet20")
    one_line_exit_2(["eval", "--checkpoint", str(wrong_arch), "--columns", "natural", "--test-subset", "16"], capsys,
                    "weights do not fit")
    with pytest.raises(CheckpointError, match="weights do not fit") as ei:
        Experiment.from_checkpoint(wrong_arch)
    assert "\n" not in str(ei.value)
    # a trial of one dataset/model/defense never restores another's checkpoint
    from trainable.config import TrialConfig

    exp = Experiment(TrialConfig.from_dict({**config, "iterations": 1}))
    for key, value in (("dataset", "cifar10"), ("model", "resnet20"), ("defense", "fgsm_at")):
        d = tmp_path / f"meta-{key}"
        shutil.copytree(ckpt, d)
        meta = json.loads((d / "meta.json").read_text())
        meta[key] = value
        (d / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=f"checkpoint is for {key}='{value}'") as ei:
            exp.restore(d)
        assert "\n" not in str(ei.value)
    # truncated state file, and a checkpoint directory without its files, through the CLI
    cut = tmp_path / "cut"
    shutil.copytree(ckpt, cut)
    blob = (cut / "state.pt").read_bytes()
    (cut / "state.pt").write_bytes(blob[: len(blob) // 3])
    one_line_exit_2(["eval", "--checkpoint", str(cut)], capsys, "corrupt or truncated checkpoint")
    (tmp_path / "empty").mkdir()
    one_line_exit_2(["eval", "--checkpoint", str(tmp_path / "empty")], capsys, "holds neither a checkpoint")


GOOD = "name: t\nbase: {dataset: mnist5k, iterations: 2, warmup: 0, steps_per_report: 2}\nspace: {seed: {grid: [0, 1]}}\n"


def test_resume_on_a_checkpoint_directory_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    """A trial checkpoint is not a sweep (tests/orchestrator/test_cli.py covers a missing directory)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(GOOD)
    shutil.copytree(tiny_run[2], tmp_path / "runs" / "ck")
    one_line_exit_2(["--space", "s.yaml", "--resume", "--name", "ck"], capsys, "is not a sweep directory")
    assert not list(tmp_path.rglob("*.db"))


def test_resume_on_a_broken_sweep_state_is_one_line(ray_session, tmp_path, capsys, monkeypatch):
    """A sweep directory whose pickled Tune state is truncated: one line, exit 2, no MLflow run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(GOOD)
    sw = tmp_path / "runs" / "sw"
    sw.mkdir(parents=True)
    (sw / "tuner.pkl").write_bytes(b"\x80\x04\x95")  # a pickle cut short
    (sw / "experiment_state-2026-11-24.json").write_text("{}")
    one_line_exit_2(["--space", "s.yaml", "--resume", "--name", "sw"], capsys, "is not a usable sweep")
    assert ray_session.is_initialized()  # the session's Ray is left as it was
    assert not list(tmp_path.rglob("*.db")), "no tracking store may be created"


def test_a_refused_pickle_file_prints_no_torch_warning(tmp_path):
    # A plain pickle (protocol 4, not torch.save's) makes torch warn in two lines before it refuses the
    # file; our loaders keep the refusal to our one line.
    import pickle
    import warnings

    from trainable.weights.checkpoint import safe_torch_load

    marker = tmp_path / "pwned"
    p = tmp_path / "plain.pt"
    p.write_bytes(pickle.dumps({"conv1.weight": Payload(str(marker))}, protocol=4))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="carries pickled objects") as ei:
            safe_torch_load(p)
    assert not marker.exists()
    assert "\n" not in str(ei.value)
    assert [str(w.message) for w in seen] == []
