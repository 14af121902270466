"""``l2lda-tune export``: the best finished trial of a study as a ready-to-load model (docs/architecture.md).

"Best" reads a validation metric only (``val/…``; the test matrix is never an
objective): by default the study's first objective, recorded on the sweep's parent
run, else ``val/worst``. The trial's checkpoint (MLflow tag ``checkpoint_path``) is read
with ``weights_only=True`` — a checkpoint carrying a pickle payload is refused without
running it — and written as safetensors + JSON with a model card. Ties are broken by the
rule of :mod:`orchestrator.selection`; ``--sweep`` keeps one sweep's trials. ``--register``
registers the LoggedModel the sweep logged for that trial (MLflow 3 registers logged models,
not artifact folders), logging one first for a run that has none.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from orchestrator import robustbench
from orchestrator.store import (ROLE_SWEEP, ROLE_TRIAL, TrackingUnavailable, check_tracking_uri, make_client,
                                resolve_tracking_uri, search_all, sqlite_path)
from trainable.weights.checkpoint import CheckpointError
from trainable.text import Clock, quote


class ExportError(click.ClickException):
    """Export cannot proceed; the message is one line naming what is missing."""

    exit_code = 2  # bad input: click prints the one line and exits 2 even where the CLI does not map it


DEFAULT_METRIC, DEFAULT_MODE = "val/worst", "max"


def open_store(tracking_uri: str | None):
    """(client, uri) for reading a store that must already exist (reading never creates one).
    Readers print their own progress lines: MLflow's artifact download bars stay off stderr."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is not None and not db.is_file():
        raise TrackingUnavailable(f"tracking URI {quote(uri)}: no MLflow database at {db.resolve()} "
                                  f"(run a sweep first, or pass --tracking-uri)")
    return make_client(uri), uri


def find_experiment(client: Any, name: str, uri: str) -> Any:
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise ExportError(f"experiment {quote(name)} not found in {uri} (known: {', '.join(known) or 'none'})")
    return exp


def study_objective(client: Any, experiment_id: str, sweep: str | None = None) -> tuple[str, str] | None:
    """(metric, mode) recorded on the newest sweep (parent run) of the experiment, or of `sweep`."""
    filt = f"tags.role = '{ROLE_SWEEP}'" + (f" and tags.sweep_name = '{sweep}'" if sweep else "")
    runs = client.search_runs([experiment_id], filt, max_results=1,
                              order_by=["attributes.start_time DESC"])
    if runs and runs[0].data.tags.get("objective.metric"):
        tags = runs[0].data.tags
        return tags["objective.metric"], tags.get("objective.mode", DEFAULT_MODE)
    return None


def best_run(client: Any, experiment: Any, metric: str | None = None, mode: str | None = None,
             sweep: str | None = None) -> tuple[Any, str, str]:
    """(run, metric, mode): the FINISHED trial run with the best last value of a `val/` metric,
    ties broken by the one rule of :mod:`orchestrator.selection` (the sweep summary and the
    parent run use it too); `sweep` keeps only that sweep's trials."""
    from orchestrator import selection

    objective = study_objective(client, experiment.experiment_id, sweep)
    if metric is None:
        metric, mode_default = objective or (DEFAULT_METRIC, DEFAULT_MODE)
    else:
        mode_default = objective[1] if objective and objective[0] == metric else DEFAULT_MODE
    mode = (mode or mode_default).lower()
    if not metric.startswith("val/"):
        raise ExportError(f"--metric {quote(metric)}: selection reads validation metrics only (val/…), never the test matrix")
    if mode not in ("max", "min"):
        raise ExportError(f"mode {quote(mode)}: expected max or min")
    filt = f"tags.role = '{ROLE_TRIAL}' and attributes.status = 'FINISHED'"
    if sweep:
        filt += f" and tags.sweep_name = '{sweep}'"
    runs = search_all(client, [experiment.experiment_id], filt)
    pick = selection.best((selection.candidate(r.data.tags.get("trial_id", r.info.run_id), r.data.metrics.get(metric),
                                               r.data.metrics.get(selection.TIE_BREAK), r) for r in runs), mode)
    if pick is None:
        what = f"{len(runs)} finished trial runs, none with metric {quote(metric)}" if runs else "no FINISHED trial run"
        where = f"experiment {quote(experiment.name)}" + (f", sweep {quote(sweep)}" if sweep else "")
        raise ExportError(f"{where}: {what}")
    return pick.item, metric, mode


