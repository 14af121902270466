"""The tracking store checked before Ray (docs/reliability.md, "Tracking store"): URIs with an
unknown scheme, a missing driver or a bad port, and sqlite files that are corrupt, truncated, in
memory or another program's database are refused in one line before anything starts; MLflow's own
and new database files pass, unchanged; records lost during a sweep never exit 0. A real `mlflow
server` is in test_store_server.py (slow). Each refused case asserts the exit code, one line on
stderr, no traceback and an unchanged working tree (``refused`` in tests/_cli.py)."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from _cli import invoke, refused
from _files import tree
from _specs import spec_file
from orchestrator.sweep import connect
from orchestrator.sweep import run as runner


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
