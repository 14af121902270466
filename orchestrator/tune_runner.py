"""Build and run the Ray Tune sweep of a validated study (docs/architecture.md).

spec (:class:`orchestrator.spec.Study`) → ``param_space`` (grid/random through Tune's
sampling, Optuna through a define-by-run function) → :class:`ray.tune.Tuner` with
``ConcurrencyLimiter``, ASHA, per-trial resources, failure and checkpoint configs and
the MLflow callback (the only writer of the tracking store) → a summary table naming
the best trial by the study's first (``val/…``) metric (ties: :mod:`orchestrator.selection`),
its checkpoint, and where the sweep's MLflow record is with the commands to open it.

Ray is imported lazily: :func:`describe_study` / ``--dry-run`` never start it.
Local sweeps start Ray on loopback (``_node_ip_address="127.0.0.2"``: a plain
``ray.init()`` would talk over the external interface, docs/architecture.md, resources); ``--address``
attaches to a running cluster.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from orchestrator.space import SpaceError
from orchestrator.spec import Param, SpecError, Study, condition_order
from trainable.text import quote, shorten

LOCAL_NODE_IP = "127.0.0.2"

# --dry-run's costs per defense, classifier and column come from their registry entries
# (docs/reliability.md, "--dry-run"); a GPU is taken to be this much faster than one CPU thread.
_GPU_SPEEDUP = 20.0


class ResumeError(RuntimeError):
    """--resume (or a reused --name) does not fit what is in the storage path; one line."""


# ------------------------------------------------------------------ storage / names
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


# --------------------------------------------------------------------- search space
def _tune_domain(p: Param) -> Any:
    """Ray Tune's sampling domain of a drawn parameter (its kind's, orchestrator.space)."""
    return p.dist.tune_domain(p)


class _Conditional:
    """`tune.sample_from` body for a parameter with a `when` condition (random search).

    Samples from the parameter's domain with a seeded RandomState when the condition
    holds on the trial's other values, else gives the parameter's default, so the trial
    config stays a complete, valid TrialConfig."""

    def __init__(self, p: Param, seed: int) -> None:
        import numpy as np

        self.p = p
        self.rs = np.random.RandomState(seed)
        self.domain = _tune_domain(p)

    def __call__(self, spec: Any) -> Any:
        cfg = spec.config
        if all(_get(cfg, dep) in allowed for dep, allowed in self.p.when):
            v = self.domain.sample(random_state=self.rs)
            return v.item() if hasattr(v, "item") else v
        return self.p.default


class _ConditionalValue:
    """`tune.sample_from` body for a one-value conditional grid parameter: its value when the
    condition holds on the trial's other values, else its default."""

    def __init__(self, p: Param) -> None:
        self.p = p

    def __call__(self, spec: Any) -> Any:
        if all(_get(spec.config, dep) in allowed for dep, allowed in self.p.when):
            return self.p.values[0]
        return self.p.default


def _get(cfg: Any, key: str) -> Any:
    try:
        return cfg[key]
    except (KeyError, TypeError):
        return getattr(cfg, key)


def base_trial_config(study: Study) -> dict[str, Any]:
    """Base config plus fixed parameters: what every trial shares, its paths made absolute on
    the driver (a worker node has another working directory, docs/architecture.md, cluster)."""
    from orchestrator.cluster import driver_paths

    cfg = dict(study.base)
    for p in study.params.values():
        if p.kind == "fixed":
            cfg[p.name] = p.values[0]
    return driver_paths(cfg)


def param_space(study: Study) -> dict[str, Any]:
    """Tune's param_space. Optuna studies get only the shared constants (the searcher
    proposes the rest); grid/random studies get grid_search and sampling domains."""
    from ray import tune

    space = base_trial_config(study)
    if study.search_type == "optuna":
        return space
    for i, p in enumerate(condition_order(study.params)):
        if p.kind == "fixed":
            continue
        if p.kind == "grid" and p.when:  # one value (spec check): a per-condition setting, no extra trials
            space[p.name] = tune.sample_from(_ConditionalValue(p))
        elif p.kind == "grid":
            space[p.name] = tune.grid_search(list(p.values))
        elif p.when:
            space[p.name] = tune.sample_from(_Conditional(p, study.search.seed * 1009 + i))
        else:
            space[p.name] = _tune_domain(p)
    return space


