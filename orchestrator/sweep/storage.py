"""Where a sweep lives (docs/architecture.md, resume; docs/reliability.md): the storage path, the
sweep's name, and this driver's exclusive claim on its directory.

A local storage path is made absolute and checked writable without creating anything (a failed
start leaves no ``runs/``); a URI must name a filesystem pyarrow knows. ``--resume`` needs a
sweep directory (``tuner.pkl`` and an experiment state); a fresh sweep never writes into one.
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from orchestrator.spec.schema import SpecError
from orchestrator.spec.study import Study
from trainable.text import quote


class ResumeError(RuntimeError):
    """--resume (or a reused --name) does not fit what is in the storage path; one line."""



def resolve_storage(storage: str | None) -> str:
    """A URI stays as it is; a local path (default ./runs) is made absolute."""
    s = storage or "runs"
    if "://" in s and not s.startswith("file://"):
        return s
    if s.startswith("file://"):
        s = s[len("file://"):]
    return str(Path(s).expanduser().resolve())


def is_local(storage: str) -> bool:
    return "://" not in storage


# pyarrow's filesystems, which Ray Tune's storage_path goes through.
REMOTE_STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "memory")


def check_storage(storage: str) -> None:
    """A local storage path must be creatable and writable, a URI of a known filesystem; nothing
    is created here (a failed start leaves no ``runs/``; docs/reliability.md)."""
    if not is_local(storage):
        scheme = storage.split("://", 1)[0].lower()
        if scheme not in REMOTE_STORAGE_SCHEMES:
            raise SpecError(f"--storage: unknown filesystem {scheme!r} in {quote(storage)} "
                            f"(a local path, or {', '.join(s + '://' for s in REMOTE_STORAGE_SCHEMES[:4])} …)")
        if not storage.split("://", 1)[1].strip("/"):
            raise SpecError(f"--storage: {quote(storage)} names no bucket or path")
        return
    p = Path(storage)
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise SpecError(f"--storage: cannot create {p} ({anc} is not a directory)")
    if anc == p and not os.access(p, os.W_OK | os.X_OK):
        raise SpecError(f"--storage: {p} is not writable")
    if anc != p and not os.access(anc, os.W_OK | os.X_OK):
        raise SpecError(f"--storage: cannot create {p} ({anc} is not writable)")


LOCK_FILE = ".l2lda-driver.lock"


class SweepClaim:
    """This driver's exclusive hold on a local sweep directory: an flock on a file inside it,
    released when the process ends (however it ends). `release(failed=True)` also removes the
    directories this claim created, so a start that fails later leaves nothing behind."""

    def __init__(self, path: Path, fd: int, created: list[Path]) -> None:
        self.path, self._fd, self.created = path, fd, created

    def release(self, failed: bool = False) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if failed:
            import shutil

            for d in self.created:  # innermost first; only what this claim made and nothing else wrote into
                if d.is_dir() and all(c.name == LOCK_FILE for c in d.iterdir()):
                    shutil.rmtree(d, ignore_errors=True)


def claim_sweep_dir(storage: str, name: str, resume: bool) -> SweepClaim | None:
    """Create (or, with --resume, open) `storage/name` and lock it exclusively; a second driver
    on the same sweep gets a one-line ResumeError (remote storage cannot be locked: None)."""
    import fcntl

    if not is_local(storage):
        return None
    d = Path(storage) / name
    created: list[Path] = []
    missing = [a for a in [d, *d.parents] if not a.exists()]
    try:
        for a in reversed(missing):
            try:
                os.mkdir(a)
                created.insert(0, a)
            except FileExistsError:
                pass
    except OSError as exc:
        SweepClaim(d, None, created).release(failed=True)
        raise SpecError(f"--storage: cannot create {d} ({exc.strerror or exc})") from None
    try:
        fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        SweepClaim(d, None, created).release(failed=True)
        raise SpecError(f"--storage: {d} is not writable ({exc.strerror or exc})") from None
    claim = SweepClaim(d, fd, created)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        claim.release()
        raise ResumeError(f"--name: {d} is in use by another l2lda-tune (pid {other}); wait for it or pass "
                          f"another --name") from None
    if not resume and any(c.name != LOCK_FILE for c in d.iterdir()):
        claim.release()
        raise ResumeError(f"--name: {d} already holds a sweep; pass --resume to continue it or another --name")
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return claim


def sweep_name(study: Study, name: str | None, storage: str, resume: bool) -> str:
    """The Ray experiment (and MLflow sweep) name: --name, else `<study>-<timestamp>`;
    with --resume and no --name, the newest sweep of this study in the storage path."""
    if name:
        return name
    if not resume:
        return f"{study.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if not is_local(storage):
        raise ResumeError(f"--resume: pass --name with a remote storage ({storage})")
    cands = [d for d in Path(storage).glob(f"{study.name}*") if d.is_dir() and _is_sweep_dir(d)]
    if not cands:
        raise ResumeError(f"--resume: no sweep of study {quote(study.name)} under {storage} (pass --name and --storage)")
    return max(cands, key=lambda d: d.stat().st_mtime).name


def _is_sweep_dir(path: Path) -> bool:
    return (path / "tuner.pkl").is_file() and any(path.glob("experiment_state-*.json"))


def check_sweep_dir(storage: str, name: str, resume: bool) -> None:
    """--resume needs a sweep there; a fresh sweep must not write into an old one."""
    if not is_local(storage):
        return
    d = Path(storage) / name
    if resume and not _is_sweep_dir(d):
        raise ResumeError(f"--resume: {d} is not a sweep directory (no tuner.pkl / experiment state)")
    if not resume and d.exists() and any(c.name != LOCK_FILE for c in d.iterdir()):
        raise ResumeError(f"--name: {d} already holds a sweep; pass --resume to continue it or another --name")
