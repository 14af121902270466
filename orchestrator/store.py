"""Reading and checking an MLflow store, without Ray (docs/architecture.md, tracking).

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

from trainable.text import quote, shorten

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
    raise TrackingUnavailable(f"tracking URI {quote(uri)}: expected sqlite:///path/to/mlflow.db")


# MLflow's database stores (SQLAlchemy URLs) and their default ports; anything else MLflow
# would only find out about from inside the sweep (docs/reliability.md, "Tracking store").
DB_SCHEMES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# Tables every MLflow sqlite database has (MLflow's alembic schema); a database with other
# tables only is someone else's file and must not receive MLflow's.
MLFLOW_TABLES = frozenset({"experiments", "runs", "alembic_version"})


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable_dir(d: Path, what: str) -> None:
    """`d` exists as a writable directory, or could be created (nothing is created here)."""
    if d.exists():
        if not d.is_dir():
            raise TrackingUnavailable(f"{what}: cannot create directory {d} (a file is in the way)")
        if not os.access(d, os.W_OK | os.X_OK):
            raise TrackingUnavailable(f"{what}: directory {d} is not writable")
        return
    anc = _nearest_existing(d)
    if not anc.is_dir():
        raise TrackingUnavailable(f"{what}: cannot create directory {d} ({anc} is a file)")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise TrackingUnavailable(f"{what}: cannot create directory {d} ({anc} is not writable)")


def check_sqlite_db(db: Path, what: str) -> None:
    """An existing sqlite file must be a database whose tables are MLflow's, or an empty one."""
    import sqlite3

    if not db.exists():
        return
    if not db.is_file() or not os.access(db, os.R_OK | os.W_OK):
        raise TrackingUnavailable(f"{what}: {db} is not a writable database file")
    if db.stat().st_size == 0:
        return
    with open(db, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise TrackingUnavailable(f"{what}: {db} is not an sqlite database (corrupt or another kind of file)")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            con.execute("PRAGMA quick_check(1)").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise TrackingUnavailable(f"{what}: {db} is not a usable sqlite database ({exc})") from None
    if tables and not MLFLOW_TABLES <= tables:
        shown = ", ".join(sorted(tables)[:5]) + (", …" if len(tables) > 5 else "")
        raise TrackingUnavailable(f"{what}: {db} is an sqlite database of something else (tables: {shown}); "
                                  f"MLflow's tables would be added to it — pass another file")


def check_db_url(url: str, what: str, timeout: float = 3.0, *, create_dir: bool = True) -> None:
    """A database URL (SQLAlchemy form, as MLflow and Optuna take it): known dialect, driver
    importable, server reachable (sqlite: the file checked as MLflow's or empty, nothing created)."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:
        raise TrackingUnavailable(f"{what}: {quote(url)} is not a database URL") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        db = sqlite_path(url)
        if db is None or str(db) in (":memory:", ""):
            raise TrackingUnavailable(f"{what}: an in-memory sqlite store would lose the sweep")
        parent = (db.parent if str(db.parent) else Path(".")).resolve()
        if not create_dir and not parent.is_dir():
            raise TrackingUnavailable(f"{what}: directory {parent} does not exist (sqlite creates the file, "
                                      f"not its folder)")
        _check_creatable_dir(parent, what)
        check_sqlite_db(db, what)
        return
    if backend not in DB_SCHEMES:
        raise TrackingUnavailable(f"{what}: unknown database {backend!r} (sqlite, postgresql, mysql, mssql)")
    try:
        u.get_dialect().import_dbapi()
    except ImportError as exc:
        name = getattr(exc, "name", None) or str(exc)
        raise TrackingUnavailable(f"{what}: the {u.drivername} driver is not installed (no module {name!r}); "
                                  f"pip install it, or use sqlite:///mlflow.db") from None
    except Exception as exc:
        raise TrackingUnavailable(f"{what}: cannot load the {u.drivername} driver ({type(exc).__name__})") from None
    host, port = u.host or "localhost", u.port or DB_SCHEMES[backend]
    if not str(host).startswith("/"):
        _tcp_reachable(host, port, f"{what}: database server {host}:{port}", timeout)


def _tcp_reachable(host: str, port: int, what: str, timeout: float) -> None:
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        raise TrackingUnavailable(f"{what} is unreachable ({reason})") from None


def check_tracking_uri(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when the store named by `uri` cannot be used (before Ray starts),
    creating nothing.

    sqlite: the database's directory must exist (or be creatable) and be writable; an existing
    file must be an sqlite database with MLflow's tables, or empty. postgresql/mysql/mssql: the
    driver must be importable and the server reachable. file: refused (MLflow ≥ 3 refuses its
    file store unless MLFLOW_ALLOW_FILE_STORE is set). http(s): the server must answer within
    `timeout` seconds, as an MLflow server. databricks: left to MLflow. Any other scheme is an error.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingUnavailable("tracking URI: empty")
    what = f"tracking URI {quote(uri)}"
    try:
        parsed = urllib.parse.urlparse(uri)
        scheme = parsed.scheme.lower()
        parsed.port  # noqa: B018 - raises on a bad port / bracket
    except ValueError as exc:
        raise TrackingUnavailable(f"{what}: not a valid URI ({exc})") from None
    base_scheme = scheme.split("+", 1)[0]
    if base_scheme == "sqlite":
        check_db_url(uri, what, timeout)
        return
    if base_scheme in DB_SCHEMES:
        check_db_url(uri, what, timeout)
        return
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise TrackingUnavailable(f"{what}: MLflow's file store is refused by MLflow 3; "
                                      f"use sqlite:///mlflow.db or a server URL")
        path = Path(parsed.path if scheme == "file" else uri)
        target = path if path.exists() else path.parent
        if not os.access(target if str(target) else ".", os.W_OK):
            raise TrackingUnavailable(f"{what}: {target} is not writable")
        return
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise TrackingUnavailable(f"{what}: no host in the URL")
        _check_server(uri, timeout)
        return
    if scheme in ("databricks", "databricks-uc", "uc"):
        return
    raise TrackingUnavailable(f"{what}: unknown scheme {scheme!r} (use sqlite:///mlflow.db, http(s)://host:port, "
                              f"postgresql://…, mysql://… or mssql://…)")


def _check_server(uri: str, timeout: float) -> None:
    """The server answers /health and its REST API answers like MLflow's."""
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/health", method="GET"), timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code  # an answer (even 404 from an older server or a proxy) means it is up
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(f"MLflow server {shorten(uri)} is unreachable ({reason}); start it or pass "
                                  f"--tracking-uri sqlite:///mlflow.db") from None
    if status >= 500:
        raise TrackingUnavailable(f"MLflow server {shorten(uri)} answered HTTP {status} on /health")
    api = base + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(urllib.request.Request(api, method="GET"), timeout=timeout) as resp:
            body = resp.read(1 << 16)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # an authenticating MLflow (or its proxy): MLflow reports the credentials problem
        raise TrackingUnavailable(f"MLflow server {shorten(uri)}: the tracking API answered HTTP {exc.code} "
                                  f"(not an MLflow tracking server?)") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        raise TrackingUnavailable(f"MLflow server {shorten(uri)}: the tracking API did not answer "
                                  f"({getattr(exc, 'reason', exc)})") from None
    try:
        import json

        json.loads(body or b"{}")
    except ValueError:
        raise TrackingUnavailable(f"MLflow server {shorten(uri)}: the tracking API did not answer JSON "
                                  f"(not an MLflow tracking server?)") from None


def open_tracking_store(uri: str) -> list[Path]:
    """Create (sqlite: the directory and MLflow's tables) and open the store, once every check
    passed and before Ray starts; a store MLflow cannot open is one line here, not lost records.
    Returns the paths it created (newest first), for :func:`remove_new_store`."""
    created: list[Path] = []
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is not None:
        parent = (db.parent if str(db.parent) else Path(".")).resolve()
        missing = [a for a in [parent, *parent.parents] if not a.exists()]
        try:
            for a in reversed(missing):
                a.mkdir()
                created.insert(0, a)
        except OSError as exc:
            remove_new_store(created)
            raise TrackingUnavailable(f"tracking URI {quote(uri)}: cannot create directory {parent} "
                                      f"({exc.strerror})") from None
        if not db.exists():
            created.insert(0, db.resolve())
    import logging

    # MLflow announces its schema migrations at INFO ("Creating initial MLflow database tables…")
    quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        make_client(uri).search_experiments(max_results=1)
    except Exception as exc:
        remove_new_store(created)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrackingUnavailable(f"tracking URI {quote(uri)}: MLflow cannot open the store "
                                  f"({type(exc).__name__}: {shorten(first, 200)})") from None
    finally:
        for lg, lvl in zip(quiet, levels):
            lg.setLevel(lvl)
    return created


def remove_new_store(created: list[Path]) -> None:
    """Undo :func:`open_tracking_store` after a failed start: the new database (only while it
    holds no run) and the folders made for it (only while empty)."""
    import sqlite3

    for p in created:
        try:
            if p.is_file():
                try:
                    con = sqlite3.connect(f"{p.as_uri()}?mode=ro", uri=True)
                    try:
                        n = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                    finally:
                        con.close()
                except sqlite3.Error:
                    n = 0
                if n == 0:
                    p.unlink()
                    for side in (p.with_name(p.name + "-journal"), p.with_name(p.name + "-wal"),
                                 p.with_name(p.name + "-shm")):
                        side.unlink(missing_ok=True)
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        except OSError:
            pass


def make_client(uri: str):
    """An MlflowClient whose HTTP calls fail fast: MLflow's default of 7 retries with
    back-off would stall the Tune driver for minutes when a server goes away; we queue
    and retry ourselves instead."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the summary prints the links
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no traffic beyond the store (docs/architecture.md)
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
