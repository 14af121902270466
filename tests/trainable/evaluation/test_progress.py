"""Progress on every long wait: the matrix's progress records, the trial's board, the table's lines."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainable.config import TrialConfig
from trainable.attacks.primitives import EvalContext
from trainable.evaluation import Progress, robustness_matrix
from trainable.text import Clock, duration


@pytest.fixture(scope="module")
def tiny():
    """An untrained LeNet-5 and 24 test points labelled with its own predictions (all clean-correct)."""
    from trainable.data import load_dataset
    from trainable.models import build_classifier

    torch.manual_seed(0)
    cfg = TrialConfig.from_dict(dict(dataset="mnist5k", batch_size=16, gen_attack_steps=3, gen_width=4,
                                     square_queries=5)).resolved()
    data = load_dataset("mnist5k")
    model = build_classifier(cfg.model_name, cfg.dataset).eval()
    x = data.test_x[:24]
    with torch.no_grad():
        y = model(x).argmax(1)
    return cfg, data, model, x, y


def test_matrix_reports_each_column_and_batch(tiny):
    cfg, data, model, x, y = tiny
    records: list[Progress] = []
    lines: list[str] = []
    ctx = EvalContext(cfg=cfg, data=data, device=torch.device("cpu"), seed=0, log=lines.append,
                      progress=records.append)
    res = robustness_matrix(model, x, y, columns=["natural", "fgsm", "gap", "square"], eps=0.3, ctx=ctx,
                            batch_size=10, masking=False)
    assert records[-1].finished and records[-1].count == 4
    running = [r for r in records if not r.finished]
    # every column appears, in the matrix's order, with its 1-based position
    order = list(dict.fromkeys((r.column, r.index) for r in running if r.unit == "examples"))
    assert order == [("fgsm", 2), ("gap", 3), ("square", 4)]
    for col in ("fgsm", "gap", "square"):
        done = [r.done for r in running if r.column == col and r.unit == "examples"]
        assert done[0] == 0 and done[-1] == 24 and done == sorted(done)
    # the generator column's attacker training is reported (at most once a second, and its last
    # step) before its attack runs
    training = [r for r in running if r.unit == "training steps"]
    steps = [r.done for r in training]
    assert steps[0] >= 1 and steps[-1] == 3 and steps == sorted(steps)
    assert all(r.total == 3 and r.index == 3 for r in training)
    assert running.index(training[-1]) < min(i for i, r in enumerate(running) if r.column == "gap")
    assert all(r.column == "gap training" for r in training)
    elapsed = [r.elapsed for r in records]
    assert elapsed == sorted(elapsed)
    assert all(r.left is None or r.left >= 0 for r in records)
    assert any(r.left is not None and r.left > 0 for r in running)  # an estimate once work is done
    # one line per column with elapsed time and an estimate
    assert "matrix 3/4: preparing gap" in lines
    assert any(ln.startswith("matrix: gap = ") and "elapsed" in ln for ln in lines)
    # the table's time of a generator column includes its attacker's training
    assert res.timings["gap"] >= res.timings["prepare/gap"] > 0


def test_progress_line_and_clock():
    p = Progress("pgd100", 4, 13, 240, 480, "examples", 80.0, 185.0)
    assert p.line() == "matrix 4/13 pgd100: 240/480 examples, 1 min 20 s elapsed, about 3 min 5 s left"
    assert Progress(**p.to_dict()) == p
    assert duration(42) == "42 s" and duration(4000) == "1 h 6 min"
    out: list[str] = []
    c = Clock(out.append, "report", every=0)
    c.stage("reading runs")
    c.tick("matrices downloaded", 1, 4)
    c.tick("matrices downloaded", 4, 4)
    assert out[0].startswith("report: reading runs (") and out[0].endswith("elapsed)")
    assert out[1].startswith("report: matrices downloaded 1/4 (") and "left)" in out[1]
    assert out[2].startswith("report: matrices downloaded 4/4 (") and "left" not in out[2]


def test_trial_posts_matrix_progress_to_the_board(tmp_path, monkeypatch, ray_session):
    """The finishing step's matrix posts its progress where the driver's table reads it."""
    import ray
    import ray.tune.trainable.trainable as ray_trainable

    from orchestrator.progress import MatrixCLIReporter, progress_lines
    from trainable.trainable import L2LDATrainable, progress_board

    monkeypatch.setattr(ray_trainable, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))
    board = progress_board(create=True)
    cfg = dict(dataset="mnist5k", defense="plain", batch_size=10, warmup=0, iterations=2, steps_per_report=2,
               val_subset=10, test_subset=10, eval_columns=["natural", "fgsm", "pgd10"], threads=1,
               cache_dir=str(tmp_path / "cache"))
    t = L2LDATrainable(config=cfg)
    last = t.train()
    assert last["done"] is True
    rec = ray.get(board.get.remote([t.trial_id]))[t.trial_id]
    assert rec["finished"] and rec["count"] == 3
    t.stop()

    # A running trial's record becomes one status line of the progress table.
    ray.get(board.put.remote("abc", Progress("pgd10", 3, 3, 5, 10, "examples", 12.0, 6.0).to_dict()))

    class FakeTrial:
        trial_id, status = "abc", "RUNNING"

        def __str__(self) -> str:
            return "L2LDATrainable_abc_00000"

    lines = MatrixCLIReporter()._matrix_lines([FakeTrial()])
    assert lines == ["test matrix L2LDATrainable_abc_00000: 3/3 pgd10: 5/10 examples, 12 s elapsed, about 6 s left"]
    assert progress_lines({"abc": {**Progress("x", 1, 1, 0, 0, "", 0.0, 0.0).to_dict(), "finished": True}},
                          {"abc": "t"}) == []
    # inside one batch the line shows the forward passes so far (an older record without them still reads)
    inside = Progress("fab_t", 5, 7, 0, 485, "examples", 80.0, 200.0, work=120000).to_dict()
    assert progress_lines({"abc": inside}, {"abc": "t"}) == [
        "test matrix t: 5/7 fab_t: 0/485 examples (this batch: 120,000 forward passes), 1 min 20 s elapsed, "
        "about 3 min 20 s left"]
    old = {k: v for k, v in inside.items() if k != "work"}
    assert progress_lines({"abc": old}, {"abc": "t"})[0].startswith("test matrix t: 5/7 fab_t: 0/485 examples, ")


def test_eval_prints_threads_and_a_line_per_column(tiny, tmp_path):
    from _ray_fixtures import run_cli

    from orchestrator.evaluate import eval_command

    cfg, data, model, x, y = tiny
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    torch.save(sd, tmp_path / "lenet.pt")
    lines: list[str] = []
    res = eval_command(checkpoint=str(tmp_path / "lenet.pt"), columns=["natural", "fgsm", "pgd10"], test_subset=20,
                       threads=1, log=lines.append)
    assert torch.get_num_threads() == 1 and lines[0] == "eval: 1 torch thread"
    assert "matrix 2/3: preparing fgsm" in lines and "matrix 3/3: preparing pgd10" in lines
    done = [ln for ln in lines if ln.startswith(("matrix: fgsm = ", "matrix: pgd10 = "))]
    assert len(done) == 2 and all("elapsed" in ln for ln in done)
    assert np.isfinite(res.metrics["matrix/worst"])
    bad = run_cli("eval", "--checkpoint", str(tmp_path / "lenet.pt"), "--threads", "-1", cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "--threads" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_progress_moves_inside_one_batch_for_every_kind_of_column(tiny, monkeypatch):
    # One batch holds every point, as the quickstart's 500-point batches do: the records must still
    # move while the batch is attacked (driven by the classifier's forward passes), and the log
    # hears a line at least every LOG_EVERY seconds, which the matrix keeps at 10 s or less.
    from trainable.evaluation import progress as mx

    assert mx._Tracker.LOG_EVERY <= 10.0
    monkeypatch.setattr(mx._Tracker, "SINK_EVERY", 0.0)
    monkeypatch.setattr(mx._Tracker, "LOG_EVERY", 0.0)
    cfg, data, model, x, y = tiny
    records: list[Progress] = []
    lines: list[str] = []
    ctx = EvalContext(cfg=cfg, data=data, device=torch.device("cpu"), seed=0, log=lines.append,
                      progress=records.append)
    cols = ["pgd10", "apgd_ce", "fab_t", "square", "gap", "autoattack"]
    robustness_matrix(model, x, y, columns=cols, eps=0.3, ctx=ctx, batch_size=100, masking=False)
    for col in cols:
        inside = [r for r in records if r.column.split("/")[-1].startswith(col if col != "autoattack" else "apgd")
                  and r.unit == "examples" and r.done == 0 and r.work > 0]
        assert inside, col
    assert any("forward passes" in ln for ln in lines)
    left = [r.left for r in records if r.left is not None and not r.finished]
    assert left and all(v >= 0 for v in left)


def test_clock_heartbeat_speaks_during_a_silent_stage():
    import time

    out: list[str] = []
    c = Clock(out.append, "export")
    c.stage("loading its checkpoint")
    with c.heartbeat(every=0.2):
        time.sleep(0.9)  # a stage that prints nothing by itself
    beats = [ln for ln in out if ln.startswith("export: still loading its checkpoint (")]
    assert len(beats) >= 2, out
    n = len(out)
    time.sleep(0.4)  # the heartbeat stops with its block
    assert len(out) == n
    quiet: list[str] = []
    q = Clock(quiet.append, "eval")
    with q.heartbeat(every=0.3):
        for _ in range(6):  # lines of its own keep the heartbeat quiet
            q.say("eval: a column line")
            time.sleep(0.1)
    assert quiet == ["eval: a column line"] * 6


def test_a_stage_column_run_in_two_parts_reports_as_one(tiny):
    # apgd_t is a column and a stage of autoattack: it runs on the cascade's survivors, then on the
    # rest; its records count on over both parts (never back to 0/…), out of every clean-correct point.
    cfg, data, model, x, y = tiny
    records: list[Progress] = []
    ctx = EvalContext(cfg=cfg, data=data, device=torch.device("cpu"), seed=0, progress=records.append)
    res = robustness_matrix(model, x, y, columns=["apgd_t", "autoattack"], eps=0.05, ctx=ctx, batch_size=5,
                            masking=False)
    n_ok = int(res.correct["natural"].sum())
    survivors = res.profile["composites"]["autoattack"]["attacked"]["apgd_t"]
    assert 0 < survivors < n_ok  # both parts ran
    done = [r.done for r in records if r.column == "apgd_t" and r.unit == "examples"]
    assert {r.total for r in records if r.column == "apgd_t" and r.unit == "examples"} == {n_ok}
    assert done == sorted(done) and done[0] == 0 and done[-1] == n_ok and survivors in done