def _download(client: Any, run_id: str, name: str, dst: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, name, str(dst)))
    except Exception:
        return None


def model_card(cfg: Any, run: Any, metric: str, mode: str, matrix: dict | None, meta: dict, experiment: str,
               has_generator: bool) -> str:
    """A short Markdown card: data, defense, key config, matrix, provenance, caveats."""
    key = ["dataset", "model", "defense", "eps", "iterations", "warmup", "batch_size", "lr", "seed"]
    from trainable.defenses.registry import DEFENSES

    if DEFENSES[cfg.defense].generator is not None:  # the generator's settings only where one was trained
        key[4:4] = ["eps_step_frac", "T", "lam", "recursive", "diversity", "use_delta", "use_label", "grad_norm",
                    "gen_width"]
    lines = [f"# {cfg.model} {cfg.defense} on {cfg.dataset}", "",
             f"Exported by l2lda-tune from MLflow experiment `{experiment}`, run `{run.info.run_id}` "
             f"(trial `{run.data.tags.get('trial_name', '')}`), selected by the best {mode} of `{metric}` = "
             f"{run.data.metrics.get(metric, float('nan')):.4f} on the validation split.", "",
             "## Use", "", "```python", "from trainable.weights import load_export",
             "model = load_export('THIS_DIR')   # eval mode; x in [0, 1], NCHW; normalisation inside", "```", "",
             "## Configuration", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {getattr(cfg, k)} |" for k in key]
    it = meta.get("iteration")
    lines += ["", f"Checkpoint iteration: {it} of {cfg.total_iterations} (warm-up {cfg.warmup} + {cfg.iterations}).",
              f"Generator weights: {'generator.safetensors' if has_generator else 'none (defense trains no generator)'}.", ""]
    if matrix:
        m = matrix.get("metrics", {})
        n = matrix.get("n") or len(matrix.get("profile", {}).get("test_indices", []))
        lines += ["## Robustness matrix (test split, accuracy)", "", f"{n} test examples, ε = {matrix.get('profile', {}).get('eps')}.", "",
                  "| column | accuracy |", "|---|---|"]
        order = [f"matrix/{c}" if "/" not in c else c for c in matrix.get("columns", [])]
        order += [k for k in ("matrix/min", "matrix/worst", "transfer/min") if k in m]
        order += [k for k in m if k not in order and k.startswith(("matrix/", "transfer/"))]
        lines += [f"| {k.split('/', 1)[1] if k.startswith('matrix/') else k} | {100 * m[k]:.2f}% |" for k in order
                  if isinstance(m.get(k), (int, float))]
        fired = [k.split("/", 1)[1] for k, v in m.items() if k.startswith("check/") and v]
        lines += ["", "Gradient-masking checks fired: " + (", ".join(fired) if fired else "none") + "."]
        if matrix.get("checks", {}).get("perturbation_ok") is False:
            lines += ["", "**Warning:** an attack column left the ε-ball or [0, 1] (see robustness_matrix.json checks)."]
        lines.append("")
    else:
        lines += ["No robustness matrix was recorded for this run.", ""]
    lines += ["## Caveats", "",
              "- `cw100`/`cw1000` are ℓ∞ PGD on the C&W margin loss (κ = 0), not the paper's C&W "
              "(mister_ed's optimisation attack); they are not directly comparable with the paper's numbers.",
              "- `min` is the lowest single column; `worst` counts an example only if it survives every column that ran. "
              "Gradient attacks alone overestimate robustness: trust a number next to APGD-CE/APGD-T and Square "
              "(AutoAttack re-evaluated the released L2L-DA MNIST model 94.61 → 87.99).",
              "- The matrix was measured with the evaluation profile in robustness_matrix.json; "
              "it never served as a selection objective.", ""]
    return "\n".join(lines)


EXPORT_FILES = ("classifier.safetensors", "generator.safetensors", "config.json", "export.json",
                "robustness_matrix.json", "model_card.md", robustbench.ENTRY_FILE, robustbench.LOADER_FILE)


def check_out_dir(out: str | os.PathLike, force: bool) -> Path:
    """--out may be new, an empty folder, or (with --force) a folder whose export files are
    replaced; never a file, never a non-empty folder by surprise. Nothing is created here."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise ExportError(f"--out {d}: is a file, not a folder")
    if d.is_dir():
        entries = [c.name for c in d.iterdir()]
        if entries and not force:
            raise ExportError(f"--out {d}: is not empty ({len(entries)} entries, e.g. {entries[0]}); pass --force to "
                              f"replace the export files in it, or choose a new folder")
        for name in EXPORT_FILES:
            if (d / name).is_dir() and not (d / name).is_symlink():
                raise ExportError(f"--out {d}: {name} is a folder; refused")
        if not os.access(d, os.W_OK | os.X_OK):
            raise ExportError(f"--out {d}: is not writable")
    else:
        anc = d.parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir() or not os.access(anc, os.W_OK | os.X_OK):
            raise ExportError(f"--out {d}: cannot be created ({anc} is not a writable folder)")
    return d


def _publish(staging: Path, out: Path) -> None:
    """Move a complete export from `staging` into `out`: a rename when `out` is new; else file by
    file with os.replace, which replaces a symlink at the target instead of writing through it.
    Stale export files of an earlier model are removed (the links themselves, never their targets)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, out)
        return
    new = {c.name for c in staging.iterdir()}
    for name in EXPORT_FILES:
        t = out / name
        if name not in new and (t.is_symlink() or t.is_file()):
            t.unlink()
    for name in sorted(new):
        os.replace(staging / name, out / name)
    staging.rmdir()


