"""Tracking store under load and outages (issue 6 §5).

* 8 concurrent tiny trials (0.25 CPU each) on one sqlite store: the driver-side callback is
  the only writer, so every report of every trial is recorded and no "database is locked".
* An MLflow server (a real `mlflow server` on 127.0.0.1, loopback only) that is not running
  when the sweep starts: one line, exit 2, no Ray (tests/orchestrator/test_cli.py covers a dead port too).
* The server is SIGKILLed mid-sweep and started again on the same store: training goes on
  (reports arrive while it is down; the trials are then paused with SIGSTOP only because the
  restart takes longer than these tiny trials have left), the callback says once that the
  store is unavailable and once that it is back, and every record is written when it returns.
  A store that never returns costs the queued records with one line at the end: measured here
  while writing this test (244 records, one line) and kept as a fast test in
  tests/orchestrator/tracking/test_callback.py (test_store_gone_for_good_reports_lost_records_in_one_line).
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from _cli import invoke
from _faults import kill_group, tiny_spec, trial_results, wait_for
from _ray_fixtures import cli_env, free_port, mlflow_runs
from orchestrator import cli as cli_mod
from orchestrator.sweep import run as runner
from orchestrator.spec.study import build_study

pytestmark = pytest.mark.slow


def _histories(client, run_id: str, keys: tuple[str, ...]) -> dict[str, list[int]]:
    return {k: [m.step for m in client.get_metric_history(run_id, k)] for k in keys}


def test_eight_concurrent_trials_on_one_sqlite_store(ray_session, tmp_path, capfd):
    raw = tiny_spec(tmp_path, "rel-load", {"seed": {"grid": list(range(8))}}, resources={"cpu": 0.25},
                    base={"iterations": 400, "steps_per_report": 100})
    study = build_study(raw)
    db = tmp_path / "mlflow.db"
    buf = io.StringIO()
    t0 = time.perf_counter()
    grid = runner.run_study(study, name="load", storage=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{db}",
                                 reporter=False, out=buf)
    wall = time.perf_counter() - t0
    captured = capfd.readouterr()
    text = buf.getvalue() + captured.out + captured.err
    assert "database is locked" not in text and "mlflow:" not in text, text[-3000:]
    assert len(grid) == 8 and all(r.error is None for r in grid)
    # they really ran side by side: 8 × 0.25 CPU fit the session's 2 CPUs at once
    spans = [(rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"])
             for rows in trial_results(tmp_path / "runs" / "load").values()]
    overlap = max(sum(1 for s, e in spans if s <= t <= e) for t, _ in spans)
    assert overlap >= 4, spans

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = mlflow_runs(db, "rel-load")
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    parent = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert len(children) == 8 and len(parent) == 1 and parent[0].data.tags["num_trials"] == "8"
    reports = 400 // 100  # iterations / steps_per_report
    n_metrics = 0
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["threads"] == "1"
        h = _histories(client, r.info.run_id, ("iteration", "train/loss", "val/natural", "time/iter_s"))
        assert all(steps == list(range(1, reports + 1)) for steps in h.values()), h
        assert {"matrix/natural", "matrix/fgsm", "matrix/pgd10", "matrix/worst"} <= set(r.data.metrics)
        n_metrics += sum(len(client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics)
    print(f"tracking load: 8 trials (≤ {overlap} at once), 8 child runs + 1 parent, {n_metrics} metric "
          f"values, {wall:.0f} s, no lock errors")


def _start_server(port: int, root: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art")]
    return subprocess.Popen(cmd, cwd=root, env=cli_env(), stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_server_unreachable_then_gone_mid_sweep(ray_session, tmp_path, capfd, monkeypatch):
    port = free_port("127.0.0.1")
    uri = f"http://127.0.0.1:{port}"
    root = tmp_path / "server"
    root.mkdir()
    log = tmp_path / "server.log"
    raw = tiny_spec(tmp_path, "rel-outage", {"seed": {"grid": [0, 1]}},
                    base={"iterations": 1200, "steps_per_report": 120})
    spec = tmp_path / "outage.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(raw))

    # 1. not running at start: one line, exit 2, before Ray or any trial
    def forbidden(*a, **k):
        raise AssertionError("a sweep was started")

    with monkeypatch.context() as m:
        m.setattr(runner, "run_study", forbidden)
        m.chdir(tmp_path)
        code, out, err = invoke(["--space", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "r0")], capfd)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and f"MLflow server {uri} is unreachable" in err

    # 2. gone mid-sweep
    server = _start_server(port, root, log)
    events: dict[str, float] = {}
    try:
        wait_for(lambda: _healthy(port), 180, "the MLflow server", every=1.0, alive=server)
        sweep = tmp_path / "runs" / "outage"

        def outage() -> None:
            nonlocal server
            frozen: list[int] = []
            try:
                wait_for(lambda: any(len(r) >= 1 for r in trial_results(sweep).values()), 300, "a first report")
                kill_group(server)
                events["down"] = time.time()
                n0 = sum(map(len, trial_results(sweep).values()))
                wait_for(lambda: sum(map(len, trial_results(sweep).values())) >= n0 + 2, 300, "reports while down")
                # Restarting the server takes ~20-30 s here, longer than what is left of these tiny
                # trials: pause them (SIGSTOP) until it answers, so the sweep cannot end first.
                for rows in trial_results(sweep).values():
                    if rows and not rows[-1].get("done"):
                        try:
                            os.kill(int(rows[-1]["node/pid"]), signal.SIGSTOP)
                            frozen.append(int(rows[-1]["node/pid"]))
                        except ProcessLookupError:
                            pass
                events["reports_while_down"] = sum(map(len, trial_results(sweep).values())) - n0
                server = _start_server(port, root, log)
                wait_for(lambda: _healthy(port), 180, "the restarted server", every=0.5)
                events["up"] = time.time()
            except AssertionError as exc:
                events["error"] = str(exc)  # type: ignore[assignment]
            finally:
                for pid in frozen:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass

        t = threading.Thread(target=outage, daemon=True)
        t.start()
        buf = io.StringIO()
        grid = runner.run_study(build_study(raw), name="outage", storage=str(tmp_path / "runs"), tracking_uri=uri,
                                     reporter=False, out=buf)
        events["sweep_end"] = time.time()
        t.join(timeout=200)
        captured = capfd.readouterr()
        text = captured.err + captured.out
        assert events.get("up", 1e99) < events["sweep_end"], ("the server came back only after the sweep", events,
                                                              text[-2000:])
        assert "error" not in events and "up" in events, events
        assert events["reports_while_down"] >= 2, events
        assert all(r.error is None and r.metrics["done"] for r in grid)  # training went on
        assert text.count("is unavailable") + text.count(" unavailable (") >= 1, text[-3000:]
        assert "is back; writing queued records" in text
        assert "are lost" not in text

        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("rel-outage")
        runs = client.search_runs([exp.experiment_id])
        children = [r for r in runs if r.data.tags.get("role") == "trial"]
        assert len(children) == 2 and len([r for r in runs if r.data.tags.get("role") == "sweep"]) == 1
        for r in children:
            assert r.info.status == "FINISHED"
            h = _histories(client, r.info.run_id, ("iteration", "train/loss", "val/natural"))
            assert all(steps == list(range(1, 11)) for steps in h.values()), h
            assert "robustness_matrix.parquet" in {a.path for a in client.list_artifacts(r.info.run_id)}
        print(f"tracking outage: server down {events['up'] - events['down']:.0f} s over "
              f"{events['reports_while_down']} reports; after: 2 child runs FINISHED, 10 steps of each metric")
    finally:
        kill_group(server)
