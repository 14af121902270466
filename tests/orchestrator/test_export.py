"""`l2lda-tune export` / `eval` and the export loader: round trips and hostile files (DESIGN §7)."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from _fake_runs import fake_trial_run, make_sweep, runs_of
from _hostile_pickles import Payload, hostile_checkpoint
from orchestrator.evaluate import EvalError, eval_command
from orchestrator.export import ExportError, export_command
from orchestrator.tracking import TrackingUnavailable, make_client
from trainable.weights.checkpoint import CheckpointError
from trainable.weights.export_dir import (CLASSIFIER_FILE, GENERATOR_FILE, load_checkpoint_modules, load_export,
                                 load_export_generator, load_state_dict_file)


def test_payload_really_runs_under_plain_pickle(tmp_path):
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()  # so the refusals below are meaningful


def accuracy(model, indices) -> float:
    from trainable.data import load_dataset

    data = load_dataset("mnist5k")
    idx = torch.as_tensor(np.asarray(indices))
    with torch.no_grad():
        pred = model(data.test_x[idx]).argmax(1)
    return int((pred == data.test_y[idx]).sum()) / len(idx)


@pytest.fixture(scope="module")
def exported(store, tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    make_sweep(store, "unit-export", tiny_run, tmp)
    out = tmp / "best"
    summary = export_command("unit-export", out, tracking_uri=store, log=None)
    return summary, out


def test_export_then_load_reproduces_natural_accuracy(store, tiny_run, exported):
    config, results, ckpt = tiny_run
    summary, out = exported
    client, parents, children = runs_of(store, "unit-export")
    assert summary["run_id"] == children["a0001"].info.run_id  # b has lower val/ numbers, c failed
    assert summary["metric"] == "val/natural" and summary["mode"] == "max"  # the study's first objective
    for f in (CLASSIFIER_FILE, "config.json", "export.json", "robustness_matrix.json", "model_card.md"):
        assert (out / f).is_file(), f
    assert not (out / GENERATOR_FILE).exists()  # plain defense: no generator
    model = load_export(out)
    assert not model.training
    matrix = results[-1]["matrix"]
    assert accuracy(model, matrix["indices"]) == pytest.approx(matrix["metrics"]["matrix/natural"], abs=1e-9)
    card = (out / "model_card.md").read_text()
    assert summary["run_id"] in card and "not the paper's C&W" in card and "mnist5k" in card
    # the study, the trial and the evaluation profile, and the RobustBench entry beside the weights
    assert "`unit-export`" in card and "## Evaluation profile" in card and "100 test points" in card
    assert children["a0001"].data.tags["trial_name"] in card
    entry = json.loads((out / "robustbench_entry.json").read_text())
    assert entry["clean_acc"] == f"{100 * results[-1]['matrix']['metrics']['matrix/natural']:.2f}"
    assert "autoattack_acc" not in entry  # this trial's matrix ran natural and fgsm only
    assert "the matrix did not run autoattack" in entry["footnote"]
    assert json.loads(card.split("```json")[1].split("```")[0]) == entry
    import runpy

    loaded = runpy.run_path(str(out / "load_model.py"))["load_model"]()
    assert accuracy(loaded, matrix["indices"]) == pytest.approx(matrix["metrics"]["matrix/natural"], abs=1e-9)
    info = json.loads((out / "export.json").read_text())
    assert info["mlflow"]["run_id"] == summary["run_id"] and info["checkpoint"]["iteration"] == 30
    # eval of the export reproduces the recorded matrix column by column on the same points.
    res = eval_command(export=str(out), columns=["natural", "fgsm"], test_subset=100, log=None,
                       out=str(out / "eval"))
    assert res.metrics["matrix/natural"] == pytest.approx(matrix["metrics"]["matrix/natural"])
    assert res.metrics["matrix/fgsm"] == pytest.approx(matrix["metrics"]["matrix/fgsm"])
    assert (out / "eval" / "robustness_matrix.parquet").is_file()


def test_export_selection_errors(store, exported, tmp_path):
    with pytest.raises(ExportError, match="val/"):
        export_command("unit-export", tmp_path / "x", metric="matrix/natural", tracking_uri=store, log=None)
    with pytest.raises(ExportError, match="not found.*unit-export"):
        export_command("no-such-study", tmp_path / "x", tracking_uri=store, log=None)
    with pytest.raises(ExportError, match="none with metric"):
        export_command("unit-export", tmp_path / "x", metric="val/pgd1000", tracking_uri=store, log=None)
    s = export_command("unit-export", tmp_path / "w", metric="val/worst", tracking_uri=store, log=None)
    assert s["metric"] == "val/worst"
    with pytest.raises(TrackingUnavailable, match="no MLflow database"):
        export_command("unit-export", tmp_path / "x", tracking_uri=f"sqlite:///{tmp_path}/none.db", log=None)
    assert not (tmp_path / "none.db").exists()  # reading never creates a store


def test_no_finished_run_and_missing_checkpoint(store, tmp_path):
    fake_trial_run(store, "unit-failed-only", str(tmp_path), status="FAILED")
    with pytest.raises(ExportError, match="no FINISHED trial run"):
        export_command("unit-failed-only", tmp_path / "x", tracking_uri=store, log=None)
    fake_trial_run(store, "unit-gone", str(tmp_path / "deleted"))
    with pytest.raises(CheckpointError, match="not found"):
        export_command("unit-gone", tmp_path / "x", tracking_uri=store, log=None)


def test_pickle_payload_is_refused_everywhere_without_running(store, tiny_run, tmp_path):
    config, results, ckpt = tiny_run
    marker = tmp_path / "pwned"
    evil = hostile_checkpoint(ckpt, tmp_path / "evil_ckpt", marker)
    fake_trial_run(store, "unit-evil", str(evil))
    with pytest.raises(CheckpointError, match="pickled objects") as ei:
        export_command("unit-evil", tmp_path / "x", tracking_uri=store, log=None)
    assert "\n" not in str(ei.value)
    with pytest.raises(CheckpointError, match="pickled objects"):
        eval_command(checkpoint=str(evil), log=None)
    torch.save({"conv1.weight": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled objects"):
        load_state_dict_file(tmp_path / "evil.pt")
    # An export whose weights file was swapped for a pickle.
    exp_dir = tmp_path / "evil_export"
    exp_dir.mkdir()
    shutil.copyfile(Path(ckpt) / "config.json", exp_dir / "config.json")
    (exp_dir / CLASSIFIER_FILE).write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(CheckpointError, match="no export.json"):  # no recorded hash: refused before it is parsed
        load_export(exp_dir)
    assert not marker.exists()


def test_truncated_checkpoint_and_export_are_one_line_errors(tiny_run, exported, tmp_path):
    config, results, ckpt = tiny_run
    bad = tmp_path / "trunc"
    shutil.copytree(ckpt, bad)
    data = (bad / "state.pt").read_bytes()
    (bad / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as ei:
        load_checkpoint_modules(bad)
    assert "\n" not in str(ei.value)
    _, out = exported
    cut = tmp_path / "cut_export"
    shutil.copytree(out, cut)
    blob = (cut / CLASSIFIER_FILE).read_bytes()
    (cut / CLASSIFIER_FILE).write_bytes(blob[: len(blob) - 100])
    with pytest.raises(CheckpointError, match="SHA-256|truncated") as ei:
        load_export(cut)
    assert "\n" not in str(ei.value)
    (cut / "export.json").unlink()  # without the recorded hashes the weights are refused
    with pytest.raises(CheckpointError, match="no export.json"):
        load_export(cut)
    with pytest.raises(EvalError, match="exactly one"):
        eval_command(checkpoint=str(ckpt), export=str(out), log=None)


def test_eval_plain_state_dict_files(tiny_run, tmp_path):
    from safetensors.torch import save_file

    config, results, ckpt = tiny_run
    _, clf, _, _ = load_checkpoint_modules(ckpt)
    sd = {k: v for k, v in clf.state_dict().items() if not k.startswith("normalize.")}  # a foreign-style file
    torch.save(sd, tmp_path / "lenet.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "lenet.safetensors"))
    want = results[-1]["matrix"]["metrics"]["matrix/natural"]
    for f in ("lenet.pt", "lenet.safetensors"):
        res = eval_command(checkpoint=str(tmp_path / f), columns=["natural"], test_subset=100, log=None)
        assert res.metrics["matrix/natural"] == pytest.approx(want), f
    with pytest.raises(CheckpointError, match="do not fit"):
        load_state_dict_file(tmp_path / "lenet.pt", dataset="cifar10")  # LeNet-5 weights, ResNet-20 model


def test_generator_export_round_trip(store, cache_dir, tmp_path):
    from trainable.config import TrialConfig
    from trainable.experiment.loop import Experiment

    cfg = TrialConfig.from_dict(dict(dataset="mnist5k", defense="l2lda", warmup=0, iterations=0, gen_width=8, T=2,
                                     test_subset=50, cache_dir=cache_dir, threads=1))
    exp = Experiment(cfg)
    ckpt = tmp_path / "gen_ckpt"
    exp.save(ckpt)
    fake_trial_run(store, "unit-gen", str(ckpt))
    export_command("unit-gen", tmp_path / "out", tracking_uri=store, log=None)
    gen = load_export_generator(tmp_path / "out")
    assert not gen.training
    for k, v in exp.defense.generator.state_dict().items():
        assert torch.equal(gen.state_dict()[k], v), k
    (tmp_path / "out" / GENERATOR_FILE).unlink()
    with pytest.raises(CheckpointError, match="no generator.safetensors"):
        load_export_generator(tmp_path / "out")


def test_register_logs_and_registers_the_model(store, exported, tmp_path):
    summary, out = exported
    s = export_command("unit-export", tmp_path / "reg", register="unit-lenet", tracking_uri=store, log=None)
    assert s["registered"] == "1"
    client = make_client(store)
    mv = client.get_model_version("unit-lenet", "1")
    assert mv.run_id == summary["run_id"]
    # the classifier the sweep logged for that trial is what gets registered, not a second copy
    assert mv.source == f"models:/{client.get_run(summary['run_id']).data.tags['model_id']}"
    assert client.get_run(summary["run_id"]).info.status == "FINISHED"
