"""A validated study (docs/architecture.md): the YAML document checked completely before Ray starts.

A study file names a ``base`` trial config (:class:`trainable.config.TrialConfig`
fields), a ``space`` of parameters to vary, and how to ``search`` it::

    name: ablation
    base: {dataset: mnist5k, defense: l2lda, iterations: 100000}
    space:
      recursive: {grid: [true, false]}
      lam: {loguniform: [1.0e-3, 1.0], when: {diversity: true}}
      seed: {grid: [0, 1, 2]}
    search: {type: grid, metric: val/worst, mode: max}
    scheduler: {type: asha, max_t: 100, grace_period: 10}
    resources: {cpu: 1, gpu: 0.25}
    failure: {max_failures: 2}
    checkpoint: {every: 10, keep: 2}
    evaluation: {columns: [natural, pgd100, cw100], test_subset: 1000}

Every value is checked against ``TrialConfig`` (unknown key or wrong type is an error),
budgets such as ``"8/255"`` are resolved to floats here, once, and selection may
read only ``val/…`` metrics (docs/architecture.md, selection). A bad spec raises :class:`SpecError` whose
message is one line naming the key path, e.g. ``space.lam.loguniform: low must be > 0``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import ValidationError

from orchestrator.space import DISTRIBUTIONS, KINDS, SpaceError
from orchestrator.spec.schema import (BUDGET_KEYS, DEFAULTS, CheckpointSpec, EvaluationSpec, FailureSpec, Param,
                                      ResourcesSpec, SchedulerSpec, SearchSpec, SpecError, StudyModel, is_float_field,
                                      is_int_field, jsonable, one_line, pydantic_error)
from trainable.config import ConfigError, TrialConfig, config_fields, parse_budget
from trainable.text import quote


# ----------------------------------------------------------------------------- study
@dataclass
class Study:
    """A validated, resolved study: what `orchestrator.sweep.tuner` builds the Tuner from."""

    name: str
    description: str | None
    base: dict[str, Any]  # resolved TrialConfig fields (budgets as floats)
    params: dict[str, Param]
    search: SearchSpec
    scheduler: SchedulerSpec
    resources: ResourcesSpec
    failure: FailureSpec
    checkpoint: CheckpointSpec
    evaluation: EvaluationSpec
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    text: str = field(repr=False, default="")
    source: str | None = None

    # ---------------------------------------------------------------- derived
    @property
    def search_type(self) -> str:
        return self.search.type or ("grid" if not any(p.dist.sampled for p in self.params.values()) else "random")

    @property
    def sampler_kind(self) -> str | None:
        """Optuna's sampler: the one named, else NSGA-II for several objectives and TPE for one; None off Optuna."""
        if self.search_type != "optuna":
            return None
        return self.search.sampler or ("nsga2" if len(self.metrics) > 1 else "tpe")

    @property
    def metrics(self) -> list[str]:
        return self.search.metrics

    @property
    def modes(self) -> list[str]:
        return self.search.modes

    @property
    def metric(self) -> str:
        """The first metric: ASHA's, and what 'best trial' means in summaries and export."""
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0]

    def grid_size(self) -> int:
        n = 1
        for p in self.params.values():
            if p.kind == "grid":
                n *= len(p.values)
        return n

    def trial_count(self) -> int:
        if self.search_type == "optuna":
            return self.search.num_samples
        return self.grid_size() * self.search.num_samples

    def base_config(self) -> TrialConfig:
        return TrialConfig.from_dict(self.base)

    def grid_configs(self) -> list[dict[str, Any]]:
        """The grid's trial configs (varied keys only, sampled parameters shown as their range)."""
        combos: list[dict[str, Any]] = [{}]
        for p in self.params.values():
            if p.kind == "grid":
                combos = [{**c, p.name: v} for c in combos for v in p.values]
        out = []
        for c in combos:
            full = {**self.base, **{p.name: p.values[0] for p in self.params.values() if p.kind == "fixed"}, **c}
            shown = dict(c)
            for p in self.params.values():
                if p.dist.sampled and p.active(full):
                    shown[p.name] = p.describe()
                elif p.kind == "grid" and not p.active(full):
                    shown[p.name] = p.default
            out.append(shown)
        return out

    def reports_per_trial(self) -> int:
        """Reporting steps of the longest trial (ASHA's natural max_t)."""
        def values(key: str) -> list[int]:
            p = self.params.get(key)
            if p is None:
                return [int(self.base.get(key, DEFAULTS[key]))]
            # a conditional parameter takes its default where its condition does not hold
            return [int(v) for v in p.dist.span(p)] + ([int(p.default)] if p.when and p.dist.discrete else [])

        it = max(values("iterations")) + max(values("warmup"))
        spr = min(values("steps_per_report"))
        return max(1, math.ceil(it / spr))

    def to_dict(self) -> dict[str, Any]:
        """The resolved study as plain data (what MLflow's parent run records)."""
        return {
            "name": self.name,
            "description": self.description,
            "base": dict(self.base),
            "space": {n: dataclasses.asdict(p) for n, p in self.params.items()},
            "search": {**self.search.model_dump(), "type": self.search_type, "metric": self.metrics,
                       "mode": self.modes},
            "scheduler": self.scheduler.model_dump(),
            "resources": self.resources.model_dump(),
            "failure": self.failure.model_dump(),
            "checkpoint": self.checkpoint.model_dump(),
            "evaluation": self.evaluation.model_dump(),
            "source": self.source,
        }

    def with_overrides(self, *, name: str | None = None, num_samples: int | None = None,
                       max_concurrent: int | None = None, cpus_per_trial: float | None = None,
                       gpus_per_trial: float | None = None) -> Study:
        """The same study with command-line overrides, validated again (bad values → SpecError)."""
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.raw.items()}
        for section in ("search", "resources"):
            raw[section] = dict(raw.get(section) or {})
        if name is not None:
            raw["name"] = name
        if num_samples is not None:
            raw["search"]["num_samples"] = num_samples
        if max_concurrent is not None:
            raw["search"]["max_concurrent"] = max_concurrent
        if cpus_per_trial is not None:
            raw["resources"]["cpu"] = float(cpus_per_trial)
        if gpus_per_trial is not None:
            raw["resources"]["gpu"] = float(gpus_per_trial)
        return build_study(raw, text=self.text, source=self.source)