class DefineByRun:
    """Optuna define-by-run space from the spec: conditions are evaluated on the values
    already suggested (parameters ordered so a condition's parameter comes first)."""

    def __init__(self, study: Study) -> None:
        self.params = [p for p in condition_order(study.params) if p.kind != "fixed"]
        self.shared = base_trial_config(study)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        cfg = dict(self.shared)
        constants: dict[str, Any] = {}
        for p in self.params:
            if not p.active(cfg):
                cfg[p.name] = constants[p.name] = p.default
                continue
            try:
                cfg[p.name] = p.dist.suggest(trial, p)
            except SpaceError as exc:
                raise SpecError(str(exc)) from None
        return constants or None


def build_search(study: Study) -> Any:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    s = study.search
    if study.search_type != "optuna":
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent or 0)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    multi = len(study.metrics) > 1
    sampler = (optuna.samplers.NSGAIISampler(seed=s.seed) if study.sampler_kind == "nsga2"
               else optuna.samplers.TPESampler(seed=s.seed, multivariate=True,
                                               **({} if s.n_startup_trials is None
                                                  else {"n_startup_trials": s.n_startup_trials})))
    storage = optuna.storages.RDBStorage(s.storage) if s.storage else None
    searcher = OptunaSearch(space=DefineByRun(study), metric=study.metrics if multi else study.metric,
                            mode=study.modes if multi else study.mode, sampler=sampler, storage=storage,
                            study_name=study.name if storage is not None else None)
    if s.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)
    return searcher


def build_scheduler(study: Study) -> Any:
    sch = study.scheduler
    if sch.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=sch.max_t or study.reports_per_trial(),
                         grace_period=sch.grace_period, reduction_factor=sch.reduction_factor)


def trainable_with_resources(study: Study) -> Any:
    from trainable.trainable import with_resources

    return with_resources(study.resources.cpu, study.resources.gpu)


def progress_reporter(study: Study) -> Any:
    from orchestrator.progress import MatrixCLIReporter as CLIReporter

    metrics = {"training_iteration": "step", "iteration": "iter"}
    for m in [*study.metrics, "val/natural", "val/worst"]:
        metrics.setdefault(m, m)
    metrics["matrix/worst"] = "test worst"
    varied = [p.name for p in study.params.values() if p.kind != "fixed"]
    # TuneConfig carries metric/mode for a single objective; the reporter may not repeat them.
    multi = len(study.metrics) > 1
    return CLIReporter(metric_columns=metrics, parameter_columns=varied, max_report_frequency=30,
                       metric=study.metric if multi else None, mode=study.mode if multi else None)


# -------------------------------------------------------------------------- ray init
def _node_ip_for(address: str | None) -> str | None:
    """Loopback clusters (docs/architecture.md, resources): the driver must announce the head's loopback address."""
    if os.environ.get("L2LDA_NODE_IP_ADDRESS"):
        return os.environ["L2LDA_NODE_IP_ADDRESS"]
    if not address:
        return LOCAL_NODE_IP
    if address.startswith(("ray://", "http://", "https://")):
        return None
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:
            return None
    host = address.rsplit(":", 1)[0]
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


class PlacementError(RuntimeError):
    """A trial can never be placed (or the cluster cannot be reached); one line, exit 2."""


def _address_origin(address: str, origin: str) -> str:
    return f"RAY_ADDRESS={address}" if origin == "env" else f"--address {address}"


def check_address(address: str | None, origin: str = "option", timeout: float = 3.0) -> str | None:
    """Fail within seconds, in one line naming the address as the user gave it, when the Ray
    cluster at `address` cannot be reached (before anything is created). Returns the address
    to attach to (None: start a local instance)."""
    if address is None or address.strip() in ("", "local"):
        return None
    address = address.strip()
    what = _address_origin(quote(address)[1:-1] if len(address) > 80 else address, origin)
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except Exception:
            found = None
        if not found:
            raise PlacementError(f"{what}: no running Ray cluster on this machine (start one with `ray start --head`, "
                                 f"or leave the address out to run a local instance)")
        return address
    m = re.fullmatch(r"(?:(ray|http|https)://)?(\[[^\]\s]+\]|[^\s:/\[\]]+)(?::(\d+))?/?", address)
    if not m:
        raise PlacementError(f"{what}: not a Ray address (host:port, ray://host:port or auto)")
    scheme, host, port = m.group(1), m.group(2).strip("[]"), m.group(3)
    port_n = int(port) if port else {"ray": 10001, "http": 8265, "https": 443}.get(scheme or "", 6379)
    if not 0 < port_n < 65536:
        raise PlacementError(f"{what}: port {port_n} is out of range")
    import socket

    try:
        with socket.create_connection((host, port_n), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise PlacementError(f"{what}: no Ray cluster answers at {host}:{port_n} ({reason})") from None
    return address


def local_resources() -> dict[str, float]:
    """What a local Ray instance started here would have: CPUs as Ray counts them, GPUs."""
    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())
    except Exception:
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    gpus = 0.0
    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except Exception:
        pass
    return {"CPU": cpus, "GPU": gpus}


