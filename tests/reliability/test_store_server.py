"""The tracking-store checks against a real `mlflow server` on loopback (docs/reliability.md,
"Tracking store"): a live server passes and is opened before Ray; a server that is down, an
HTTP server that is not MLflow, and a server that answers 5xx are one line and exit 2 before
anything is created; the server's records are never touched by a refused start."""
from __future__ import annotations

import contextlib
import http.server
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Iterator

import pytest

from _cli import refused
from _files import tree
from _specs import spec_file

pytestmark = pytest.mark.slow


def _port() -> int:
    from _ray_fixtures import free_port

    return free_port("127.0.0.1")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    port = _port()
    exe = shutil.which("mlflow")
    cmd = ([exe] if exe else [sys.executable, "-m", "mlflow"]) + [
        "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--default-artifact-root", str(tmp / "art")]
    log = open(tmp / "server.log", "w")
    p = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except Exception:
            if p.poll() is not None:
                pytest.skip("mlflow server did not start")
            time.sleep(0.5)
    else:
        p.kill()
        pytest.skip("mlflow server did not answer")
    yield url, tmp
    p.terminate()
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()


def test_live_server_passes_and_is_opened(mlflow_server):
    from mlflow import MlflowClient

    from orchestrator.store import check_tracking_uri, open_tracking_store

    url, _ = mlflow_server
    check_tracking_uri(url)
    assert open_tracking_store(url) == []  # nothing local is created for a server
    client = MlflowClient(url)
    eid = client.create_experiment("kept")
    client.create_run(eid)
    assert len(client.search_runs([eid])) == 1


@contextlib.contextmanager
def _http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on loopback answering with `handler`; yields its URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def not_mlflow():
    """A plain HTTP server on loopback: /health answers 200, the tracking API 404."""
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code = 200 if self.path.startswith("/health") else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"OK" if code == 200 else b"<html>not found</html>")

        def log_message(self, *a):
            pass

    with _http_server(H) as url:
        yield url


@pytest.fixture
def broken_server():
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(503)
            self.end_headers()

        def log_message(self, *a):
            pass

    with _http_server(H) as url:
        yield url


def test_refused_servers(mlflow_server, not_mlflow, broken_server, no_run, capsys):
    url, server_tmp = mlflow_server
    spec = spec_file(no_run)
    server_before = tree(server_tmp / "art") if (server_tmp / "art").exists() else {}
    refused(["--space", str(spec), "--tracking-uri", not_mlflow], capsys, no_run, "not an MLflow tracking server")
    refused(["--space", str(spec), "--tracking-uri", broken_server], capsys, no_run, "answered HTTP 503")
    down = f"http://127.0.0.1:{_port()}"
    t0 = time.monotonic()
    refused(["--space", str(spec), "--tracking-uri", down], capsys, no_run, "is unreachable")
    assert time.monotonic() - t0 < 10
    refused(["export", "--experiment", "kept", "--out", str(no_run / "o"), "--tracking-uri", not_mlflow], capsys,
            no_run, "not an MLflow tracking server")
    refused(["report", "--experiment", "kept", "--out", str(no_run / "r"), "--tracking-uri", down], capsys,
            no_run, "is unreachable")
    after = tree(server_tmp / "art") if (server_tmp / "art").exists() else {}
    assert after == server_before
    from mlflow import MlflowClient

    assert urllib.request.urlopen(url + "/health", timeout=5).status == 200, (server_tmp / "server.log").read_text()[-3000:]
    exp = MlflowClient(url).get_experiment_by_name("kept")
    assert exp is None or len(MlflowClient(url).search_runs([exp.experiment_id])) == 1  # nothing recorded lost


def test_sqlite_and_server_same_rules(mlflow_server, tmp_path):
    """The server's own database is MLflow's: as a sqlite URI it passes the same check."""
    from orchestrator.store import check_tracking_uri

    _, server_tmp = mlflow_server
    check_tracking_uri(f"sqlite:///{server_tmp}/server.db")
