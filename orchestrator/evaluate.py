"""``l2lda-tune eval``: the robustness matrix of any checkpoint, export or plain state dict (DESIGN §4).

Sources: one of our Experiment checkpoint directories (Ray's ``checkpoint_…`` dirs hold
them), an export directory, a plain LeNet-5 / ResNet-20 state dict (``.pt``/``.pth``
loaded with ``weights_only=True``, or ``.safetensors``; ``--dataset``/``--model`` name
it), or ``run:<MLFLOW_RUN_ID>`` (the run's ``checkpoint_path`` tag, read from the
tracking store). The matrix runs on the fixed test indices of the dataset's test split.

Profiles (what they cost on a 2-core CPU, LeNet-5 / MNIST):
  cpu   200 test points, generator columns fine-tuned 200 steps with 4 z draws, Square
        1000 queries — minutes.
  full  the whole test split, the authors' budgets: generator columns fine-tuned 48,000
        steps with 10 z draws, Square 5000 queries — hours on a GPU, days on a CPU.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click

from trainable.checkpoint import CheckpointError

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"test_subset": 200, "gen_attack_steps": 200, "gen_attack_samples": 4, "square_queries": 1000},
    "full": {"test_subset": 0, "gen_attack_steps": 48_000, "gen_attack_samples": 10, "square_queries": 5000},
}
PROFILE_HELP = ("cpu: 200 test points, generator columns fine-tuned 200 steps (4 z draws), Square 1000 queries "
                "(minutes on a CPU); full: whole test split, generator columns fine-tuned 48,000 steps (10 z draws), "
                "Square 5000 queries (hours on a GPU, days on a CPU)")


class EvalError(click.ClickException):
    """Bad eval input; the message is one line."""

    exit_code = 2  # bad input: click prints the one line and exits 2 even where the CLI does not map it


def _resolve_run(ref: str, tracking_uri: str | None) -> str:
    from orchestrator.export import open_store

    run_id = ref.split(":", 1)[1].lstrip("/")
    client, uri = open_store(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise EvalError(f"--checkpoint {ref}: no run {run_id!r} in {uri}") from None
    path = run.data.tags.get("checkpoint_path")
    if not path:
        raise CheckpointError(f"run {run_id}: no checkpoint_path tag (the trial saved no checkpoint)")
    return path


def load_source(checkpoint: str | None, export: str | None, *, dataset: str = "mnist5k", model: str | None = None,
                tracking_uri: str | None = None, device: str = "cpu"):
    """(TrialConfig, classifier, generator or None, description) of whatever was passed."""
    from trainable import export_io as eio

    if (checkpoint is None) == (export is None):
        raise EvalError("pass exactly one of --checkpoint PATH or --export DIR")
    if export is not None:
        d = Path(export)
        if not eio.is_export_dir(d):
            raise CheckpointError(f"--export {d}: not an export directory (no {eio.CLASSIFIER_FILE})")
        cfg = eio.read_export_config(d)
        clf = eio.load_export(d, device)
        gen = eio.load_export_generator(d, device) if (d / eio.GENERATOR_FILE).exists() else None
        return cfg, clf, gen, f"export {d}"
    ref = str(checkpoint)
    if ref.startswith(("run:", "runs:/")):
        ref = _resolve_run(ref, tracking_uri)
    p = Path(ref)
    if p.is_dir():
        if eio.is_checkpoint_dir(p):
            cfg, clf, gen, meta = eio.load_checkpoint_modules(p, device)
            return cfg, clf, gen, f"checkpoint {p} (iteration {meta.get('iteration')})"
        if eio.is_export_dir(p):
            return load_source(None, str(p), device=device)
        raise CheckpointError(f"--checkpoint {p}: directory holds neither a checkpoint (state.pt, meta.json) "
                              f"nor an export (classifier.safetensors)")
    if p.is_file():
        cfg, clf = eio.load_state_dict_file(p, dataset=dataset, model=model, device=device)
        return cfg, clf, None, f"state dict {p} ({cfg.model} on {cfg.dataset})"
    raise CheckpointError(f"--checkpoint {p}: no such file or directory")


def format_table(result: Any, title: str = "") -> str:
    """The matrix as an aligned text table: column, accuracy with its 95% interval, seconds."""
    from trainable.evaluation import binomial_ci, metric_key

    n = len(result.indices)
    rows = [("column", "accuracy", "95% CI", "time s")]
    for col, vec in result.correct.items():
        acc = result.metrics.get(metric_key(col), float(vec.mean()))
        lo, hi = binomial_ci(acc, n)
        rows.append((col, f"{100 * acc:.2f}%", f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                     f"{result.timings.get(col, 0.0):.1f}"))
    for k in ("matrix/min", "matrix/worst", "transfer/min"):
        if k in result.metrics:
            acc = result.metrics[k]
            lo, hi = binomial_ci(acc, n)
            rows.append((k.split("/", 1)[1] if k.startswith("matrix/") else k, f"{100 * acc:.2f}%",
                         f"[{100 * lo:.1f}, {100 * hi:.1f}]", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [title] if title else []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"n = {n} test examples; eps = {result.profile.get('eps')}")
    return "\n".join(lines)


def eval_command(checkpoint: str | None = None, export: str | None = None, profile: str = "cpu",
                 out: str | os.PathLike | None = None, tracking_uri: str | None = None, *,
                 dataset: str = "mnist5k", model: str | None = None, columns: list[str] | tuple[str, ...] | None = None,
                 test_subset: int | None = None, data_root: str | None = None, device: str = "cpu",
                 seed: int = 0, log: Callable[[str], None] | None = print):
    """Compute and print the robustness matrix of a checkpoint / export / state dict on the test split.

    `profile` sets the budgets (see PROFILES); `columns` and `test_subset` override the
    source's. Writes robustness_matrix.json/.parquet and the heatmap into `out` if given.
    Returns the MatrixResult."""
    import numpy as np
    import torch

    from orchestrator import artifacts as art
    from trainable.config import ConfigError
    from trainable.data import fixed_subset, load_dataset
    from trainable.evaluation import EvalContext, robustness_matrix

    if profile not in PROFILES:
        raise EvalError(f"--profile {profile!r}: choose from {', '.join(PROFILES)}")
    cfg, clf, gen, what = load_source(checkpoint, export, dataset=dataset, model=model, tracking_uri=tracking_uri,
                                      device=device)
    overrides: dict[str, Any] = dict(PROFILES[profile], device=device, seed=seed)
    if columns:
        overrides["eval_columns"] = list(columns)
    if test_subset is not None:
        overrides["test_subset"] = int(test_subset)
    if data_root is not None:
        overrides["data_root"] = data_root
    try:
        cfg = cfg.replace(**overrides).resolved()
    except ConfigError as exc:
        raise EvalError(str(exc)) from None
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, device)
    idx = fixed_subset(len(data.test_y), cfg.test_subset)
    it = torch.as_tensor(idx, device=data.test_x.device)
    x, y = data.test_x[it], data.test_y[it]
    ctx = EvalContext(cfg=cfg, data=data, device=torch.device(device), generator=gen, seed=cfg.seed,
                      log=log or (lambda m: None))
    res = robustness_matrix(clf, x, y, columns=cfg.eval_columns, eps=cfg.eps, ctx=ctx, indices=np.asarray(idx),
                            batch_size=cfg.eval_batch_size)
    res.profile.update({"split": "test", "dataset": cfg.dataset, "profile": profile, "source": what,
                        **{k: getattr(cfg, k) for k in ("gen_attack_steps", "gen_attack_samples", "square_queries")}})
    if log:
        log(format_table(res, f"robustness matrix of {what} ({profile} profile)"))
    if out is not None:
        paths = art.render_matrix(res.to_dict(), Path(out), title=what)
        if log:
            log(f"wrote {', '.join(str(p) for p in paths)}")
    return res
