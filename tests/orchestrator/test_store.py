"""The tracking store's checks (orchestrator/store.py): an unreachable server, a file store or an
in-memory database is one line before anything starts; a sqlite path is checked without being
created, made only when the sweep starts, and taken back when the start fails."""
from __future__ import annotations

import socket
import time

import pytest

from orchestrator.tracking import TrackingUnavailable, check_tracking_uri


def test_unreachable_server_is_one_line_error_before_anything():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.perf_counter()
    with pytest.raises(TrackingUnavailable) as ei:
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2.0)
    assert time.perf_counter() - t0 < 5
    msg = str(ei.value)
    assert "unreachable" in msg and "\n" not in msg and str(port) in msg
    with pytest.raises(TrackingUnavailable, match="file store"):
        check_tracking_uri("file:///tmp/mlruns")
    with pytest.raises(TrackingUnavailable, match="in-memory"):
        check_tracking_uri("sqlite://")


def test_sqlite_uri_checks(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/sub/mlflow.db")  # a missing directory is creatable: checked, not made
    assert not (tmp_path / "sub").exists()
    from orchestrator.store import open_tracking_store, remove_new_store

    created = open_tracking_store(f"sqlite:///{tmp_path}/sub/mlflow.db")  # made when the sweep really starts
    assert (tmp_path / "sub" / "mlflow.db").is_file() and created[-1] == (tmp_path / "sub").resolve()
    remove_new_store(created)  # a start that fails later takes it back
    assert not (tmp_path / "sub").exists()
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(TrackingUnavailable, match="not a writable database file"):
        check_tracking_uri(f"sqlite:///{tmp_path}/dir.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrackingUnavailable, match="cannot create directory"):
        check_tracking_uri(f"sqlite:///{tmp_path}/file/sub/mlflow.db")
