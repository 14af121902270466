"""The study file's schema (docs/architecture.md): its sections, a searched parameter, and the
one-line :class:`SpecError` a bad value becomes.

Each section is a strict pydantic model (extra keys are typos, YAML ``"4"`` is not the number
4); range constraints are declared on the fields and worded by :func:`pydantic_error` as
``search.seed: must be in [0, 2**32), got -1``. :class:`Param` is plain, picklable data: Ray
keeps it in a sweep's state (through the search space, :mod:`orchestrator.tune_runner`).
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.space import KINDS, Distribution
from trainable.config import TrialConfig
from trainable.text import quote

BUDGET_KEYS = ("eps",)  # pixel-space budgets that may be written as '8/255'


class SpecError(ValueError):
    """A study spec is malformed; the message is one line that starts with the key path."""


# --------------------------------------------------------------------------- sections
# Range constraints are declared on the fields (pydantic's Field(ge=…)); pydantic_error words
# a violation as "must be >= 1, got 0", with the field's description as its reason.
AtLeastOne = Annotated[int, Field(ge=1)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Section(BaseModel):
    # strict: YAML "4" is not the number 4; extra keys are typos, never ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SearchSpec(_Section):
    """How trials are proposed: Optuna (TPE / NSGA-II), a grid, or random sampling."""

    type: Optional[Literal["optuna", "grid", "random"]] = None  # None → grid if the space is all grid, else random
    sampler: Optional[Literal["tpe", "nsga2"]] = None
    metric: Any = "val/worst"  # one name or a list (several objectives)
    mode: Any = "max"  # one mode (applied to every metric) or one per metric
    num_samples: AtLeastOne = 1
    max_concurrent: Optional[AtLeastOne] = None
    seed: Annotated[int, Field(ge=0, lt=2**32, description="numpy's and Optuna's samplers take seeds in [0, 2**32)")] = 0
    storage: Optional[str] = None  # Optuna RDB URL (e.g. sqlite:///optuna.db) for optuna-dashboard
    # Optuna TPE's random start-up trials before its model proposes (None: Optuna's default, 10);
    # a study with few trials needs fewer, or TPE never leaves its random phase.
    n_startup_trials: Optional[Annotated[int, Field(ge=1)]] = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: Any) -> Any:
        names = [v] if isinstance(v, str) else v
        if not isinstance(names, list) or not names or not all(isinstance(m, str) and m for m in names):
            raise ValueError(f"expected a metric name or a non-empty list of names, got {quote(v)}")
        if len(set(names)) != len(names):
            raise ValueError(f"a metric is listed twice: {names}")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        modes = [v] if isinstance(v, str) else v
        if not isinstance(modes, list) or not modes or any(m not in ("max", "min") for m in modes):
            raise ValueError(f"expected 'max' or 'min' (or a list of them), got {quote(v)}")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^[a-z][a-z0-9+]*://", v):
            raise ValueError(f"expected a database URL such as sqlite:///optuna.db, got {quote(v)}")
        return v

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        if isinstance(self.mode, str):
            return [self.mode] * len(self.metrics)
        return list(self.mode)


class SchedulerSpec(_Section):
    """Early stopping: none, or ASHA on the first (only) metric, in reporting steps."""

    type: Literal["none", "asha"] = "none"
    max_t: Optional[AtLeastOne] = None  # None → the number of reports of the longest trial
    grace_period: AtLeastOne = 1
    reduction_factor: Annotated[FiniteFloat, Field(gt=1)] = 3.0


class ResourcesSpec(_Section):
    """Per-trial resources: CPUs (torch threads follow them) and GPUs (0, a fraction, or 1: one device per trial)."""

    cpu: Annotated[FiniteFloat, Field(gt=0)] = 1.0
    gpu: float = 0.0

    @field_validator("gpu")  # not a range: 0, a fraction, or whole cards
    @classmethod
    def _gpu(cls, v: float) -> float:
        if v < 0 or not math.isfinite(v):
            raise ValueError(f"must be 0, a fraction in (0, 1] or a whole number of GPUs, got {v}")
        if v > 1 and not float(v).is_integer():
            raise ValueError(f"a share above 1 must be a whole number of GPUs, got {v}")
        return v


class FailureSpec(_Section):
    # retries from the last checkpoint
    max_failures: Annotated[int, Field(ge=-1, description="-1 retries forever")] = 0


class CheckpointSpec(_Section):
    every: Annotated[int, Field(ge=0, description="0 checkpoints only at the end")] = 1  # every k reports
    keep: Optional[AtLeastOne] = 2  # newest checkpoints kept per trial (None: all)


class EvaluationSpec(_Section):
    """The test robustness matrix of each finished trial (→ base.eval_columns / test_subset)."""

    columns: Optional[list[str]] = None
    test_subset: Optional[int] = None


class StudyModel(_Section):
    name: str
    description: Optional[str] = None
    base: dict[str, Any] = {}
    space: dict[str, Any] = {}
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    failure: FailureSpec = FailureSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    evaluation: EvaluationSpec = EvaluationSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError(f"must be letters, digits, '_', '.', '-' (a directory and experiment name), got {quote(v)}")
        return v


# ---------------------------------------------------------------------------- params
@dataclass(frozen=True)
class Param:
    """One searched parameter. `values` for grid/choice, (`low`, `high`) for ranges."""

    name: str
    kind: str  # fixed | grid | choice | uniform | loguniform | int
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    when: tuple[tuple[str, tuple], ...] = ()  # ((param, allowed values), …): all must hold
    default: Any = None  # the value when a condition does not hold (base, else TrialConfig's default)

    @property
    def dist(self) -> Distribution:
        """The kind's behaviour (orchestrator.space); the Param itself stays plain, picklable data."""
        return KINDS[self.kind]

    def active(self, config: Mapping[str, Any]) -> bool:
        return all(config.get(p) in allowed for p, allowed in self.when)

    def describe(self) -> str:
        s = self.dist.describe(self)
        if self.when:
            s += " when " + ", ".join(f"{p} in {list(v)}" if len(v) > 1 else f"{p} = {quote(v[0])}" for p, v in self.when)
        return s


DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
_HINTS = typing.get_type_hints(TrialConfig)


def is_int_field(name: str) -> bool:
    return _HINTS.get(name) is int


def is_float_field(name: str) -> bool:
    hint = _HINTS.get(name)
    return hint is float or float in typing.get_args(hint)


def jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v



# ------------------------------------------------------------------------ validation
def one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def pydantic_error(exc: ValidationError, prefix: str = "") -> SpecError:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "spec")
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        section = _section_model(err["loc"][:-1], prefix)
        known = ", ".join(section.model_fields) if section else ""
        msg = f"unknown key (known: {known})" if known else "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind in _BOUNDS:
        msg = _range_message(err, prefix)
    elif kind == "finite_number":
        msg = f"must be a finite number, got {quote(err.get('input'))}"
    else:
        msg = msg.removeprefix("Value error, ")
        if kind.endswith("_type") or kind.endswith("_parsing"):
            msg = f"{msg}, got {quote(err.get('input'))}"
    return SpecError(one_line(f"{path}: {msg}"))


_BOUNDS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}


def _number(v: Any) -> str:
    """A bound as a reader writes it (2**32 rather than 4294967296)."""
    if isinstance(v, int) and v >= 2**16 and v & (v - 1) == 0:
        return f"2**{v.bit_length() - 1}"
    return str(v)


def _range_message(err: Mapping[str, Any], prefix: str) -> str:
    """"must be >= 1, got 0" or "must be in [0, 2**32), got -1" from the field's declared bounds."""
    field_info = None
    section = _section_model(tuple(err["loc"][:-1]), prefix)
    if section is not None:
        field_info = section.model_fields.get(str(err["loc"][-1]))
    bounds: dict[str, Any] = {}
    for m in getattr(field_info, "metadata", []):
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(m, attr, None) is not None:
                bounds[attr] = getattr(m, attr)
    if not bounds:  # the constraint sits on an inner type (Optional[...]): the violated one is in ctx
        bounds = {k: v for k, v in (err.get("ctx") or {}).items() if k in ("ge", "gt", "le", "lt")}
    low = next(((k, bounds[k]) for k in ("ge", "gt") if k in bounds), None)
    high = next(((k, bounds[k]) for k in ("le", "lt") if k in bounds), None)
    if low and high:
        text = (f"in {'[' if low[0] == 'ge' else '('}{_number(low[1])}, {_number(high[1])}"
                f"{']' if high[0] == 'le' else ')'}")
    else:
        k, v = low or high
        text = f"{ {'ge': '>=', 'gt': '>', 'le': '<=', 'lt': '<'}[k]} {_number(v)}"
    why = getattr(field_info, "description", None)
    return f"must be {text}" + (f" ({why})" if why and not (low and high) else "") + f", got {quote(err.get('input'))}"


def _section_model(loc: tuple, prefix: str) -> type[BaseModel] | None:
    model: type[BaseModel] = StudyModel
    for part in loc:
        ann = model.model_fields.get(str(part))
        if ann is None or not (isinstance(ann.annotation, type) and issubclass(ann.annotation, BaseModel)):
            return None
        model = ann.annotation
    return model