def placement_problem(study: Study, nodes: list[Mapping[str, float]]) -> str | None:
    """Why no node in `nodes` (their total resources) can ever hold one trial, else None."""
    need = {"CPU": study.resources.cpu, "GPU": study.resources.gpu}
    for n in nodes:
        if all(float(n.get(k, 0.0)) + 1e-9 >= v for k, v in need.items() if v > 0):
            return None
    best = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
    short = [k for k, v in need.items() if v > 0 and float(best.get(k, 0.0)) + 1e-9 < v]
    parts = ", ".join(f"resources.{k.lower()} {need[k]:g}" for k in short) or "its resources"
    have = f"{best.get('CPU', 0.0):g} CPU, {best.get('GPU', 0.0):g} GPU"
    return f"{parts} per trial, but {'the largest node has' if len(nodes) > 1 else 'this machine has'} {have}"


def check_local_placement(study: Study) -> None:
    """With the tool's own local Ray every resource is known: a trial that could never be
    placed is an error before anything starts (Ray would keep it PENDING forever)."""
    res = local_resources()
    problem = placement_problem(study, [res])
    if problem:
        raise PlacementError(f"{problem}: no trial could ever start (lower resources.cpu/gpu, "
                             f"--cpus-per-trial/--gpus-per-trial, or attach to a cluster with --address)")
    dev = str(study.base.get("device", "auto"))
    if dev.startswith("cuda") and res["GPU"] == 0:
        raise PlacementError(f"base.device: {dev!r} but this machine has no CUDA GPU")


def wait_for_placement(study: Study, address: str, timeout: float, log: Callable[[str], None] = print) -> None:
    """On an existing cluster, wait at most `timeout` seconds for a node that can hold one trial;
    then a one-line PlacementError. The trials' bundles are requested from the autoscaler first:
    polling creates no demand, and an autoscaling cluster adds nodes only for one."""
    import ray

    from orchestrator.cluster import request_bundles

    try:
        request_bundles(study)
    except Exception as exc:  # a cluster without an autoscaler takes the request and ignores it; never fatal
        log(f"autoscaler: resources not requested ({type(exc).__name__}: {exc})")
    deadline = time.monotonic() + timeout
    said = False
    while True:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        problem = placement_problem(study, nodes)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise PlacementError(f"Ray cluster at {address}: {problem}; waited {timeout:g} s for a node that fits "
                                 f"(--placement-timeout)")
        if not said:
            log(f"waiting up to {timeout:g} s for a node that can hold a trial ({problem})")
            said = True
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def init_ray(address: str | None, log: Callable[[str], None] = print) -> bool:
    """Start (or attach to) Ray; returns True when this call started it (and must shut it down)."""
    import signal

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    if hasattr(ray, "LoggingConfig"):  # workers too: per-checkpoint INFO lines would drown the progress table
        kwargs["logging_config"] = ray.LoggingConfig(log_level="WARNING")
    node_ip = _node_ip_for(address)
    if node_ip:
        kwargs["_node_ip_address"] = node_ip
    if address:
        log(f"attaching to Ray cluster at {address}" + (f" (driver on {node_ip})" if node_ip else ""))
        ray.init(address=address, **kwargs)
    else:
        # A loopback-only local instance: token authentication protects clusters shared over a
        # network and only gets in the way here (docs/architecture.md, resources).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # SIGTERM sent to the whole process group (timeout, docker, systemd, Kubernetes) must
        # reach the driver only, which then stops the trials itself: Ray's processes inherit a
        # blocked SIGTERM as they already inherit a blocked SIGINT (docs/reliability.md). They
        # still die with the driver (Ray's kernel fate-sharing), and are stopped with SIGKILL.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            # "local": always a new instance; Ray's default would attach to a cluster started with
            # `ray start` on this machine (`--address auto` does that on purpose).
            ray.init(address="local", include_dashboard=False, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        node = getattr(ray._private.worker, "_global_node", None)
        if node is not None and hasattr(node, "kill_all_processes"):
            kill = node.kill_all_processes
            node.kill_all_processes = lambda *a, **k: kill(*a, **{**k, "allow_graceful": False})
    return True


# -------------------------------------------------------------------------------- run
def make_callbacks(study: Study, *, tracking_uri: str, name: str, storage: str, resume: bool) -> list:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from orchestrator.tracking import MLflowCallback

    return [JsonLoggerCallback(), CSVLoggerCallback(), MLflowCallback(tracking_uri=tracking_uri, experiment=study.name, spec=study.to_dict(),
                           spec_text=study.text, sweep_name=name, resume=resume, storage_path=storage)]


def build_tuner(study: Study, *, name: str, storage: str, callbacks: list, reporter: bool = True) -> Any:
    from ray import tune

    ck = study.checkpoint
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=study.failure.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=ck.keep, checkpoint_frequency=ck.every,
                                                checkpoint_at_end=True),
        callbacks=callbacks,
        progress_reporter=progress_reporter(study) if reporter else None,
        verbose=1 if reporter else 0,
    )
    single = len(study.metrics) == 1
    tune_config = tune.TuneConfig(
        metric=study.metric if single else None,
        mode=study.mode if single else None,
        search_alg=build_search(study),
        scheduler=build_scheduler(study),
        num_samples=study.search.num_samples,
        max_concurrent_trials=None,  # set on the search algorithm (BasicVariantGenerator / ConcurrencyLimiter)
        reuse_actors=False,
    )
    return tune.Tuner(trainable_with_resources(study), param_space=param_space(study), tune_config=tune_config,
                      run_config=run_config)