def _check_value(base: dict[str, Any], name: str, value: Any, path: str) -> Any:
    """Validate one value of `name` against TrialConfig (with the base); return it resolved."""
    if name in BUDGET_KEYS and value is not None:
        try:
            value = parse_budget(value, name)
        except ConfigError as exc:
            raise SpecError(one_line(f"{path}: {str(exc).split(': ', 1)[-1]}")) from None
    try:
        cfg = TrialConfig.from_dict({**base, name: value})
    except ConfigError as exc:
        msg = str(exc)
        # The message names the key itself ("lam: must be >= 0"); the path already does.
        if msg.startswith(f"{name}: "):
            msg = msg[len(name) + 2:]
        raise SpecError(one_line(f"{path}: {msg}")) from None
    return jsonable(getattr(cfg, name))


def _parse_when(name: str, when: Any, base: dict[str, Any], path: str) -> tuple[tuple[str, tuple], ...]:
    if not isinstance(when, Mapping) or not when:
        raise SpecError(f"{path}: expected a mapping of parameter → value (e.g. {{diversity: true}}), got {quote(when)}")
    out = []
    known = config_fields()
    for p, v in when.items():
        if p not in known:
            raise SpecError(f"{path}.{p}: unknown config key (known: {', '.join(sorted(known))})")
        if p == name:
            raise SpecError(f"{path}.{p}: a parameter cannot depend on itself")
        allowed = tuple(v) if isinstance(v, list) else (v,)
        if not allowed:
            raise SpecError(f"{path}.{p}: needs at least one value")
        resolved = tuple(_check_value({k: b for k, b in base.items() if k != p}, p, a, f"{path}.{p}") for a in allowed)
        out.append((p, resolved))
    return tuple(out)


def _parse_param(name: str, entry: Any, base: dict[str, Any], base_keys: set[str]) -> Param:
    path = f"space.{name}"
    if name not in DEFAULTS:
        raise SpecError(f"{path}: unknown config key (known: {', '.join(sorted(DEFAULTS))})")
    free_base = {k: v for k, v in base.items() if k != name}
    default = base.get(name, jsonable(DEFAULTS[name]))
    if entry is None:  # `lam:` or `lam: null` — most often a distribution left out, never meant as "vary nothing"
        raise SpecError(f"{path}: is empty; give a value or one of {', '.join(DISTRIBUTIONS)} "
                        f"(a value that is null in every trial belongs in base)")
    if not isinstance(entry, Mapping):
        if name in base_keys:
            raise SpecError(f"{path}: also set in base; a parameter is either fixed in base or varied in space")
        return Param(name, "fixed", (_check_value(free_base, name, entry, path),), default=default)
    keys = set(entry)
    unknown = sorted(keys - {*DISTRIBUTIONS, "when"})
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}: unknown key (use one of {', '.join(DISTRIBUTIONS)}, plus optional when)")
    kinds = [k for k in DISTRIBUTIONS if k in keys]
    if len(kinds) != 1:
        raise SpecError(f"{path}: give exactly one of {', '.join(DISTRIBUTIONS)}" + (f" (got {', '.join(kinds)})" if kinds else ""))
    kind = kinds[0]
    when = _parse_when(name, entry["when"], base, f"{path}.when") if "when" in entry else ()
    if name in base_keys and not when:
        raise SpecError(f"{path}: also set in base; a parameter is either fixed in base or varied in space "
                        f"(base may hold its value only for a conditional parameter, one with `when`)")
    try:
        fields = KINDS[kind].parse(name, entry[kind], f"{path}.{kind}",
                                   lambda v, where: _check_value(free_base, name, v, where),
                                   is_int=is_int_field(name), is_float=is_float_field(name))
    except SpaceError as exc:
        raise SpecError(str(exc)) from None
    return Param(name, kind, **fields, when=when, default=default)


