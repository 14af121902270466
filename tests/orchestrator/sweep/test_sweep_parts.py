"""The parts of a sweep that need no Ray (orchestrator/sweep/): where it lives, whether a trial can be
placed, what the summary says about failures, how a stop is worded."""
from __future__ import annotations

import os
import time

import pytest

from orchestrator.spec.schema import SpecError
from orchestrator.spec.study import build_study
from orchestrator.sweep import connect, signals, storage, summary

STUDY = {"name": "st", "base": {"dataset": "mnist5k", "defense": "plain"}, "space": {"seed": {"grid": [0, 1]}}}


def _sweep_dir(root, name, mtime):
    d = root / name
    d.mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(b"x")
    (d / "experiment_state-2026.json").write_text("{}")
    os.utime(d, (mtime, mtime))
    return d


def test_names_a_fresh_sweep_and_finds_the_newest_to_resume(tmp_path):
    study = build_study(STUDY)
    assert storage.sweep_name(study, "mine", str(tmp_path), resume=True) == "mine"
    assert storage.sweep_name(study, None, str(tmp_path), resume=False).startswith("st-")
    with pytest.raises(storage.ResumeError, match="no sweep of study 'st'"):
        storage.sweep_name(study, None, str(tmp_path), resume=True)
    now = time.time()
    _sweep_dir(tmp_path, "st-old", now - 100)
    _sweep_dir(tmp_path, "st-new", now)
    (tmp_path / "st-not-a-sweep").mkdir()  # no tuner.pkl: never picked
    assert storage.sweep_name(study, None, str(tmp_path), resume=True) == "st-new"
    with pytest.raises(storage.ResumeError, match="pass --name with a remote storage"):
        storage.sweep_name(study, None, "s3://bucket/runs", resume=True)


def test_a_fresh_sweep_never_writes_into_an_old_one_and_resume_needs_one(tmp_path):
    _sweep_dir(tmp_path, "sw", time.time())
    storage.check_sweep_dir(str(tmp_path), "sw", resume=True)
    with pytest.raises(storage.ResumeError, match="already holds a sweep"):
        storage.check_sweep_dir(str(tmp_path), "sw", resume=False)
    (tmp_path / "empty").mkdir()
    storage.check_sweep_dir(str(tmp_path), "empty", resume=False)
    with pytest.raises(storage.ResumeError, match="is not a sweep directory"):
        storage.check_sweep_dir(str(tmp_path), "empty", resume=True)
    storage.check_sweep_dir("s3://bucket/runs", "sw", resume=True)  # remote: Tune's restore decides


def test_storage_is_checked_without_creating_anything(tmp_path):
    storage.check_storage(str(tmp_path / "a" / "b"))
    assert not (tmp_path / "a").exists()
    storage.check_storage("s3://bucket/runs")
    with pytest.raises(SpecError, match="unknown filesystem 'ftp'"):
        storage.check_storage("ftp://host/runs")
    with pytest.raises(SpecError, match="names no bucket or path"):
        storage.check_storage("s3://")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError, match="is not a directory"):
        storage.check_storage(str(tmp_path / "file" / "runs"))


def test_placement_names_what_no_node_has():
    study = build_study({**STUDY, "resources": {"cpu": 4, "gpu": 0.5}})
    assert connect.placement_problem(study, [{"CPU": 8, "GPU": 1}]) is None
    assert connect.placement_problem(study, [{"CPU": 2, "GPU": 1}, {"CPU": 8, "GPU": 1}]) is None  # one that fits
    assert connect.placement_problem(study, [{"CPU": 8, "GPU": 0}]) == (
        "resources.gpu 0.5 per trial, but this machine has 8 CPU, 0 GPU")
    assert connect.placement_problem(study, [{"CPU": 2, "GPU": 0}, {"CPU": 2, "GPU": 1}]) == (
        "resources.cpu 4 per trial, but the largest node has 2 CPU, 1 GPU")


def test_the_summary_names_the_exception_of_a_remote_trial_error():
    err = RuntimeError("Failure # 1 (occurred at 2026)\nTraceback (most recent call last):\n  File x\n"
                       "ray.exceptions.RayTaskError(ValueError): ray::Trainable.train()\n"
                       "ValueError: lr must be > 0 job_id=01000000")
    assert summary._error_line(err) == "ValueError: lr must be > 0"
    assert summary._error_line(RuntimeError("")) == "RuntimeError"


def test_a_stop_says_how_to_resume():
    assert signals.interrupt_message("SIGTERM", None) == (
        "l2lda-tune: interrupted by SIGTERM; unfinished runs are marked KILLED in MLflow")
    assert signals.interrupt_message("SIGINT", "l2lda-tune --space s.yaml --name sw --resume").endswith(
        "; continue the sweep with:\n  l2lda-tune --space s.yaml --name sw --resume")
    exc = signals.Interrupted(15)
    assert (exc.signame, str(exc)) == ("SIGTERM", "interrupted by SIGTERM")
