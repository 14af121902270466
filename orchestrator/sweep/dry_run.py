"""``--dry-run`` (docs/reliability.md, "--dry-run"): the resolved study, its trial count,
resources, whether it fits this machine and a rough cost, without starting Ray.

Costs come from the registries: each defense's cost model per 100 LeNet-5 images, each
classifier's relative cost and each matrix column's planned input-gradient steps.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from orchestrator.spec.study import Study
from orchestrator.sweep import connect
from orchestrator.tune_runner import base_trial_config
from trainable.text import quote

# --dry-run's costs per defense, classifier and column come from their registry entries
# (docs/reliability.md, "--dry-run"); a GPU is taken to be this much faster than one CPU thread.
_GPU_SPEEDUP = 20.0


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
    lines.append(f"  ray: {address or 'local instance on ' + connect.LOCAL_NODE_IP}")
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
        res = connect.local_resources()
        problem = connect.placement_problem(study, [res])
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
