"""SIGINT and SIGTERM to a running sweep (docs/reliability.md, "Signals"): to the driver alone
and to its whole process group (what Ctrl-C, `timeout`, docker, systemd and Kubernetes send).
Each time: exit 130 / 143, the exact `l2lda-tune … --resume` command printed, no traceback or
C++ stack, the parent run KILLED, no run left RUNNING, every unfinished trial run KILLED; the
printed command then finishes the sweep.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess

import pytest

from _faults import children_of, kill_group, tiny_spec, wait_for, write_spec
from _ray_fixtures import cli_cmd, cli_env, mlflow_runs

pytestmark = pytest.mark.slow

CASES = [("SIGINT", False, 130), ("SIGINT", True, 130), ("SIGTERM", False, 143), ("SIGTERM", True, 143)]


def _start(tmp_path):
    raw = tiny_spec(tmp_path, "sig", {"seed": {"grid": [0, 1]}}, base={"iterations": 4000, "steps_per_report": 20},
                    search={"max_concurrent": 1}, resources={"cpu": 1})
    spec = write_spec(tmp_path / "sig.yaml", raw)
    args = ["--space", str(spec), "--name", "sw", "--storage", str(tmp_path / "runs")]
    p = subprocess.Popen(cli_cmd(*args), cwd=tmp_path, env=cli_env(L2LDA_STOP_GRACE_S="60"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return p, spec


def _statuses(db):
    runs = mlflow_runs(db, "sig")
    return ([(r.info.status, r.data.tags.get("status")) for r in runs if r.data.tags.get("role") == "sweep"],
            [(r.info.status, r.data.tags.get("status")) for r in runs if r.data.tags.get("role") == "trial"])


@pytest.mark.parametrize("signame,group,code", CASES, ids=[f"{s}-{'group' if g else 'driver'}" for s, g, _ in CASES])
def test_signal_stops_the_sweep_cleanly(signame, group, code, tmp_path):
    db = tmp_path / "mlflow.db"
    p, spec = _start(tmp_path)
    try:
        def training():
            kids = children_of(db, "sig")
            return any(r.data.metrics.get("iteration") for r in kids)

        wait_for(training, 300, "a trial run with a report", every=1.0, alive=p)
        sig = getattr(signal, signame)
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        out, _ = p.communicate(timeout=120)
    finally:
        kill_group(p)
    parent, trials = _statuses(db)
    print(f"{signame} to the {'process group' if group else 'driver'}: exit {p.returncode}; parent {parent}; "
          f"trials {trials}")
    assert p.returncode == code, out[-3000:]
    assert "Traceback" not in out and "received at time=" not in out, out[-3000:]
    want = shlex.join(["l2lda-tune", "--space", str(spec), "--name", "sw", "--storage", str(tmp_path / "runs"),
                       "--resume"])
    assert f"interrupted by {signame}" in out and want in out.splitlines()[-1], out[-1500:]
    assert parent == [("KILLED", "INTERRUPTED")]
    assert trials and all(s != "RUNNING" for s, _ in trials) and any(s == "KILLED" for s, _ in trials), trials
    assert all(s in ("KILLED", "FINISHED") for s, _ in trials), trials
    if signame == "SIGTERM" and group:  # the printed command continues the sweep to the end
        argv = shlex.split(want)[1:]
        r = subprocess.run(cli_cmd(*argv), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        parent, trials = _statuses(db)
        print(f"after the printed --resume: exit 0; parent {parent}; trials {trials}")
        assert parent == [("FINISHED", "FINISHED")] and len(trials) == 2
        assert all(s == "FINISHED" for s, _ in trials), trials