class Interrupted(RuntimeError):
    """The driver was stopped by SIGINT/SIGTERM; runs are marked KILLED, the sweep can resume."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signame}")


class RecordsLost(RuntimeError):
    """The sweep ran but some tracking records never reached the store."""


HARD_EXIT_WRITE_S = 20.0  # at most this long writing queued records before a forced exit (docs/reliability.md)


def _hard_exit(signum: int, resume_command: str | None) -> None:
    """Last resort (second signal, or the graceful stop took too long): write what can be
    written, say how to resume, exit 128 + signal."""
    import signal

    from orchestrator.tracking import ACTIVE

    name = signal.Signals(signum).name
    for cb in list(ACTIVE):
        try:
            cb.interrupted = cb.interrupted or name
            cb.retry_delays = ()
            cb._at_exit(timeout=HARD_EXIT_WRITE_S)
        except Exception:
            pass
    print(interrupt_message(name, resume_command), file=sys.stderr, flush=True)
    os._exit(128 + signum)


def interrupt_message(signame: str, resume_command: str | None) -> str:
    msg = f"l2lda-tune: interrupted by {signame}; unfinished runs are marked KILLED in MLflow"
    return msg + (f"; continue the sweep with:\n  {resume_command}" if resume_command else "")


class _StopOnSignals:
    """SIGINT and SIGTERM stop the sweep the way Tune's own Ctrl-C does (trials stopped, the
    experiment state saved one last time), but for both signals, with the tracking callback told
    first so it records the trials as KILLED, and with a bounded grace period: a second signal,
    or `grace` seconds, end the driver at once (exit 128 + signal)."""

    def __init__(self, say: Callable[[str], None], resume_command: str | None, grace: float) -> None:
        self.say, self.resume_command, self.grace = say, resume_command, grace
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._env: str | None = None

    def __enter__(self) -> "_StopOnSignals":
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        # Tune's SIGINT handler would take SIGINT from us; its SIGUSR1 handler stays and is what
        # we call to stop the run loop.
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def reinstall(self) -> None:
        """Again after ray.init: Ray's core worker installs its own SIGTERM handler (which
        dumps a stack and aborts) over ours."""
        import signal

        if self._old:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._old:
            if self._env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env

    def _handle(self, signum: int, frame: Any) -> None:
        import signal
        import threading

        from orchestrator.tracking import ACTIVE

        if self.signum is not None:
            _hard_exit(self.signum, self.resume_command)
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"l2lda-tune: {name} received: stopping the trials and writing the records "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)
        for cb in ACTIVE:
            cb.interrupt(name)
        threading.Thread(target=self._watchdog, daemon=True).start()
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if callable(tune_stop) and tune_stop is not self._handle:
            tune_stop(signal.SIGUSR1, frame)  # Tune's run loop ends after this step
        else:
            raise KeyboardInterrupt  # not in Tune's loop yet: stop where we are

    def _watchdog(self) -> None:
        time.sleep(self.grace)
        _hard_exit(self.signum or 15, self.resume_command)


def run_study(study: Study, *, name: str, storage: str, tracking_uri: str, address: str | None = None,
              resume: bool = False, reporter: bool = True, out: TextIO | None = None,
              resume_command: str | None = None, placement_timeout: float = 60.0,
              stop_grace: float | None = None) -> Any:
    """Run (or resume) the sweep; returns Tune's ResultGrid after printing the summary.
    Callers validate the spec, storage and tracking URI first (the CLI does).

    Raises :class:`Interrupted` after SIGINT/SIGTERM (runs KILLED, the sweep resumable),
    :class:`RecordsLost` when any tracking record could not be written, :class:`PlacementError`
    when an existing cluster has no node that fits a trial within `placement_timeout` seconds."""
    from orchestrator.tracking import ACTIVE

    out = out or sys.stdout
    say = lambda msg: print(msg, file=out, flush=True)  # noqa: E731
    # Tune's legacy reporter (a few chosen columns) instead of the verbose new output engine.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every report is what small studies want; Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's default loggers include TensorBoard, which cannot store the matrix data; keep JSON + CSV.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if stop_grace is None:
        stop_grace = float(os.environ.get("L2LDA_STOP_GRACE_S", "60"))
    ACTIVE.clear()
    stop = _StopOnSignals(say, resume_command, stop_grace)
    started = False
    t0 = time.perf_counter()
    try:
        with stop:
            started = init_ray(address, say)
            stop.reinstall()
            from trainable.trainable import progress_board

            board = progress_board(create=True)  # noqa: F841 - held so the named actor lives through the sweep
            if address:
                wait_for_placement(study, address, placement_timeout, say)
            from orchestrator.cluster import check_nodes

            check_nodes(study, storage, address, say)  # datasets fetched/checked, storage seen: every node
            from ray import tune

            path = f"{storage.rstrip('/')}/{name}"
            if resume:
                say(f"resuming sweep {name} from {path}")
                try:
                    tuner = tune.Tuner.restore(path, trainable=trainable_with_resources(study), resume_errored=True)
                except Exception as exc:  # a truncated or foreign tuner.pkl / experiment state: one line, exit 2
                    first = (str(exc).strip().splitlines() or [""])[0][:200]
                    raise ResumeError(f"--resume: {path} is not a usable sweep ({type(exc).__name__}: {first})") from None
            else:
                callbacks = make_callbacks(study, tracking_uri=tracking_uri, name=name, storage=storage, resume=False)
                tuner = build_tuner(study, name=name, storage=storage, callbacks=callbacks, reporter=reporter)
            results = tuner.fit()
        summary = summarize(results, study, wall_s=time.perf_counter() - t0,
                            tracking=tracking_info(list(ACTIVE), tracking_uri, name))
        say(summary)
    except KeyboardInterrupt:
        if stop.signum is None:
            raise
        results = None
    finally:
        if stop.signum is not None:
            for cb in list(ACTIVE):  # on_experiment_end did it when Tune got that far; idempotent
                cb.interrupted = cb.interrupted or stop_name(stop.signum)
                cb._at_exit()
        if address:
            from orchestrator.cluster import release_bundles

            release_bundles()
        if started:
            import ray

            ray.shutdown()
    if stop.signum is not None:
        raise Interrupted(stop.signum)
    lost = sum(cb.lost for cb in ACTIVE)
    if lost:
        raise RecordsLost(f"{lost} tracking records could not be written to {shorten(tracking_uri)}; the sweep's "
                          f"MLflow record is incomplete (the checkpoints are in {path})")
    return results


def stop_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


# ---------------------------------------------------------------------------- summary
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def _fmt_param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _error_line(err: BaseException) -> str:
    """The line naming the exception in a (possibly remote, multi-line) trial error."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln)]
    line = named[-1] if named else (lines[-1] if lines else type(err).__name__)
    return re.sub(r"\s+job_id=.*$", "", line)[:300]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize(results: Any, study: Study, wall_s: float | None = None, tracking: Mapping[str, Any] | None = None) -> str:
    """The end-of-sweep table (one row per trial), the best trial by the selection rule of
    :mod:`orchestrator.selection` (the parent run and ``export`` use the same), and, given the
    sweep's `tracking` (:func:`tracking_info`), where to look next."""
    from orchestrator import selection

    tracking = tracking or {}
    names = tracking.get("run_names") or {}
    varied = [p.name for p in study.params.values() if p.kind != "fixed"]
    metric_cols = list(dict.fromkeys(study.metrics))  # the matrix has its own table below
    show_names = bool(names)
    head = ["trial", *(["run"] if show_names else []), *varied, "status", "iter", *metric_cols, "checkpoint"]
    rows = [head]
    n_err = 0
    failures: list[str] = []
    cands = []
    for r in results:
        m = r.metrics or {}
        tid = str(m.get("trial_id") or getattr(r, "path", "?")).rsplit("/", 1)[-1]
        status = "ERROR" if r.error else ("DONE" if m.get("done") else "STOPPED")
        n_err += bool(r.error)
        ck = r.checkpoint.path if r.checkpoint else "-"
        if r.error:
            failures.append(f"  {tid}: {_error_line(r.error)}")
        rows.append([tid, *([names.get(tid, "-")] if show_names else []),
                     *(_fmt_param((r.config or {}).get(k, "")) for k in varied), status,
                     _fmt(int(m.get("iteration", 0) or 0)), *(_fmt(m.get(c, "-")) for c in metric_cols), ck])
        if not r.error and r.checkpoint:
            cands.append(selection.candidate(tid, m.get(study.metric), m.get(selection.TIE_BREAK), r))
    lines = [f"\nsweep summary — study {quote(study.name)}, {len(rows) - 1} trials"
             + (f", {n_err} failed" if n_err else "") + (f", {wall_s:.0f} s" if wall_s is not None else ""),
             _table(rows)]
    if failures:
        lines.append("failed trials:")
        lines.extend(failures)
    pick = selection.best(cands, study.mode)
    matrix = _matrix_summary(results, names, pick.trial_id if pick is not None else None)
    if matrix:
        lines.append(matrix)
    if pick is not None:
        named = f" = {names[pick.trial_id]}" if pick.trial_id in names else ""
        lines.append(f"best trial: {pick.trial_id}{named} ({study.metric} = {pick.value:.4f}, {study.mode}); "
                     f"checkpoint: {pick.item.checkpoint.path}")
        lines.append(f"  selection: {selection.rule_text(study.metric, study.mode)}")
    else:
        lines.append(f"best trial: none reported {study.metric} with a checkpoint")
    lines.extend(next_steps(study, tracking))
    return "\n".join(lines)


