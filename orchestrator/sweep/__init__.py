"""A sweep of a validated study on Ray Tune (docs/architecture.md, layout):

* :mod:`~orchestrator.sweep.storage` — the storage path, the sweep's name and this driver's claim on it;
* :mod:`~orchestrator.sweep.connect` — the Ray address, starting Ray on loopback, placement;
* :mod:`~orchestrator.sweep.tuner` — the Tuner: search algorithm, scheduler, resources, callbacks;
* :mod:`~orchestrator.sweep.signals` — SIGINT/SIGTERM: trials stopped, records written, resumable;
* :mod:`~orchestrator.sweep.run` — :func:`~orchestrator.sweep.run.run_study`, which runs or resumes it;
* :mod:`~orchestrator.sweep.summary` — the end-of-sweep table and where to look next;
* :mod:`~orchestrator.sweep.dry_run` — ``--dry-run``: the study described and priced.

The search space itself (the objects Ray pickles into a sweep's state) is :mod:`orchestrator.tune_runner`.
Nothing here imports Ray until a sweep starts.
"""
