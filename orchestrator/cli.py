"""The `l2lda-tune` command line (click) (docs/architecture.md).

    l2lda-tune --space search_spaces/smoke.yaml          # run a study (a file or a shipped name)
    l2lda-tune --space hpo --dry-run                     # resolved study + cost estimate, no Ray
    l2lda-tune --space smoke --resume                    # continue an interrupted sweep
    l2lda-tune export --experiment ablation --out best/
    l2lda-tune eval --checkpoint PATH | --export DIR [--profile cpu|full]
    l2lda-tune eval --compare A B [--profile cpu|full]   # paired test of two defenses
    l2lda-tune report --experiment ablation --out reports/
    l2lda-tune figure2 --checkpoint PATH --out fig2.png

Everything that can be checked is checked before Ray starts and before any MLflow run
exists — the spec, the storage path, the tracking store, the datasets — and a problem is
one line on stderr, ``l2lda-tune: error: <message>``, with exit code 2.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import click

from trainable import __version__

PROG = "l2lda-tune"


def _user_errors() -> tuple[type[BaseException], ...]:
    from orchestrator.cluster import NodeCheckError
    from orchestrator.spec.schema import SpecError
    from orchestrator.sweep.connect import PlacementError
    from orchestrator.sweep.storage import ResumeError
    from trainable.weights.checkpoint import CheckpointError
    from trainable.config import ConfigError
    from trainable.data import DatasetMissingError

    errors: list[type[BaseException]] = [SpecError, ConfigError, CheckpointError, DatasetMissingError,
                                         FileNotFoundError, NotADirectoryError, IsADirectoryError, ResumeError,
                                         PlacementError, NodeCheckError]
    try:
        from orchestrator.tracking import TrackingUnavailable

        errors.append(TrackingUnavailable)
    except ImportError:  # pragma: no cover - tracking is part of the package
        pass
    return tuple(errors)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and the exit code (2: bad input, nothing was started)."""
    # bounded before it is split: a message never grows with the input (docs/reliability.md)
    text = str(message)
    line = " ".join((text[:2000] + (" …" if len(text) > 2000 else "")).split()) or "unknown error"
    click.echo(f"{PROG}: error: {line}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the product's input errors into one line and exit code 2."""
    errors = _user_errors()
    try:
        yield
    except errors as exc:
        msg = str(exc)
        if isinstance(exc, FileNotFoundError) and exc.filename and exc.filename not in msg:
            msg = f"{exc.filename}: {exc.strerror or msg}"
        elif isinstance(exc, FileNotFoundError) and exc.strerror and exc.filename:
            msg = f"{exc.filename}: {exc.strerror}"
        fail(msg)


def _datasets(study: Any) -> set[tuple[str, str, bool]]:
    base = study.base
    names = {base.get("dataset", "mnist5k")}
    p = study.params.get("dataset")
    if p is not None:
        names |= set(p.values)
    root = base.get("data_root", "data")
    return {(n, root, bool(base.get("download", False))) for n in names}


def check_datasets(study: Any) -> None:
    """A missing dataset is an error before Ray starts (trials would all fail the same way)."""
    from trainable.data.registry import DATASETS

    for name, root, download in sorted(_datasets(study)):
        if download:
            continue  # fetched once per node, under a lock, after Ray starts and before any trial
        DATASETS[name].check_files(os.path.expanduser(root))  # bundled datasets (mnist5k) have nothing to check


def check_out_folder(out: str | None, flag: str = "--out") -> None:
    """An output folder must be a folder (or creatable): found before any compute, not after."""
    if out is None:
        return
    from pathlib import Path

    d = Path(out)
    if d.exists() and not d.is_dir():
        fail(f"{flag} {d}: is a file, not a folder")
    anc = d
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        fail(f"{flag} {d}: cannot be created ({anc} is a file)")
    if not os.access(anc, os.W_OK | os.X_OK):
        fail(f"{flag} {d}: {'is not writable' if anc == d else f'cannot be created ({anc} is not writable)'}")


def check_device(device: str) -> None:
    """--device: cpu, cuda or cuda:N, and a CUDA device must exist here."""
    import re

    from trainable.text import quote

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        fail(f"--device {quote(device)}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        n = torch.cuda.device_count()
        idx = int(device.split(":", 1)[1]) if ":" in device else 0
        if idx >= n:
            fail(f"--device {device}: this machine has {n} CUDA device{'s' if n != 1 else ''}"
                 + ("" if n else "; use --device cpu"))


class _Group(click.Group):
    """`l2lda-tune --space X` runs a study; `l2lda-tune <command> …` runs a subcommand."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "--space FILE [OPTIONS]  |  COMMAND [ARGS]...")


@click.group(cls=_Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--space", "space", metavar="FILE", help="Study YAML file, or a shipped study name (smoke, ablation, …).")
@click.option("--name", help="Sweep name (Ray experiment directory and MLflow parent run); default <study>-<time>.")
@click.option("--address", envvar="RAY_ADDRESS", help="Attach to a running Ray cluster (also RAY_ADDRESS); "
              "default: start a local instance on loopback.")
@click.option("--storage", help="Where checkpoints go: a local path (default ./runs) or a URI (s3://…).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI (also MLFLOW_TRACKING_URI); default sqlite:///mlflow.db in the working directory.")
@click.option("--num-samples", type=int, help="Override search.num_samples.")
@click.option("--max-concurrent", type=int, help="Override search.max_concurrent.")
@click.option("--cpus-per-trial", type=float, help="Override resources.cpu.")
@click.option("--gpus-per-trial", type=float, help="Override resources.gpu (0, a fraction in (0, 1], or whole GPUs).")
@click.option("--placement-timeout", type=float, default=60.0, show_default=True, envvar="L2LDA_PLACEMENT_TIMEOUT",
              help="On an existing cluster (--address): seconds to wait for a node that can hold a trial.")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep (trusts the pickled Ray state in its directory).")
@click.option("--dry-run", is_flag=True, help="Print the resolved study and a cost estimate; run nothing.")
@click.version_option(__version__, "--version", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, space: str | None, name: str | None, address: str | None, storage: str | None,
        tracking_uri: str | None, num_samples: int | None, max_concurrent: int | None,
        cpus_per_trial: float | None, gpus_per_trial: float | None, placement_timeout: float, resume: bool,
        dry_run: bool) -> None:
    """Ray Tune sweeps of L2L-DA adversarial training, its ablations and baselines."""
    if ctx.invoked_subcommand is not None:
        if space or dry_run or resume:
            fail(f"--space/--dry-run/--resume run a study; they do not go with `{ctx.invoked_subcommand}`")
        return
    if not space:
        from orchestrator.spec.load import shipped_studies

        fail(f"--space is required: a study YAML file or a shipped study ({', '.join(shipped_studies())}); "
             f"see `{PROG} --help`")
    with user_errors():
        run_command(space=space, name=name, address=address, storage=storage, tracking_uri=tracking_uri,
                    num_samples=num_samples, max_concurrent=max_concurrent, cpus_per_trial=cpus_per_trial,
                    gpus_per_trial=gpus_per_trial, resume=resume, dry_run=dry_run, placement_timeout=placement_timeout,
                    address_origin=_origin(ctx, "address"))


def _origin(ctx: click.Context, param: str) -> str:
    """'env' when the value came from the environment (RAY_ADDRESS), else 'option'."""
    try:
        src = ctx.get_parameter_source(param)
    except Exception:
        return "option"
    return "env" if src is not None and src.name == "ENVIRONMENT" else "option"


NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,99}"  # a directory, an MLflow run name, a shell word


def resume_command(*, space: str, name: str, storage: str, tracking_uri: str | None, address: str | None,
                   overrides: dict[str, Any]) -> str:
    """The exact `l2lda-tune … --resume` command line that continues this sweep."""
    import shlex
    from pathlib import Path

    sp = str(Path(space).resolve()) if Path(space).is_file() else space
    args = [PROG, "--space", sp, "--name", name, "--storage", storage]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    if address:
        args += ["--address", address]
    for flag, v in overrides.items():
        if v is not None:
            args += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    return " ".join(shlex.quote(a) for a in args + ["--resume"])


def run_command(*, space: str, name: str | None = None, address: str | None = None, storage: str | None = None,
                tracking_uri: str | None = None, num_samples: int | None = None, max_concurrent: int | None = None,
                cpus_per_trial: float | None = None, gpus_per_trial: float | None = None, resume: bool = False,
                dry_run: bool = False, address_origin: str = "option", placement_timeout: float = 60.0) -> None:
    """Validate everything, then run the sweep (or describe it with dry_run).

    Order (docs/reliability.md): every check first, creating nothing — spec, names, storage,
    tracking store, Optuna storage, datasets, the Ray address, whether a trial fits the local
    machine; then the sweep directory is claimed (exclusively) and the store opened; only then
    does Ray start. A start that fails after the claim removes what it created."""
    import re

    from orchestrator.spec.load import load_spec
    from orchestrator.spec.schema import SpecError
    from orchestrator.sweep import connect, dry_run as dry, run as runner, signals
    from orchestrator.sweep import storage as sweep_dir
    from orchestrator.store import check_db_url, open_tracking_store, remove_new_store
    from orchestrator.tracking import check_tracking_uri, resolve_tracking_uri
    from trainable.text import quote

    study = load_spec(space)
    study = study.with_overrides(name=None, num_samples=num_samples, max_concurrent=max_concurrent,
                                 cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)
    if resume and dry_run:
        raise SpecError("--resume and --dry-run: choose one")
    if name is not None and not name.strip():
        raise SpecError("--name: empty")
    if name is not None and not re.fullmatch(NAME_RE, name):
        raise SpecError(f"--name: {quote(name)} must be a plain directory name of at most 100 letters, digits "
                        f"and _ . = + - (starting with a letter or digit)")
    if not placement_timeout >= 0:
        raise SpecError(f"--placement-timeout: must be >= 0 seconds, got {placement_timeout}")
    store = sweep_dir.resolve_storage(storage)
    uri = resolve_tracking_uri(tracking_uri)
    if dry_run:
        sweep = sweep_dir.sweep_name(study, name, store, resume=False)
        click.echo(dry.describe_study(study, name=sweep, storage=store, address=address, tracking_uri=uri))
        return
    sweep_dir.check_storage(store)
    sweep = sweep_dir.sweep_name(study, name, store, resume)
    sweep_dir.check_sweep_dir(store, sweep, resume)
    check_tracking_uri(uri)
    if study.search.storage:
        check_db_url(study.search.storage, "search.storage", create_dir=False)
    check_datasets(study)
    address = connect.check_address(address, address_origin)
    if address is None:
        connect.check_local_placement(study)
    claim = sweep_dir.claim_sweep_dir(store, sweep, resume)
    created: list = []
    ok = False
    try:
        created = open_tracking_store(uri)
        again = resume_command(space=space, name=sweep, storage=store,
                               tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), address=address,
                               overrides={"--num-samples": num_samples, "--max-concurrent": max_concurrent,
                                          "--cpus-per-trial": cpus_per_trial, "--gpus-per-trial": gpus_per_trial})
        results = runner.run_study(study, name=sweep, storage=store, tracking_uri=uri, address=address,
                                   resume=resume, resume_command=again, placement_timeout=placement_timeout)
        ok = True
    except signals.Interrupted as exc:
        ok = True  # the sweep exists and is resumable: keep everything
        click.echo(signals.interrupt_message(exc.signame, again), err=True)
        sys.exit(128 + exc.signum)
    except runner.RecordsLost as exc:
        ok = True
        fail(str(exc), code=1)
    finally:
        if claim is not None:
            claim.release(failed=not ok)
        if not ok:
            remove_new_store(created)
    failed = sum(1 for r in results if r.error)
    if failed:
        fail(f"{failed} of {len(results)} trials failed (reasons in the summary above and in MLflow)", code=1)


# ---------------------------------------------------------------------- subcommands
@cli.command("export")
@click.option("--experiment", required=True, help="MLflow experiment (study) name.")
@click.option("--out", required=True, help="Directory to write the export to.")
@click.option("--metric", default=None, help="Selection metric (a val/… metric); default: the study's first.")
@click.option("--register", default=None, metavar="MODEL", help="Also register the model in MLflow under this name.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, help="MLflow tracking URI.")
@click.option("--force", is_flag=True, help="Replace the export files in a non-empty --out folder.")
@click.option("--sweep", default=None, help="Only this sweep's trials (its --name); default: every sweep of the study.")
def export_cmd(experiment: str, out: str, metric: str | None, register: str | None, tracking_uri: str | None,
               force: bool, sweep: str | None) -> None:
    """Export the best trial's weights, config, matrix and model card."""
    with user_errors():
        from orchestrator.export import export_command

        export_command(experiment, out, metric, register, tracking_uri, force=force, sweep=sweep)


@cli.command("eval")
@click.option("--checkpoint", default=None, help="A trial checkpoint directory or a plain state dict file.")
@click.option("--export", "export_dir", default=None, help="An export directory (from `l2lda-tune export`).")
@click.option("--profile", type=click.Choice(["cpu", "full"]), default="cpu", show_default=True,
              help="Evaluation profile: cpu (small, fast) or full (paper budgets).")
@click.option("--out", default=None, help="Where to write the matrix (JSON/Parquet).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, help="MLflow tracking URI.")
@click.option("--dataset", default=None, help="Dataset of a plain state dict (default mnist5k).")
@click.option("--model", default=None, help="Classifier of a plain state dict (lenet5, resnet20).")
@click.option("--columns", default=None, help="Comma-separated matrix columns (default: the profile's).")
@click.option("--test-subset", type=int, default=None, help="Fixed test points (0: the whole test split).")
@click.option("--data-root", default=None, help="Where the torchvision datasets live.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the randomised attacks.")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="Torch threads (default: this process's CPU share, as trials use: OMP_NUM_THREADS, else the "
                   "CPU affinity).")
@click.option("--compare", nargs=2, default=None, metavar="A B",
              help="Evaluate two sources (checkpoints, exports, state dicts) with identical settings on the same "
                   "test points and test the worst-case difference (exact McNemar).")
def eval_cmd(checkpoint: str | None, export_dir: str | None, profile: str, out: str | None,
             tracking_uri: str | None, dataset: str | None, model: str | None, columns: str | None,
             test_subset: int | None, data_root: str | None, device: str, seed: int, threads: int | None,
             compare: tuple[str, str] | None) -> None:
    """The robustness matrix of a checkpoint, an export or a plain state dict, on the test split."""
    if compare and (checkpoint is not None or export_dir is not None):
        fail("eval: --compare A B takes the place of --checkpoint/--export")
    if not compare and (checkpoint is None) == (export_dir is None):
        fail("eval: give exactly one of --checkpoint or --export (or --compare A B)")
    check_device(device)
    check_out_folder(out)
    with user_errors():
        from orchestrator.evaluate import compare_command, eval_command

        extra: dict[str, Any] = {"device": device, "seed": seed, "threads": threads}
        if dataset is not None:
            extra["dataset"] = dataset
        if model is not None:
            extra["model"] = model
        if columns is not None:
            extra["columns"] = [c.strip() for c in columns.split(",") if c.strip()]
        if test_subset is not None:
            extra["test_subset"] = test_subset
        if data_root is not None:
            extra["data_root"] = data_root
        if compare:
            compare_command(compare[0], compare[1], profile, out, tracking_uri, **extra)
        else:
            eval_command(checkpoint, export_dir, profile, out, tracking_uri, **extra)


@cli.command("report")
@click.option("--experiment", required=True, multiple=True,
              help="MLflow experiment (study) name; repeat it to report several studies as one "
                   "(e.g. table1_cpu and l2lstar_cpu, which share their test points).")
@click.option("--out", required=True, help="Directory for the Markdown and Parquet tables.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, help="MLflow tracking URI.")
def report_cmd(experiment: tuple[str, ...], out: str, tracking_uri: str | None) -> None:
    """The paper's tables (defenses × attacks, Min), mean ± std over seeds."""
    check_out_folder(out)
    with user_errors():
        from orchestrator.report.build import report_command

        report_command(list(experiment), out, tracking_uri)


@cli.command("figure2")
@click.option("--checkpoint", required=True,
              help="A trial checkpoint directory, or run:<MLFLOW_RUN_ID> (the trial's latest kept checkpoint).")
@click.option("--out", required=True, help="Output directory (figure2.json and figure2.png).")
@click.option("--images", type=click.IntRange(min=1), default=200, show_default=True,
              help="Fixed test images to attack.")
@click.option("--draws", type=click.IntRange(min=1), default=10, show_default=True, help="Draws per image (PGD restarts, z samples).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None, help="MLflow tracking URI (for run:ID).")
def figure2_cmd(checkpoint: str, out: str, images: int, draws: int, tracking_uri: str | None) -> None:
    """The paper's Figure 2: CE loss per attack iteration of PGD, L2L and L2L-DA (max and std over draws)."""
    check_out_folder(out)
    with user_errors():
        from orchestrator.figures import figure2_command

        figure2_command(checkpoint, out, n_images=images, draws=draws, tracking_uri=tracking_uri)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`l2lda-tune`): every usage error is one line and exit code 2."""
    try:
        rv = cli.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.UsageError as exc:  # bad option or value: click would print several lines
        fail(exc.format_message())
    except click.ClickException as exc:
        fail(exc.format_message(), code=exc.exit_code)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