def _check_conditions(params: dict[str, Param], base: Mapping[str, Any] | None = None) -> None:
    for p in params.values():
        for dep, allowed in p.when:
            if dep in params:
                continue
            # not varied: the condition's parameter has one value, from base or TrialConfig's default
            fixed = (base or {}).get(dep, jsonable(DEFAULTS.get(dep)))
            if fixed not in allowed:
                where = "base" if dep in (base or {}) else "the default"
                raise SpecError(f"space.{p.name}.when.{dep}: {dep} is {quote(fixed)} ({where}) in every trial, "
                                f"so the condition never holds")
        if p.when and p.kind == "grid" and len(p.values) > 1:
            raise SpecError(f"space.{p.name}.when: a grid parameter cannot be conditional with several values "
                            f"(its trials would repeat); give it one value (a per-condition setting) or use "
                            f"choice with search.type random or optuna")
        for dep, allowed in p.when:
            d = params.get(dep)
            if d is not None and not d.dist.discrete:
                raise SpecError(f"space.{p.name}.when.{dep}: a condition may only test a fixed, grid or choice parameter")
            if d is not None:
                if not any(v in allowed for v in d.values):
                    raise SpecError(f"space.{p.name}.when.{dep}: no value of {dep} ({list(d.values)}) satisfies it")
    # cycles: a depends on b depends on a
    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in stack:
            raise SpecError(f"space.{n}.when: conditions form a cycle ({' → '.join((*stack, n))})")
        for dep, _ in params[n].when if n in params else ():
            visit(dep, (*stack, n))

    for n in params:
        visit(n, ())


def condition_order(params: dict[str, Param]) -> list[Param]:
    """Parameters ordered so that every condition's parameter comes first (define-by-run order)."""
    done: list[str] = []

    def add(n: str) -> None:
        if n in done or n not in params:
            return
        for dep, _ in params[n].when:
            add(dep)
        done.append(n)

    for n in params:
        add(n)
    return [params[n] for n in done]


def _val_metrics(study: Study) -> set[str]:
    cols: set[str] = set(study.base.get("val_columns", DEFAULTS["val_columns"]))
    p = study.params.get("val_columns")
    if p is not None:
        for v in p.values:
            cols |= set(v)
    return {f"val/{c}" for c in cols} | {"val/worst"}


