"""The errors a trial can stop with, each one line that names the problem (docs/reliability.md).

Every class carries a ``failure_type``: the short, stable word a failed run is tagged with in
MLflow beside its class name (``failure_type``, ``failure_reason``), so a user can filter failed
runs by kind whatever module raised them. Nothing here imports another module of ours.
"""
from __future__ import annotations


class TrialError(Exception):
    """Base of our errors; ``failure_type`` names the kind of failure."""

    failure_type = "error"


class ConfigError(TrialError, ValueError):
    """A config value is invalid; the message names the field and what is expected."""

    failure_type = "config"


class DatasetMissingError(TrialError, FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to fetch them."""

    failure_type = "dataset_missing"


class CheckpointError(TrialError, RuntimeError):
    """A checkpoint or export cannot be used; the message is one line naming the file and why."""

    failure_type = "checkpoint"


class DivergenceError(TrialError, FloatingPointError):
    """Training produced a non-finite loss; the trial must stop (status ERROR, reason tagged)."""

    failure_type = "diverged"


class DeviceError(TrialError, RuntimeError):
    """The trial cannot run on the device its resources promise; one line, before any work."""

    failure_type = "device"


class TrialOutOfMemory(TrialError, RuntimeError):
    """A trial ran out of CUDA memory within its share; the message names the trial and the share."""

    failure_type = "out_of_memory"


ERRORS: tuple[type[TrialError], ...] = (ConfigError, DatasetMissingError, CheckpointError, DivergenceError,
                                        DeviceError, TrialOutOfMemory)


def failure_type(class_name: str) -> str | None:
    """The ``failure_type`` of our error class called `class_name` (a traceback's last line names it), else None."""
    return next((e.failure_type for e in ERRORS if e.__name__ == class_name), None)