def _matrix_summary(results: Any, names: Mapping[str, str], best: str | None) -> str:
    """One row per trial: every matrix column (short names), worst, masking flags; the best trial marked."""
    from orchestrator import matrix_table

    entries, n = [], None
    for r in results:
        m = r.metrics or {}
        tid = str(m.get("trial_id") or getattr(r, "path", "?")).rsplit("/", 1)[-1]
        entries.append((names.get(tid, tid), m, tid == best))
        n = n or matrix_table.points_of(m)
    return matrix_table.render(entries, n=n)


def tracking_info(callbacks: list, tracking_uri: str, name: str) -> dict[str, Any]:
    """What the summary says about the sweep's MLflow record, from its tracking callback."""
    info: dict[str, Any] = {"tracking_uri": tracking_uri, "sweep_name": name}
    for cb in callbacks:
        if getattr(cb, "sweep_name", None) != name:
            continue
        outcome = cb.outcome
        names = dict(outcome.get("run_names") or {})  # trials finished before a resume included
        names.update({tid: cb.run_name_of(tid) for tid in getattr(cb, "_seen", {})})
        info.update(parent_run_id=cb.parent_run_id, experiment_id=cb.experiment_id, run_names=names)
        if outcome.get("best_run_id"):
            info["best_run_id"] = outcome["best_run_id"]
    return info


