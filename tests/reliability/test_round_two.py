"""Reliability, round two (docs/reliability.md): the faults and bad inputs a hostile new user
tried, family by family — the tracking store checked before Ray, no infinite waits, one sweep
per directory, bounded YAML and messages, exports that never write or read outside their
folder, one-line errors before any compute, nothing created on failure, an honest --dry-run.

Every case asserts the exit code, one line on stderr, no traceback, that nothing was created
(the working directory's tree is unchanged) and that nothing already there was changed or lost
(file hashes). The signal cases are in test_signals.py, the real `mlflow server` in
test_store_server.py (both slow).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import cli as cli_mod
from orchestrator.sweep import connect, storage
from orchestrator.sweep import run as runner
from test_cli import invoke, no_run  # noqa: F401  (fixture: Ray and sweeps forbidden, fresh cwd)

GOOD = {"name": "good", "base": {"dataset": "mnist5k", "defense": "plain", "iterations": 2, "warmup": 0,
                                 "steps_per_report": 2},
        "space": {"seed": {"grid": [0, 1]}}}


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with a hash of its content ('' for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = ""
    return out


def spec_file(tmp: Path, raw: dict | None = None, text: str | None = None, name: str = "spec.yaml") -> Path:
    p = tmp / name
    if text is not None:
        p.write_bytes(text.encode() if isinstance(text, str) else text)
    else:
        p.write_text(yaml.safe_dump(raw or GOOD, sort_keys=False))
    return p


def refused(argv: list[str], capsys, tmp: Path, expected: str, code: int = 2, max_len: int = 600) -> str:
    """Run the CLI in-process: exit `code`, exactly one line naming `expected`, no traceback, the
    working tree unchanged (nothing created, nothing already there changed)."""
    before = tree(tmp)
    rc, out, err = invoke(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == code and len(lines) == 1, (rc, out[-2000:], err[-2000:])
    assert lines[0].startswith("l2lda-tune: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert len(lines[0]) <= max_len, len(lines[0])
    assert tree(tmp) == before, "a failed start created or changed files"
    return lines[0]


def _sub(argv: list[str], **kw: str) -> list[str]:
    return [a.format(**kw) for a in argv]


# ---------------------------------------------------------------- 1. tracking store
def _unrelated_sqlite(tmp: Path) -> Path:
    p = tmp / "accounts.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'ada')")
    con.commit()
    con.close()
    return p


STORE_CASES = [
    ("foo://x", "unknown scheme 'foo'"),
    ("bogus+thing://h/db", "unknown scheme"),
    ("postgresql://u@127.0.0.1/db", "driver is not installed"),
    ("postgresql+psycopg2://u@127.0.0.1/db", "driver is not installed"),
    ("mysql://u@127.0.0.1/db", "driver is not installed"),
    ("mssql://u@127.0.0.1/db", "driver is not installed"),
    ("http://[::1", "not a valid URI"),
    ("http://127.0.0.1:99999", "not a valid URI"),
    ("sqlite:///{tmp}/corrupt.db", "is not an sqlite database"),
    ("sqlite:///{tmp}/accounts.db", "an sqlite database of something else"),
    ("sqlite:///{tmp}/truncated.db", "not a usable sqlite database"),
    ("sqlite://", "in-memory"),
    ("sqlite:///{tmp}/adir", "not a writable database file"),
]


@pytest.mark.parametrize("uri,expected", STORE_CASES, ids=[u.split(":")[0] + f"-{i}" for i, (u, _) in enumerate(STORE_CASES)])
def test_store_checked_before_ray(uri, expected, no_run, capsys):
    (no_run / "corrupt.db").write_bytes(os.urandom(4096))
    _unrelated_sqlite(no_run)
    real = no_run / "real.db"
    con = sqlite3.connect(real)
    con.execute("CREATE TABLE experiments (x)")
    con.commit()
    con.close()
    (no_run / "truncated.db").write_bytes(real.read_bytes()[:100] + b"\0" * 10)
    (no_run / "adir").mkdir()
    spec = spec_file(no_run)
    refused(["--space", str(spec), "--tracking-uri", uri.format(tmp=no_run)], capsys, no_run, expected)


def test_store_check_accepts_mlflow_and_new_files(tmp_path):
    from mlflow import MlflowClient

    from orchestrator.store import check_tracking_uri

    (tmp_path / "empty.db").write_bytes(b"")
    check_tracking_uri(f"sqlite:///{tmp_path}/empty.db")
    check_tracking_uri(f"sqlite:///{tmp_path}/new/sub/mlflow.db")
    assert not (tmp_path / "new").exists()
    MlflowClient(f"sqlite:///{tmp_path}/ml.db").search_experiments()
    before = tree(tmp_path)
    check_tracking_uri(f"sqlite:///{tmp_path}/ml.db")
    assert tree(tmp_path) == before


def test_unrelated_sqlite_gets_no_mlflow_tables(no_run, capsys):
    db = _unrelated_sqlite(no_run)
    refused(["--space", str(spec_file(no_run)), "--tracking-uri", f"sqlite:///{db}"], capsys, no_run,
            "something else")
    con = sqlite3.connect(db)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"customers"} and con.execute("SELECT name FROM customers").fetchall() == [("ada",)]


def test_env_tracking_uri_checked_too(no_run, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    refused(["--space", str(spec_file(no_run))], capsys, no_run, "unknown scheme 'foo'")


def test_lost_records_never_exit_0(no_run, capsys, monkeypatch):
    """The callback counts what it could not write; the driver turns any count into exit 1."""
    import socket

    from orchestrator.tracking import MLflowCallback

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cb = MLflowCallback(f"http://127.0.0.1:{port}", "lost", {}, "name: lost\n", "sw", retry_delays=(), log=lambda m: None)
    cb.setup()
    assert cb.close() > 0 and cb.lost > 0

    def lossy(*a, **k):
        raise runner.RecordsLost("3 tracking records could not be written to sqlite:///mlflow.db")

    monkeypatch.setattr(runner, "run_study", lossy)
    monkeypatch.setattr(connect, "check_local_placement", lambda s: None)
    rc, out, err = invoke(["--space", str(spec_file(no_run)), "--name", "sw"], capsys)
    assert rc == 1 and err.strip().splitlines() == [
        "l2lda-tune: error: 3 tracking records could not be written to sqlite:///mlflow.db"]
    assert (no_run / "runs" / "sw").is_dir()  # the sweep ran: its directory and store are kept


# --------------------------------------------------------------- 2. waiting forever
WAIT_CASES = [
    ({"resources": {"cpu": 64}}, [], "resources.cpu 64 per trial, but this machine has"),
    ({"resources": {"gpu": 0.3}}, [], "resources.gpu 0.3 per trial"),
    ({"resources": {"cpu": 1.5, "gpu": 1}}, [], "resources.gpu 1 per trial"),
    ({}, ["--cpus-per-trial", "3"], "resources.cpu 3 per trial"),
    ({}, ["--gpus-per-trial", "0.5"], "resources.gpu 0.5 per trial"),
    ({"base": {**GOOD["base"], "device": "cuda"}, "resources": {"gpu": 1}}, [], "GPU"),
]


@pytest.mark.parametrize("extra,argv,expected", WAIT_CASES, ids=[e for _, _, e in WAIT_CASES])
def test_unplaceable_trial_on_the_local_ray(extra, argv, expected, no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    spec = spec_file(no_run, {**GOOD, **extra})
    line = refused(["--space", str(spec), *argv], capsys, no_run, expected)
    assert "2 CPU, 0 GPU" in line or "no CUDA GPU" in line


def test_shipped_ablation_on_a_cpu_machine(no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    refused(["--space", "ablation"], capsys, no_run, "resources.gpu 0.25 per trial, but this machine has 2 CPU, 0 GPU")


ADDRESS_CASES = [
    (["--address", "127.0.0.1:1"], {}, "--address 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1"),
    ([], {"RAY_ADDRESS": "127.0.0.1:{port}"}, "RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}"),
    (["--address", "ray://127.0.0.1:{port}"], {}, "no Ray cluster answers at 127.0.0.1:{port}"),
    (["--address", "127.0.0.2:{port}"], {}, "no Ray cluster answers at 127.0.0.2:{port}"),
    (["--address", "ray://[::1"], {}, "not a Ray address"),
    (["--address", "127.0.0.1:70000"], {}, "port 70000 is out of range"),
    (["--address", "not an address"], {}, "not a Ray address"),
]


@pytest.mark.parametrize("argv,env,expected", ADDRESS_CASES, ids=[str(i) for i in range(len(ADDRESS_CASES))])
def test_unreachable_address_fails_in_seconds(argv, env, expected, no_run, capsys, monkeypatch):
    from _ray_fixtures import free_port

    port = str(free_port("127.0.0.1"))
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(port=port))
    t0 = time.monotonic()
    refused(["--space", str(spec_file(no_run)), *_sub(argv, port=port)], capsys, no_run, expected.format(port=port))
    assert time.monotonic() - t0 < 10


def test_address_auto_without_a_cluster(no_run, capsys, monkeypatch):
    from ray._private.services import canonicalize_bootstrap_address

    try:
        if canonicalize_bootstrap_address("auto"):
            pytest.skip("a Ray cluster runs on this machine")
    except Exception:
        pass
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    refused(["--space", str(spec_file(no_run))], capsys, no_run, "RAY_ADDRESS=auto: no running Ray cluster on this machine")


def test_bounded_wait_on_an_existing_cluster(ray_session):
    from orchestrator.spec.study import build_study

    big = build_study({**GOOD, "resources": {"cpu": 64}})
    t0 = time.monotonic()
    with pytest.raises(connect.PlacementError) as ei:
        connect.wait_for_placement(big, "127.0.0.2:6379", timeout=1.5, log=lambda m: None)
    assert 1.4 < time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert "\n" not in msg and "resources.cpu 64" in msg and "waited 1.5 s" in msg
    connect.wait_for_placement(build_study(GOOD), "127.0.0.2:6379", timeout=0, log=lambda m: None)  # fits: no wait


def test_placement_timeout_must_be_nonnegative(no_run, capsys):
    refused(["--space", str(spec_file(no_run)), "--placement-timeout", "-1"], capsys, no_run, "--placement-timeout")


# ------------------------------------------------------------ 4. two drivers, one sweep
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


# ------------------------------------------------- 5. alias bombs, bounded messages
def _bomb(levels: int, width: int = 9, at: str = "name") -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"{at}: *a{levels - 1}" if at == "name" else
                 f"name: t\nbase: {{{at}: *a{levels - 1}}}\nspace: {{seed: 0}}")
    return "\n".join(lines) + "\n"


BOMBS = [
    ("name", _bomb(9), "alias bomb"),
    ("base.lr", _bomb(9, at="lr"), "alias bomb"),
    ("base.dataset", _bomb(7, at="dataset"), "alias bomb"),
    ("small-bomb", _bomb(6, width=6, at="lr"), "alias bomb"),
    ("recursive", "name: &x [*x]\n", "recursive YAML alias"),
    ("wide", "a: &a [" + ", ".join(["x"] * 300) + "]\nname: t\nbase: {val_columns: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a, *a]}\nspace: {seed: 0}\n", "alias bomb"),
]


@pytest.mark.parametrize("what,text,expected", BOMBS, ids=[b[0] for b in BOMBS])
def test_alias_bombs_refused_quickly(what, text, expected, no_run, capsys):
    assert len(text) < 2000
    t0 = time.monotonic()
    refused(["--space", str(spec_file(no_run, text=text))], capsys, no_run, expected, max_len=300)
    assert time.monotonic() - t0 < 5


LONG = "x" * 5000
BOUNDED = [
    ({"name": LONG, "space": {"seed": 0}}, "name:"),
    ({"name": "t", "base": {"dataset": LONG}, "space": {"seed": 0}}, "base.dataset: unknown dataset"),
    ({"name": "t", "base": {"lr": LONG}, "space": {"seed": 0}}, "base.lr: expected a number"),
    ({"name": "t", "base": {"eps": LONG}, "space": {"seed": 0}}, "eps"),
    ({"name": "t", "space": {"defense": {"grid": ["plain", LONG]}}}, "space.defense.grid[1]: unknown defense"),
    ({"name": "t", "space": {"seed": 0}, "search": {"metric": LONG}}, "search.metric"),
    ({"name": "t", "space": {"seed": 0}, "search": {"type": "optuna", "storage": LONG}}, "search.storage"),
    ({"name": "t", "space": {"seed": 0}, "evaluation": {"columns": ["natural", LONG]}}, "unknown attack column"),
    ({"name": "t", "space": {"lr": {"uniform": [LONG, 1]}}, "search": {"type": "random"}}, "space.lr.uniform"),
    ({"name": "t", "space": {"seed": {"grid": [[0] * 5000]}}}, "space.seed.grid[0]"),
]


@pytest.mark.parametrize("raw,expected", BOUNDED, ids=[e.split(":")[0] for _, e in BOUNDED])
def test_messages_quote_bounded_values(raw, expected, no_run, capsys):
    refused(["--space", str(spec_file(no_run, raw))], capsys, no_run, expected, max_len=400)


def test_long_cli_values_are_bounded(no_run, capsys):
    refused(["--space", str(spec_file(no_run)), "--name", "n" * 300], capsys, no_run, "(300 characters)", max_len=400)
    refused(["--space", str(spec_file(no_run)), "--tracking-uri", "foo://" + "y" * 5000], capsys, no_run,
            "unknown scheme", max_len=400)
    refused(["--space", str(spec_file(no_run)), "--storage", "zz://" + "b" * 5000], capsys, no_run,
            "unknown filesystem", max_len=400)


def test_shared_anchor_within_budget_still_loads(tmp_path):
    from orchestrator.spec.load import load_spec

    text = ("name: t\nbase: {val_columns: &c [natural, pgd10], eval_columns: *c}\n"
            "space: {seed: {grid: [0, 1]}}\n")
    study = load_spec(spec_file(tmp_path, text=text))
    assert study.base["val_columns"] == study.base["eval_columns"] == ["natural", "pgd10"]


def test_quote_helper_bounds_work_and_length():
    from trainable.text import quote, shorten

    nested: list = ["lol"] * 9
    for _ in range(12):
        nested = [nested] * 9  # 9**13 leaves: never expanded
    t0 = time.monotonic()
    assert len(quote(nested)) <= 81 and len(quote("z" * 10**6)) < 120
    assert time.monotonic() - t0 < 0.5
    assert shorten("abc") == "abc" and shorten("a" * 100, 10) == "aaaaaaaaaa… (100 characters)"
    assert quote("plain") == "'plain'"


# ------------------------------------------------------------- 7. one line, early
BAD = [  # (spec dict or text or None, argv with {spec}/{tmp}, expected)
    (b"name: t\xff\xfe\nspace: {seed: 0}\n", ["--space", "{spec}"], "not UTF-8 text (byte 0xff"),
    (b"\xef\xbb\xbfname: t\nspace: {seed: 0}\n\x80", ["--space", "{spec}"], "not UTF-8 text"),
    (None, ["--space", "{spec}", "--name", "n" * 300], "--name:"),
    (None, ["--space", "{spec}", "--name", "a b"], "--name:"),
    (None, ["--space", "{spec}", "--name", ".hidden"], "--name:"),
    (None, ["--space", "{spec}", "--name", "../up"], "--name:"),
    (None, ["--space", "{spec}", "--storage", "foo://bucket"], "--storage: unknown filesystem 'foo'"),
    (None, ["--space", "{spec}", "--storage", "s3://"], "names no bucket"),
    ({**GOOD, "space": {"lr": {"choice": [0.1, 0.01]}}, "search": {"type": "optuna", "metric": "val/natural",
      "storage": "sqlite:///{tmp}/missing/optuna.db"}}, ["--space", "{spec}"], "search.storage: directory"),
    ({**GOOD, "space": {"lr": {"choice": [0.1, 0.01]}}, "search": {"type": "optuna", "metric": "val/natural",
      "storage": "postgresql://u@127.0.0.1/optuna"}}, ["--space", "{spec}"], "search.storage: the postgresql driver"),
    ({**GOOD, "space": {"lr": {"choice": [0.1, 0.01]}}, "search": {"type": "optuna", "metric": "val/natural",
      "storage": "foo://x"}}, ["--space", "{spec}"], "search.storage: unknown database 'foo'"),
    ({**GOOD, "search": {"seed": -1}}, ["--space", "{spec}"], "search.seed: must be in [0, 2**32), got -1"),
    ({**GOOD, "search": {"seed": 2**40}}, ["--space", "{spec}"], "search.seed: must be in [0, 2**32)"),
    ({**GOOD, "base": {**GOOD["base"], "device": "cuda"}}, ["--space", "{spec}"], "base.device: 'cuda' but resources.gpu is 0"),
    ({**GOOD, "base": {**GOOD["base"], "device": "cuda:1"}, "resources": {"gpu": 0}}, ["--space", "{spec}"],
     "resources.gpu is 0"),
    ("name: t\nname: u\nspace: {seed: 0}\n", ["--space", "{spec}"], "duplicate key 'name' (first at line 1) at line 2"),
    ("name: t\nbase: {lr: 0.1, lr: 0.2}\nspace: {seed: 0}\n", ["--space", "{spec}"], "duplicate key 'lr'"),
    ("name: t\nspace: {seed: {grid: [0]}, seed: 1}\n", ["--space", "{spec}"], "duplicate key 'seed'"),
    ({**GOOD, "base": {**GOOD["base"], "diversity": False},
      "space": {"seed": {"grid": [0, 1]}, "lam": {"grid": [0.1], "when": {"diversity": True}}}},
     ["--space", "{spec}"], "space.lam.when.diversity: diversity is False (base) in every trial"),
    ({**GOOD, "space": {"seed": {"grid": [0, 1]}, "T": {"grid": [3], "when": {"defense": "l2lda"}}}},
     ["--space", "{spec}"], "space.T.when.defense: defense is 'plain' (base)"),
    ({**GOOD, "base": {k: v for k, v in GOOD["base"].items() if k != "defense"},
      "space": {"seed": {"grid": [0, 1]}, "T": {"grid": [3], "when": {"recursive": False}}}},
     ["--space", "{spec}"], "recursive is True (the default) in every trial"),
    ("name: t\nbase: {weight_decay: .inf}\nspace: {seed: 0}\n", ["--space", "{spec}"], "non-finite number '.inf'"),
    ("name: t\nbase: {lr: .nan}\nspace: {seed: 0}\n", ["--space", "{spec}"], "non-finite number '.nan'"),
    ("name: t\nspace: {lr: {uniform: [0.01, .inf]}}\nsearch: {type: random}\n", ["--space", "{spec}"], "non-finite"),
    ("name: t\nspace: {seed: 0}\nresources: {cpu: -.inf}\n", ["--space", "{spec}"], "non-finite"),
    ({**GOOD, "base": {**GOOD["base"], "val_columns": ["natural", "natural"]}}, ["--space", "{spec}"],
     "base.val_columns: has a duplicate column (natural)"),
    ({**GOOD, "base": {**GOOD["base"], "val_columns": []}}, ["--space", "{spec}"], "val_columns: must name at least one"),
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
    args = _sub(argv, spec=str(no_run / "spec.yaml"), tmp=str(no_run))
    refused(args, capsys, no_run, expected.format(tmp=no_run))


def test_one_value_conditional_grid_still_allowed(tmp_path):
    from orchestrator.spec.load import load_spec

    raw = {**GOOD, "base": {**GOOD["base"], "defense": "l2lda"},
           "space": {"recursive": {"grid": [True, False]}, "T": {"grid": [3], "when": {"recursive": True}}}}
    study = load_spec(spec_file(tmp_path, raw))
    assert study.trial_count() == 2 and study.params["T"].when


# ----------------------------------------------------------- 8. nothing created
FAILED_STARTS = [  # argv (with {spec}/{tmp}), spec override, expected
    (["--space", "{spec}"], {"base": {**GOOD["base"], "dataset": "mnist", "data_root": "{tmp}/nodata"}}, "mnist"),
    (["--space", "{spec}", "--tracking-uri", "sqlite:///{tmp}/new/deep/mlflow.db"],
     {"base": {**GOOD["base"], "dataset": "mnist", "data_root": "{tmp}/nodata"}}, "mnist"),
    (["--space", "{spec}", "--storage", "{tmp}/new/runs", "--address", "127.0.0.1:1"], {}, "no Ray cluster answers"),
    (["--space", "{spec}", "--storage", "{tmp}/new/runs", "--tracking-uri", "sqlite:///{tmp}/new2/m.db",
      "--address", "127.0.0.1:1"], {}, "no Ray cluster answers"),
    (["--space", "{spec}", "--storage", "foo://bucket", "--tracking-uri", "sqlite:///{tmp}/new/m.db"], {},
     "unknown filesystem"),
    (["--space", "{spec}", "--resume", "--name", "gone", "--storage", "{tmp}/new/runs"], {}, "is not a sweep directory"),
    (["--space", "{spec}", "--resume", "--storage", "{tmp}/new/runs"], {}, "--resume: no sweep of study"),
    (["--space", "{spec}", "--storage", "{tmp}/new/runs", "--cpus-per-trial", "64"], {}, "resources.cpu 64"),
    (["--space", "{spec}", "--tracking-uri", "sqlite:///{tmp}/new/m.db", "--name", "a/b"], {}, "--name:"),
]


@pytest.mark.parametrize("argv,over,expected", FAILED_STARTS, ids=[f"{i}-{e[:20]}" for i, (_, _, e) in enumerate(FAILED_STARTS)])
def test_failed_start_creates_nothing(argv, over, expected, no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    text = yaml.safe_dump({**GOOD, **over}, sort_keys=False).replace("{tmp}", str(no_run))
    spec_file(no_run, text=text)
    refused(_sub(argv, spec=str(no_run / "spec.yaml"), tmp=str(no_run)), capsys, no_run, expected)
    assert not (no_run / "runs").exists() and not (no_run / "new").exists() and not (no_run / "mlflow.db").exists()


def test_start_failing_after_the_claim_takes_it_back(no_run, capsys, monkeypatch):
    """Ray refusing the sweep after the directory was claimed and the store opened: both go."""
    def placement(*a, **k):
        raise connect.PlacementError("Ray cluster at x: resources.cpu 64 per trial, but the largest node has 2 CPU")

    monkeypatch.setattr(runner, "run_study", placement)
    monkeypatch.setattr(connect, "check_local_placement", lambda s: None)
    before = tree(no_run)
    spec = spec_file(no_run)
    before = tree(no_run)
    rc, out, err = invoke(["--space", str(spec), "--name", "sw", "--tracking-uri",
                           f"sqlite:///{no_run}/new/mlflow.db"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "largest node" in err
    assert tree(no_run) == before, "the claim or the new store was left behind"


# --------------------------------------------------------------- 9. --dry-run
def _dry(no_run, capsys, argv) -> str:
    before = tree(no_run)
    rc, out, err = invoke(["--dry-run", *argv], capsys)
    assert rc == 0 and err == "" and "Traceback" not in out, (rc, err)
    assert tree(no_run) == before
    return out


def _seconds(text: str) -> float:
    import re

    n, unit = re.match(r"([\d.]+) (s|min|h|days)", text).groups()
    return float(n) * {"s": 1, "min": 60, "h": 3600, "days": 86400}[unit]


def test_dry_run_counts_each_trials_own_iterations(no_run, capsys, monkeypatch):
    """A conditional budget (quickstart: L2L-DA 800 + 300, PGD10-AT 1200 + 300) is priced per trial."""
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    out = _dry(no_run, capsys, ["--space", "quickstart"])
    assert "1,100 to 1,500 iterations per trial, 2 trials = 2,600 iterations" in out, out


def test_dry_run_prices_default_iterations_and_the_matrix(no_run, capsys, monkeypatch):
    import re

    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    raw = {"name": "d", "base": {"dataset": "mnist5k", "defense": "plain"}, "space": {"seed": {"grid": [0]}}}
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run, raw))])
    m = re.search(r"training (\S+ \S+), validation (\S+ \S+), test matrix (\S+ \S+)", out)
    assert m, out
    assert "101,000 iterations per trial" in out  # TrialConfig's defaults, 100k + 1000 warm-up
    assert _seconds(m.group(1)) > 600 and _seconds(m.group(3)) > 0
    small = {**raw, "evaluation": {"columns": ["natural"], "test_subset": 10}}
    big = {**raw, "evaluation": {"columns": ["natural", "pgd100", "cw1000"], "test_subset": 1000}}
    ms = [_seconds(re.search(r"test matrix (\S+ \S+)", _dry(no_run, capsys, ["--space", str(spec_file(no_run, r, name=f"{i}.yaml"))])).group(1))
          for i, r in enumerate((small, big))]
    assert ms[1] > 100 * max(ms[0], 0.5)


def test_dry_run_says_when_a_study_cannot_be_placed(no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    out = _dry(no_run, capsys, ["--space", "ablation"])
    assert "placement: CANNOT RUN HERE — resources.gpu 0.25 per trial, but this machine has 2 CPU, 0 GPU" in out
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run)), "--cpus-per-trial", "8"])
    assert "CANNOT RUN HERE — resources.cpu 8 per trial" in out
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run))])
    assert "placement: fits this machine (2 CPU, 0 GPU): up to 2 trials at once" in out
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run)), "--address", "10.0.0.1:6379"])
    assert "placement: checked against the cluster at 10.0.0.1:6379" in out


@pytest.mark.parametrize("study", ["smoke", "ablation", "hpo", "baselines", "architecture"])
def test_dry_run_of_shipped_studies_prices_everything(study, no_run, capsys):
    from orchestrator.spec.load import shipped_studies

    if study not in shipped_studies():
        pytest.skip(f"{study} not shipped")
    out = _dry(no_run, capsys, ["--space", study])
    assert "test matrix" in out and "placement:" in out and " 0 s of" not in out
