"""A study's search space for Ray Tune (docs/architecture.md, one trial's data flow).

Grid and random studies become Tune's ``param_space`` (``grid_search``, sampling domains and
``sample_from`` bodies for conditional parameters); Optuna studies a define-by-run function
that suggests each parameter once the parameters its condition reads have values.

Ray keeps these objects with a sweep's state (Optuna's searcher pickles :class:`DefineByRun`;
the ``sample_from`` bodies :class:`_Conditional` and :class:`_ConditionalValue` are resolved
again from the study on ``--resume``), so they keep this module and their names: a sweep
started by an earlier version resumes (docs/architecture.md, import rules).
The rest of a sweep — storage, Ray, the Tuner, signals, the summary, ``--dry-run`` — is
:mod:`orchestrator.sweep`.
"""
from __future__ import annotations

from typing import Any

from orchestrator.space import SpaceError
from orchestrator.spec.schema import Param, SpecError
from orchestrator.spec.study import Study, condition_order


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

    def __call__(self, config: Any) -> Any:
        cfg = _trial_config(config)
        if all(_get(cfg, dep) in allowed for dep, allowed in self.p.when):
            v = self.domain.sample(random_state=self.rs)
            return v.item() if hasattr(v, "item") else v
        return self.p.default


class _ConditionalValue:
    """`tune.sample_from` body for a one-value conditional grid parameter: its value when the
    condition holds on the trial's other values, else its default."""

    def __init__(self, p: Param) -> None:
        self.p = p

    def __call__(self, config: Any) -> Any:
        cfg = _trial_config(config)
        if all(_get(cfg, dep) in allowed for dep, allowed in self.p.when):
            return self.p.values[0]
        return self.p.default


def _trial_config(config: Any) -> Any:
    """The trial's config as Ray hands it to a `sample_from` body: the config dict itself (Ray's
    current convention), or the older spec wrapper with a ``.config`` that Ray falls back to."""
    return config.config if hasattr(config, "config") else config


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
