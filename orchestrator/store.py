"""Reading and checking an MLflow store, without Ray (DESIGN §6).

Shared by the tracking callback (which writes) and by ``export``/``eval``/``report``
(which only read): the default URI, the fail-fast check run before anything starts,
a client whose HTTP calls do not retry for minutes, and paging through runs. Kept
apart from :mod:`orchestrator.tracking` so that reading a store never imports Ray.
"""
from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; the message is one line naming the URI and why."""


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the working directory; four
    slashes for an absolute path), else None."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if rest.startswith("///"):
        return Path(rest[3:])  # "sqlite:////abs" leaves "/abs", "sqlite:///rel" leaves "rel"
    if rest.startswith("//"):
        return Path(rest[2:] or ":memory:")
    raise TrackingUnavailable(f"tracking URI {uri!r}: expected sqlite:///path/to/mlflow.db")


def check_tracking_uri(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when the store named by `uri` cannot be written (before Ray starts).

    sqlite: the database's directory must exist (or be creatable) and be writable, and an
    existing database file must be writable. file: refused (MLflow ≥ 3 refuses its file
    store unless MLFLOW_ALLOW_FILE_STORE is set). http(s): the server must answer within
    `timeout` seconds. Other schemes (databricks, postgresql, …) are left to MLflow.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingUnavailable("tracking URI: empty")
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme == "sqlite":
        db = sqlite_path(uri)
        if db is None or str(db) == ":memory:":
            raise TrackingUnavailable(f"tracking URI {uri!r}: an in-memory sqlite store would lose the sweep")
        parent = (db.parent if str(db.parent) else Path(".")).resolve()
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailable(f"tracking URI {uri!r}: cannot create directory {parent} ({exc.strerror})") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise TrackingUnavailable(f"tracking URI {uri!r}: directory {parent} is not writable")
        if db.exists() and (not db.is_file() or not os.access(db, os.R_OK | os.W_OK)):
            raise TrackingUnavailable(f"tracking URI {uri!r}: {db} is not a writable database file")
        return
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise TrackingUnavailable(f"tracking URI {uri!r}: MLflow's file store is refused by MLflow 3; "
                                      f"use sqlite:///mlflow.db or a server URL")
        path = Path(urllib.parse.urlparse(uri).path if scheme == "file" else uri)
        target = path if path.exists() else path.parent
        if not os.access(target if str(target) else ".", os.W_OK):
            raise TrackingUnavailable(f"tracking URI {uri!r}: {target} is not writable")
        return
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code  # an answer (even 404 from an older server or a proxy) means it is up
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(f"MLflow server {uri} is unreachable ({reason}); start it or pass "
                                      f"--tracking-uri sqlite:///mlflow.db") from None
        if status >= 500:
            raise TrackingUnavailable(f"MLflow server {uri} answered HTTP {status} on /health")
        return


def make_client(uri: str):
    """An MlflowClient whose HTTP calls fail fast: MLflow's default of 7 retries with
    back-off would stall the Tune driver for minutes when a server goes away; we queue
    and retry ourselves instead."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, created if missing. On a sqlite store the artifacts live
    next to the database (``<db dir>/mlruns/<name>``), not in whatever directory the driver
    happened to start in."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is not None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        location = (db.resolve().parent / "mlruns" / safe).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(name)  # created concurrently by another driver
        if exp is None:
            raise
        return exp.experiment_id


def search_all(client: Any, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None) -> list:
    """Every run matching `filter_string` (follows MLflow's page tokens)."""
    out: list = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, order_by=order_by,
                                  page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out
