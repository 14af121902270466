"""Run (or resume) a sweep (docs/architecture.md): Ray started or attached to, every node
checked, the Tuner built (or restored from the storage path with ``--resume``), fitted under
the signal handlers, and the summary printed.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from orchestrator.spec.study import Study
from orchestrator.sweep import connect
from orchestrator.sweep.signals import Interrupted, StopOnSignals, stop_name
from orchestrator.sweep.storage import ResumeError
from orchestrator.sweep.summary import summarize, tracking_info
from orchestrator.sweep.tuner import build_tuner, make_callbacks, trainable_with_resources
from orchestrator.tune_runner import param_space
from trainable.text import shorten


class RecordsLost(RuntimeError):
    """The sweep ran but some tracking records never reached the store."""


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
    stop = StopOnSignals(say, resume_command, stop_grace)
    started = False
    t0 = time.perf_counter()
    try:
        with stop:
            started = connect.init_ray(address, say)
            stop.reinstall()
            from trainable.trainable import progress_board

            board = progress_board(create=True)  # noqa: F841 - held so the named actor lives through the sweep
            if address:
                connect.wait_for_placement(study, address, placement_timeout, say)
            from orchestrator.cluster import check_nodes

            check_nodes(study, storage, address, say)  # datasets fetched/checked, storage seen: every node
            from ray import tune

            path = f"{storage.rstrip('/')}/{name}"
            if resume:
                say(f"resuming sweep {name} from {path}")
                # Ray keeps the space's sample_from bodies (conditional parameters) out of tuner.pkl and
                # gives trials it has not created yet placeholders for them: the study's space, built
                # again, resolves them (Ray checks that its keys are the sweep's).
                try:
                    tuner = tune.Tuner.restore(path, trainable=trainable_with_resources(study), resume_errored=True,
                                               param_space=param_space(study))
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
