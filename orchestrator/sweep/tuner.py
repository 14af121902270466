"""The Ray Tune Tuner of a validated study (docs/architecture.md, layout): the search algorithm
(Tune's variant generator for grid/random, OptunaSearch over the define-by-run space of
:mod:`orchestrator.tune_runner`), ASHA, per-trial resources, failure and checkpoint configs,
the progress table and the MLflow callback (the only writer of the tracking store).
"""
from __future__ import annotations

from typing import Any

from orchestrator.spec.study import Study
from orchestrator.tune_runner import DefineByRun, param_space


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
