"""One sweep per directory (docs/reliability.md, "One sweep per directory"): a second driver, or a
--resume, on a claimed sweep directory is refused naming the holder's pid, in this process and from
another one; the claim dies with its holder; a fresh sweep into an old one is still refused."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from _cli import invoke, refused
from _files import tree
from _specs import spec_file
from orchestrator.sweep import connect, storage
from orchestrator.sweep import run as runner


def test_second_driver_on_a_claimed_sweep(no_run, capsys, monkeypatch):
    store = str(no_run / "runs")
    spec = spec_file(no_run)
    claim = storage.claim_sweep_dir(store, "sw", resume=False)
    try:
        before = tree(no_run)
        line = refused(["--space", str(spec), "--name", "sw"], capsys, no_run,
                       f"is in use by another l2lda-tune (pid {os.getpid()})")
        assert tree(no_run) == before and "sw" in line
        with pytest.raises(storage.ResumeError, match="in use"):
            storage.claim_sweep_dir(store, "sw", resume=True)  # a --resume too
    finally:
        claim.release()
    ran = []
    monkeypatch.setattr(runner, "run_study", lambda *a, **k: ran.append(k["name"]) or [])
    monkeypatch.setattr(connect, "check_local_placement", lambda s: None)
    rc, out, err = invoke(["--space", str(spec), "--name", "sw"], capsys)
    assert rc == 0 and ran == ["sw"], err  # free again once the first driver is gone


def test_claims_are_exclusive_across_processes(tmp_path):
    import subprocess
    import sys

    code = ("import sys, time; sys.path.insert(0, %r); from orchestrator.sweep import storage; "
            "c = storage.claim_sweep_dir(%r, 'sw', False); print('held', flush=True); time.sleep(30)") % (
        str(Path(__file__).resolve().parents[2]), str(tmp_path / "runs"))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(storage.ResumeError, match=f"in use by another l2lda-tune \\(pid {p.pid}\\)"):
            storage.claim_sweep_dir(str(tmp_path / "runs"), "sw", False)
    finally:
        p.kill()
        p.wait()
    storage.claim_sweep_dir(str(tmp_path / "runs"), "sw", True).release()  # the lock died with its process


def test_fresh_sweep_into_an_old_one_still_refused(no_run, capsys):
    d = no_run / "runs" / "sw"
    d.mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(b"x")
    (d / "experiment_state-1.json").write_text("{}")
    refused(["--space", str(spec_file(no_run)), "--name", "sw"], capsys, no_run, "already holds a sweep")