def build_study(raw: Any, text: str = "", source: str | None = None) -> Study:
    """Validate a parsed YAML document and resolve it into a :class:`Study` (or raise SpecError)."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"spec: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        model = StudyModel.model_validate(dict(raw))
    except ValidationError as exc:
        raise pydantic_error(exc) from None

    # base (+ evaluation) → one TrialConfig: unknown keys and wrong types fail here.
    base = dict(model.base)
    ev = model.evaluation
    for key, target in (("columns", "eval_columns"), ("test_subset", "test_subset")):
        value = getattr(ev, key)
        if value is not None:
            if target in base:
                raise SpecError(f"evaluation.{key}: also set as base.{target}; give it once")
            base[target] = value
    for k in BUDGET_KEYS:
        if base.get(k) is not None:
            try:
                base[k] = parse_budget(base[k], k)
            except ConfigError as exc:
                raise SpecError(one_line(f"base.{exc}")) from None
    try:
        cfg = TrialConfig.from_dict(base)
    except ConfigError as exc:
        msg = str(exc)
        for key, target in (("columns", "eval_columns"), ("test_subset", "test_subset")):
            if msg.startswith(f"{target}:") and getattr(ev, key) is not None:
                raise SpecError(one_line(f"evaluation.{key}:{msg[len(target) + 1:]}")) from None
        raise SpecError(one_line(f"base.{msg}")) from None
    base = {k: jsonable(getattr(cfg, k)) for k in base}
    if model.resources.gpu > 0 and cfg.device == "cpu":
        raise SpecError(f"resources.gpu: {model.resources.gpu} GPU per trial but base.device is 'cpu'")
    if model.resources.gpu == 0 and cfg.device.startswith("cuda"):
        raise SpecError(f"base.device: {cfg.device!r} but resources.gpu is 0 (Ray gives the trial no GPU); "
                        f"set resources.gpu or device: auto")
    # What a trial could never run (docs/reliability.md, devices): refused before any trial starts.
    if model.resources.gpu > 1:
        raise SpecError(f"resources.gpu: {model.resources.gpu:g} GPUs per trial, but a trial trains on one device; "
                        f"give each trial at most 1 GPU (fractions pack several trials on a card)")
    if model.resources.gpu > 0 and re.fullmatch(r"cuda:\d+", cfg.device) and cfg.device != "cuda:0":
        raise SpecError(f"base.device: {cfg.device!r} with resources.gpu {model.resources.gpu:g}: Ray exposes exactly "
                        f"one device to a trial, as cuda:0; set device: cuda or auto")
    if cfg.amp is not None and model.resources.gpu == 0:
        raise SpecError(f"base.amp: {cfg.amp} runs on CUDA only, but resources.gpu is 0 (the trial gets no GPU); "
                        f"set resources.gpu or amp: null")

    params: dict[str, Param] = {}
    for name, entry in model.space.items():
        params[name] = _parse_param(str(name), entry, base, set(base))
    _check_conditions(params, base)
    amp = params.get("amp")
    if amp is not None and model.resources.gpu == 0 and any(v not in (None, False) for v in amp.values):
        raise SpecError("space.amp: bf16 runs on CUDA only, but resources.gpu is 0 (the trial gets no GPU); "
                        "set resources.gpu or drop amp from the space")

    study = Study(name=model.name, description=model.description, base=base, params=params, search=model.search,
                  scheduler=model.scheduler, resources=model.resources, failure=model.failure,
                  checkpoint=model.checkpoint, evaluation=model.evaluation, raw=dict(raw), text=text, source=source)

    s = model.search
    st = study.search_type
    if not params:
        raise SpecError("space: is empty; name at least one parameter to vary (or fix) in the study")
    if isinstance(s.mode, list) and len(s.mode) != len(s.metrics):
        raise SpecError(f"search.mode: {len(s.mode)} modes for {len(s.metrics)} metrics; give one per metric (or one for all)")
    allowed = _val_metrics(study)
    for i, m in enumerate(s.metrics):
        where = "search.metric" + (f"[{i}]" if isinstance(s.metric, list) else "")
        if not m.startswith("val/"):
            raise SpecError(f"{where}: {quote(m)} is not a validation metric; selection reads only val/… metrics "
                            f"({', '.join(sorted(allowed))})")
        if m not in allowed:
            raise SpecError(f"{where}: {quote(m)} is not reported (val metrics come from base.val_columns: "
                            f"{', '.join(sorted(allowed))})")
    if st != "optuna":
        if s.sampler is not None:
            raise SpecError(f"search.sampler: only optuna search takes a sampler (search.type is {st})")
        if s.storage is not None:
            raise SpecError(f"search.storage: only optuna search has a study storage (search.type is {st})")
    if s.n_startup_trials is not None and study.sampler_kind != "tpe":
        raise SpecError("search.n_startup_trials: only Optuna's TPE sampler has random start-up trials "
                        f"(search.type is {st}" + (f", sampler {study.sampler_kind})" if st == "optuna" else ")"))
    for p in params.values():
        if st == "grid" and p.dist.sampled:
            raise SpecError(f"space.{p.name}.{p.kind}: grid search takes only grid or fixed values "
                            f"(use search.type random or optuna to sample)")
        if st == "optuna" and p.kind == "grid":
            raise SpecError(f"space.{p.name}.grid: optuna search samples choice, uniform, loguniform or int "
                            f"(grid needs search.type grid or random)")
    if st == "optuna" and not any(p.dist.sampled for p in params.values()):
        raise SpecError("space: optuna search needs at least one choice, uniform, loguniform or int parameter")
    sch = model.scheduler
    if sch.type == "asha":
        if len(s.metrics) > 1:
            raise SpecError(f"scheduler.type: ASHA takes one metric but search.metric has {len(s.metrics)}; "
                            f"a multi-objective study runs without a scheduler")
        reports = study.reports_per_trial()
        max_t = sch.max_t or reports
        if sch.grace_period > max_t:
            raise SpecError(f"scheduler.grace_period: {sch.grace_period} is more than max_t ({max_t} reports)")
    elif sch.max_t is not None or "grace_period" in (raw.get("scheduler") or {}) or \
            "reduction_factor" in (raw.get("scheduler") or {}):
        raise SpecError("scheduler.type: ASHA settings given but scheduler.type is none (set type: asha)")
    return study