def _store_for_commands(uri: str) -> str:
    """The tracking URI as a command run from any directory needs it (a relative sqlite path made absolute)."""
    from orchestrator.store import sqlite_path

    if uri.startswith("sqlite:"):
        try:
            db = sqlite_path(uri)
        except Exception:
            return uri
        if db is not None and str(db) not in ("", ":memory:"):
            return f"sqlite:///{db.resolve()}" if not str(db).startswith("/") else f"sqlite:///{db}"
    return uri


MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui` serves here by default


def next_steps(study: Study, tracking: Mapping[str, Any]) -> list[str]:
    """Where to look next: the store, the parent run and its UI link, the exact commands."""
    import shlex

    uri = tracking.get("tracking_uri")
    if not uri:
        return []
    uri = _store_for_commands(uri)
    sweep = tracking.get("sweep_name")
    q = shlex.quote
    remote = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if remote else MLFLOW_UI
    lines = [f"tracking: {uri} (experiment {quote(study.name)})"]
    eid, pid = tracking.get("experiment_id"), tracking.get("parent_run_id")
    if pid:
        lines.append(f"  parent run: {pid}" + (f" — {base}/#/experiments/{eid}/runs/{pid}" if eid else ""))
    if tracking.get("best_run_id") and eid:
        lines.append(f"  best trial's run: {base}/#/experiments/{eid}/runs/{tracking['best_run_id']}")
    if not remote:
        lines.append(f"  browse:  mlflow ui --backend-store-uri {q(uri)}   (then open {MLFLOW_UI})")
    lines.append(f"  export:  l2lda-tune export --experiment {q(study.name)}"
                 + (f" --sweep {q(sweep)}" if sweep else "") + f" --out best/ --tracking-uri {q(uri)}")
    lines.append(f"  report:  l2lda-tune report --experiment {q(study.name)} --out reports/ --tracking-uri {q(uri)}")
    return lines


# -------------------------------------------------------------------------- dry run
def estimate_iteration_ms(cfg: Mapping[str, Any], gpu: float) -> float:
    """A rough single-thread CPU cost of one training iteration (for --dry-run only): the defense's
    cost model per 100 LeNet-5 images, scaled by the batch and the classifier's relative cost."""
    from trainable.data.registry import DATASETS
    from trainable.defenses.registry import DEFENSES
    from trainable.models.registry import CLASSIFIERS

    model = cfg.get("model") or DATASETS[cfg.get("dataset", "mnist5k")].model
    per100 = DEFENSES[cfg.get("defense", "l2lda")].iteration_ms(cfg)
    ms = per100 * int(cfg.get("batch_size", 100)) / 100 * CLASSIFIERS[model].cost
    return ms / _GPU_SPEEDUP if gpu > 0 else ms


def describe_study(study: Study, *, name: str | None = None, storage: str | None = None,
                   address: str | None = None, tracking_uri: str | None = None) -> str:
    """The resolved study, trial count, resources and a rough cost estimate (runs nothing)."""
    lines = [f"study {quote(study.name)}" + (f" — {study.description}" if study.description else ""),
             f"  source: {study.source}"]
    if name:
        lines.append(f"  sweep name: {name}")
    if storage:
        lines.append(f"  storage: {storage}")
    if tracking_uri:
        lines.append(f"  tracking: {tracking_uri}")
    lines.append(f"  ray: {address or 'local instance on ' + LOCAL_NODE_IP}")
    s = study.search
    kind = study.search_type
    sampler = f", sampler {study.sampler_kind}" if kind == "optuna" else ""
    lines.append(f"  search: {kind}{sampler}; objective(s): "
                 + ", ".join(f"{m} ({o})" for m, o in zip(study.metrics, study.modes))
                 + f"; num_samples {s.num_samples}; max_concurrent {s.max_concurrent or 'unlimited'}; seed {s.seed}"
                 + (f"; optuna storage {s.storage}" if s.storage else ""))
    sch = study.scheduler
    lines.append("  scheduler: " + ("none" if sch.type == "none" else
                                    f"asha (max_t {sch.max_t or study.reports_per_trial()} reports, grace "
                                    f"{sch.grace_period}, reduction {sch.reduction_factor:g})"))
    r = study.resources
    lines.append(f"  resources per trial: {r.cpu:g} CPU, {r.gpu:g} GPU; failures retried: {study.failure.max_failures}; "
                 f"checkpoint every {study.checkpoint.every} reports, keep {study.checkpoint.keep}")
    lines.append("  base:")
    for k, v in sorted(study.base.items()):
        lines.append(f"    {k}: {v}")
    lines.append("  space:")
    for p in study.params.values():
        lines.append(f"    {p.name}: {p.describe()}")
    n = study.trial_count()
    lines.append(f"  trials: {n}")
    if kind in ("grid", "random") and study.grid_size() > 1:
        for i, c in enumerate(study.grid_configs()):
            lines.append(f"    [{i}] " + ", ".join(f"{k}={v}" for k, v in c.items())
                         + (f"  (× {s.num_samples} samples)" if s.num_samples > 1 else ""))
    # cost, from each grid config resolved through TrialConfig (its defaults included): training,
    # validation reports and the test matrix (docs/reliability.md, "--dry-run")
    costly = [_costly_config(study, c) for c in study.grid_configs()]
    per_trial = [estimate_trial_s(c, r.gpu) for c in costly]
    train_s = sum(t for t, _, _ in per_trial) / len(per_trial) * n
    val_s = sum(v for _, v, _ in per_trial) / len(per_trial) * n
    matrix_s = sum(m for _, _, m in per_trial) / len(per_trial) * n
    per_iters = [int(c.iterations) + int(c.warmup) for c in costly]
    iters, total = max(per_iters), round(sum(per_iters) / len(per_iters) * n)
    unit = "GPU" if r.gpu else "CPU-core"
    each = (f"{iters:,} iterations per trial × {n} trials" if min(per_iters) == iters
            else f"{min(per_iters):,} to {iters:,} iterations per trial, {n} trials")
    lines.append(f"  cost: {each} = {total:,} iterations; roughly "
                 f"{_human(train_s + val_s + matrix_s)} of {unit} time: training {_human(train_s)}, validation "
                 f"{_human(val_s)}, test matrix {_human(matrix_s)} (rough figures from per-defense and per-attack "
                 f"costs on LeNet-5/CPU)")
    if address:
        lines.append(f"  placement: checked against the cluster at {address} when the sweep starts "
                     f"(bounded wait, --placement-timeout)")
    else:
        res = local_resources()
        problem = placement_problem(study, [res])
        dev = str(study.base.get("device", "auto"))
        if problem is None and dev.startswith("cuda") and res["GPU"] == 0:
            problem = f"base.device {dev!r} but this machine has no CUDA GPU"
        if problem:
            lines.append(f"  placement: CANNOT RUN HERE — {problem}; the sweep would be refused")
        else:
            k = int(min(res["CPU"] // r.cpu, res["GPU"] // r.gpu if r.gpu else float("inf")))
            k = min(k, s.max_concurrent or k, n)
            lines.append(f"  placement: fits this machine ({res['CPU']:g} CPU, {res['GPU']:g} GPU): up to {k} "
                         f"trial{'s' if k != 1 else ''} at once, about {_human((train_s + val_s + matrix_s) / max(1, k))} "
                         f"wall-clock")
    return "\n".join(lines)


# One input-gradient step of one LeNet-5 example on one CPU thread (docs/reliability.md: 18 ms
# per 100 images); a forward pass alone costs about a third of it.
_GRAD_MS = 0.18


def _costly_config(study: Study, shown: Mapping[str, Any]) -> Any:
    """A grid config resolved through TrialConfig, sampled parameters at their costly end."""
    from trainable.config import TrialConfig

    cfg = dict(base_trial_config(study))
    cfg.update({k: v for k, v in shown.items() if k in study.params and not study.params[k].dist.sampled})
    for p in study.params.values():
        costly = p.dist.costliest(p)
        if costly is not None:
            cfg[p.name] = costly
    try:
        return TrialConfig.from_dict(cfg).resolved()
    except Exception:
        return TrialConfig.from_dict(base_trial_config(study)).resolved()


def estimate_trial_s(cfg: Any, gpu: float) -> tuple[float, float, float]:
    """(training, validation, test matrix) seconds of one trial, a rough single-thread figure."""
    from trainable.attacks.registry import COLUMNS, column_steps
    from trainable.data.registry import DATASETS
    from trainable.defenses.registry import DEFENSES
    from trainable.models.registry import CLASSIFIERS

    d = {k: getattr(cfg, k) for k in ("defense", "dataset", "model", "T", "recursive", "gen_width", "batch_size")}
    ms_adv = estimate_iteration_ms(d, gpu)
    # The warm-up is clean training: priced as the defense that trains on clean batches only.
    clean = next((n for n, e in DEFENSES.items() if not e.adversarial), cfg.defense)
    ms_clean = estimate_iteration_ms({**d, "defense": clean}, gpu)
    train = (cfg.iterations * ms_adv + cfg.warmup * ms_clean) / 1000
    model = CLASSIFIERS[cfg.model_name].cost / (_GPU_SPEEDUP if gpu > 0 else 1.0)
    grad_ms = _GRAD_MS * model

    def price(overrides: dict) -> float:  # one training iteration of this trial with other settings, ms
        return estimate_iteration_ms({**d, **overrides}, gpu)

    reports = max(1, math.ceil(cfg.total_iterations / cfg.steps_per_report))
    # a composite column (autoattack) costs only the stages its matrix does not run as columns
    val = reports * cfg.val_subset * sum(column_steps(c, cfg, cfg.val_columns) for c in cfg.val_columns) \
        * grad_ms / 1000
    n_test = cfg.test_subset or DATASETS[cfg.dataset].test_size
    matrix = n_test * sum(column_steps(c, cfg, cfg.eval_columns) for c in cfg.eval_columns) * grad_ms / 1000
    # One-time preparation: generator columns train an attacker, transfer trains its surrogates.
    matrix += sum(COLUMNS[c].setup_ms(cfg, price) for c in cfg.eval_columns) / 1000
    return train, val, matrix


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