def export_command(experiment: str, out: str | os.PathLike, metric: str | None = None, register: str | None = None,
                   tracking_uri: str | None = None, *, mode: str | None = None, force: bool = False,
                   sweep: str | None = None,
                   log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Export the best finished trial of `experiment` into `out` (see module docstring).

    Everything is checked before anything is written; the export is assembled in a fresh
    staging folder beside `out` and moved in whole, so a failure leaves no half-written export.
    Returns a summary dict (run_id, metric, value, out, files, registered version)."""
    if register is not None and not register.strip():
        raise ExportError("--register: empty model name")
    out_dir = check_out_dir(out, force)
    clock = Clock(log, "export")
    clock.current = "reading the tracking store"
    with clock.heartbeat():  # a line at least every 10 s, however slow the store or the storage
        return _export(experiment, out_dir, metric, register, tracking_uri, mode, sweep, log, clock)


def _export(experiment: str, out_dir: Path, metric: str | None, register: str | None, tracking_uri: str | None,
            mode: str | None, sweep: str | None, log: Callable[[str], None] | None, clock: Clock) -> dict[str, Any]:
    from trainable.weights.export_dir import load_checkpoint_modules, save_export

    client, uri = open_store(tracking_uri)
    exp = find_experiment(client, experiment, uri)
    if sweep is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,99}", sweep):
        raise ExportError(f"--sweep {quote(sweep)}: not a sweep name")
    run, metric, mode = best_run(client, exp, metric, mode, sweep)
    clock.stage(f"best trial run {run.info.run_id} by {metric} ({mode}); loading its checkpoint")
    ckpt = run.data.tags.get("checkpoint_path")
    if not ckpt:
        raise CheckpointError(f"run {run.info.run_id}: no checkpoint_path tag (the trial saved no checkpoint)")
    from orchestrator.cluster import is_remote, local_checkpoint

    if not is_remote(ckpt) and not Path(ckpt).is_dir():
        raise CheckpointError(f"run {run.info.run_id}: checkpoint {ckpt} not found (storage moved or deleted?)")
    try:
        with local_checkpoint(ckpt) as where:  # remote storage (s3://…): fetched through pyarrow's filesystem
            cfg, clf, gen, meta = load_checkpoint_modules(where)
    except FileNotFoundError as exc:
        raise CheckpointError(f"run {run.info.run_id}: {exc}") from None
    clock.stage("checkpoint loaded; writing the export")
    provenance = {"mlflow": {"tracking_uri": uri, "experiment": experiment, "run_id": run.info.run_id,
                             "trial_id": run.data.tags.get("trial_id"), "metric": metric, "mode": mode,
                             "value": run.data.metrics.get(metric)},
                  "checkpoint": {"path": ckpt if is_remote(ckpt) else str(Path(ckpt).resolve()),
                                 "iteration": meta.get("iteration")}}
    anc = out_dir.resolve().parent
    while not anc.exists():
        anc = anc.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=anc))
    try:
        save_export(staging, clf.state_dict(), cfg.to_dict(), gen.state_dict() if gen is not None else None, provenance)
        matrix = None
        with tempfile.TemporaryDirectory() as tmp:
            got = _download(client, run.info.run_id, "robustness_matrix.json", Path(tmp))
            if got and got.is_file():
                shutil.copyfile(got, staging / "robustness_matrix.json")
                matrix = json.loads(got.read_text())
        # the field's formats beside ours: a RobustBench entry, a loader, and the card's provenance
        rb = robustbench.write(staging, cfg, matrix)
        trial = {k: run.data.tags.get(k) for k in ("trial_name", "trial_id", "sweep_name")}
        trial["run_id"] = run.info.run_id
        (staging / "model_card.md").write_text(
            model_card(cfg, run, metric, mode, matrix, meta, experiment, gen is not None)
            + "\n" + robustbench.card_sections(cfg, matrix, rb, study=experiment, trial=trial))
        staging.chmod(0o755)
        _publish(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    summary: dict[str, Any] = {"run_id": run.info.run_id, "metric": metric, "mode": mode,
                               "value": run.data.metrics.get(metric), "out": str(out_dir),
                               "checkpoint": ckpt,
                               "files": sorted(p.name for p in out_dir.iterdir() if p.is_file())}
    if register:
        from trainable.data.registry import DATASETS

        clock.stage(f"export written; registering the model as {quote(register)}")
        summary["registered"] = register_model(uri, run.info.run_id, clf, register, (2, *DATASETS[cfg.dataset].shape),
                                               model_id=logged_model_id(client, run))
    if log:
        log(f"exported run {run.info.run_id} ({metric} = {summary['value']:.4f}, {mode}) to {out_dir}: "
            f"{', '.join(summary['files'])}" + (f"; registered {register} v{summary['registered']}" if register else ""))
        log(f"export: checkpoint {ckpt} (figure2 takes it, or --checkpoint run:{run.info.run_id}); "
            f"done in {clock.elapsed:.1f} s")
    return summary


def logged_model_id(client: Any, run: Any) -> str | None:
    """The LoggedModel the sweep logged for this trial's classifier (a READY one), else None."""
    ids = [run.data.tags.get("model_id")] if run.data.tags.get("model_id") else []
    outputs = getattr(run, "outputs", None)
    ids += [o.model_id for o in (getattr(outputs, "model_outputs", None) or [])]
    for mid in ids:
        try:
            m = client.get_logged_model(mid)
        except Exception:
            continue
        if str(getattr(m.status, "name", m.status)).upper().endswith("READY"):
            return mid
    return None


def register_model(uri: str, run_id: str, model: Any, name: str, input_shape: tuple[int, ...] = (2, 1, 28, 28),
                   model_id: str | None = None) -> str:
    """Register the trial's classifier as `name`; returns the registered version.

    The sweep logs every finished trial's classifier as a LoggedModel (`model_id`): that one is
    registered as it is. A run without one (a sweep recorded before models were logged) gets
    it logged now with mlflow.pytorch.log_model into run `run_id`. Either way MLflow 3 stores a
    torch.export ("pt2") graph traced on an example input in [0, 1] (a batch of two, so the
    batch size stays free), and the registered model loads without unpickling classes."""
    import mlflow

    if not name or not name.strip():
        raise ExportError("--register: empty model name")
    mlflow.set_tracking_uri(uri)
    if model_id is not None:
        mv = mlflow.register_model(f"models:/{model_id}", name)
        return str(mv.version)
    import mlflow.pytorch
    import torch

    # Re-opening the (finished) trial run only attaches the logged model to it; it ends FINISHED again.
    with mlflow.start_run(run_id=run_id):
        example = torch.rand(input_shape)
        info = mlflow.pytorch.log_model(model.cpu().eval(), name="model", registered_model_name=name,
                                        input_example=example.numpy(), serialization_format="pt2",
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    version = getattr(info, "registered_model_version", None)
    return str(version) if version is not None else "?"
