"""``l2lda-tune eval``: the robustness matrix of any checkpoint, export or plain state dict (docs/architecture.md, selection).

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

from trainable.weights.checkpoint import CheckpointError
from trainable.text import Clock, quote

# Test points per profile; each column's budget under a profile is in its registry entry
# (trainable.attacks.registry, `profiles`): see profile_overrides.
PROFILES: dict[str, dict[str, Any]] = {"cpu": {"test_subset": 200}, "full": {"test_subset": 0}}


def profile_overrides(profile: str) -> dict[str, Any]:
    """The config values of an eval profile: its test points and every column's budget."""
    from trainable.attacks.registry import profile_settings

    return {**PROFILES[profile], **profile_settings(profile)}
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
        raise EvalError(f"--checkpoint {ref}: no run {quote(run_id)} in {uri}") from None
    path = run.data.tags.get("checkpoint_path")
    if not path:
        raise CheckpointError(f"run {run_id}: no checkpoint_path tag (the trial saved no checkpoint)")
    return path


def load_source(checkpoint: str | None, export: str | None, *, dataset: str = "mnist5k", model: str | None = None,
                tracking_uri: str | None = None, device: str = "cpu"):
    """(TrialConfig, classifier, generator or None, description) of whatever was passed."""
    from trainable.weights import export_dir as eio

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
    """The matrix as an aligned text table: column, accuracy with its 95% interval, seconds (a
    generator column's include its attacker's training; a column of several sub-columns, such
    as transfer, gets a row for its shared training)."""
    from trainable.evaluation import binomial_ci, metric_key

    n = len(result.indices)
    rows = [("column", "accuracy", "95% CI", "time s")]
    for col, vec in result.correct.items():
        acc = result.metrics.get(metric_key(col), float(vec.mean()))
        lo, hi = binomial_ci(acc, n)
        rows.append((col, f"{100 * acc:.2f}%", f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                     f"{result.timings.get(col, 0.0):.1f}"))
    for k, secs in result.timings.items():  # columns of several sub-columns: their shared training
        col = k.split("/", 1)[1] if k.startswith("prepare/") else None
        if col and not any(name == col for name in result.correct):
            rows.append((f"{col} (training)", "", "", f"{secs:.1f}"))
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


def _configure(checkpoint: str | None, export: str | None, profile: str, *, tracking_uri: str | None = None,
               dataset: str = "mnist5k", model: str | None = None, columns: list[str] | tuple[str, ...] | None = None,
               test_subset: int | None = None, data_root: str | None = None, device: str = "cpu", seed: int = 0):
    """(resolved TrialConfig with the profile's budgets and the overrides, classifier, generator, description)."""
    from trainable.config import ConfigError

    if profile not in PROFILES:
        raise EvalError(f"--profile {quote(profile)}: choose from {', '.join(PROFILES)}")
    cfg, clf, gen, what = load_source(checkpoint, export, dataset=dataset, model=model, tracking_uri=tracking_uri,
                                      device=device)
    overrides: dict[str, Any] = dict(profile_overrides(profile), device=device, seed=seed)
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
    return cfg, clf, gen, what


def _matrix(cfg: Any, clf: Any, gen: Any, what: str, profile: str, device: str, log: Callable[[str], None] | None):
    """The robustness matrix of `clf` on the fixed test indices of cfg's dataset (test_subset)."""
    import numpy as np
    import torch

    from trainable.data import fixed_subset, load_dataset
    from trainable.attacks.primitives import EvalContext
    from trainable.evaluation import robustness_matrix

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
    return res


def use_threads(threads: int | None, log: Callable[[str], None] | None) -> int:
    """Set torch's intra-op threads: `threads`, or (None/0) this process's CPU share as trials do
    (OMP_NUM_THREADS if set, else the CPU affinity; docs/architecture.md, resources)."""
    from trainable.training.resources import set_threads

    if threads is not None and threads < 0:
        raise EvalError(f"--threads {threads}: must be >= 1 (0: this process's CPU share)")
    n = set_threads(threads or 0)
    if log:
        log(f"eval: {n} torch thread{'s' if n != 1 else ''}")
    return n


def eval_command(checkpoint: str | None = None, export: str | None = None, profile: str = "cpu",
                 out: str | os.PathLike | None = None, tracking_uri: str | None = None, *,
                 dataset: str = "mnist5k", model: str | None = None, columns: list[str] | tuple[str, ...] | None = None,
                 test_subset: int | None = None, data_root: str | None = None, device: str = "cpu",
                 seed: int = 0, threads: int | None = None, log: Callable[[str], None] | None = print):
    """Compute and print the robustness matrix of a checkpoint / export / state dict on the test split.

    `profile` sets the budgets (see PROFILES); `columns` and `test_subset` override the
    source's. Writes robustness_matrix.json/.parquet and the heatmap into `out` if given.
    Returns the MatrixResult."""
    from orchestrator import artifacts as art

    use_threads(threads, log)
    clock = Clock(log, "eval")
    clock.current = "loading the model and the data"
    say = clock.say if log else None
    with clock.heartbeat():  # a line at least every 10 s: loading, each column, the masking checks
        cfg, clf, gen, what = _configure(checkpoint, export, profile, tracking_uri=tracking_uri, dataset=dataset,
                                         model=model, columns=columns, test_subset=test_subset, data_root=data_root,
                                         device=device, seed=seed)
        clock.current = "running the robustness matrix"
        res = _matrix(cfg, clf, gen, what, profile, device, say)
    if log:
        from orchestrator import matrix_table

        log(format_table(res, f"robustness matrix of {what} ({profile} profile)"))
        # the row a sweep's summary prints for a trial: every column, worst, masking flags fired
        log(matrix_table.render([(str(export or checkpoint or "model"), res.metrics, False)], n=len(res.indices)))
    if out is not None:
        paths = art.render_matrix(res.to_dict(), Path(out), title=what)
        if log:
            log(f"wrote {', '.join(str(p) for p in paths)}")
    return res


# ---------------------------------------------------------------------- eval --compare
def _accuracies(res: Any) -> dict[str, float]:
    from trainable.evaluation import metric_key

    out = {col: res.metrics.get(metric_key(col), float(vec.mean())) for col, vec in res.correct.items()}
    for k in ("matrix/min", "transfer/min", "matrix/worst"):
        if k in res.metrics:
            out[k.split("/", 1)[1] if k.startswith("matrix/") else k] = res.metrics[k]
    return out


def format_comparison(res_a: Any, res_b: Any, test: Any) -> str:
    """Both matrices as rows A and B, their difference B − A, the McNemar test and a verdict."""
    from orchestrator.stats import ALPHA

    acc_a, acc_b = _accuracies(res_a), _accuracies(res_b)
    cols = list(acc_a)
    rows = [["", *cols], ["A", *[f"{100 * acc_a[c]:.2f}" for c in cols]],
            ["B", *[f"{100 * acc_b[c]:.2f}" for c in cols]],
            ["B − A", *[f"{100 * (acc_b[c] - acc_a[c]):+.2f}" for c in cols]]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"A: {res_a.profile.get('source')}", f"B: {res_b.profile.get('source')}", ""]
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"accuracy (%) on the same n = {test.n} fixed test examples; eps = {res_a.profile.get('eps')}, "
                 f"{res_a.profile.get('profile')} profile, attack seed {res_a.profile.get('seed')}")
    wa, wb = acc_a["worst"], acc_b["worst"]
    lines.append(f"worst case: A {100 * wa:.2f}%, B {100 * wb:.2f}%, difference B − A = {100 * (wb - wa):+.2f} points")
    lines.append(f"exact McNemar test (McNemar 1947; Dietterich 1998), two-sided, on the worst case per example: "
                 f"b = {test.b} (A right, B wrong), c = {test.c} (A wrong, B right), p = {test.p:.4g}")
    differ = [c for c in res_a.profile.get("budgets", {})
              if res_a.profile["budgets"].get(c) != res_b.profile.get("budgets", {}).get(c)]
    if differ:
        lines.append(f"note: these columns' budgets follow each source's own config and differ: {', '.join(differ)}")
    if test.p < ALPHA:
        better, worse = ("B", "A") if test.c > test.b else ("A", "B")
        lines.append(f"{better} is more robust than {worse} at 5%: p = {test.p:.3g}")
    else:
        lines.append(f"no significant difference at 5% (p = {test.p:.3g})")
    return "\n".join(lines)


def compare_command(a: str, b: str, profile: str = "cpu", out: str | os.PathLike | None = None,
                    tracking_uri: str | None = None, *, dataset: str = "mnist5k", model: str | None = None,
                    columns: list[str] | tuple[str, ...] | None = None, test_subset: int | None = None,
                    data_root: str | None = None, device: str = "cpu", seed: int = 0, threads: int | None = None,
                    log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """``eval --compare A B``: both sources (anything ``--checkpoint`` takes, export folders
    included) evaluated now with identical settings — profile, columns, ε, attack seed, the
    same fixed test indices — then an exact McNemar test on their per-example worst case.

    Both sources are loaded and checked before either matrix runs. Returns {"a", "b": the
    MatrixResults, "mcnemar": stats.McNemar (b = A right and B wrong), "diff": worst B − A,
    "text": what was printed}; writes A/, B/ (matrices) and compare.json into `out` if given."""
    import json

    from orchestrator import artifacts as art
    from orchestrator import stats

    use_threads(threads, log)
    kw = dict(tracking_uri=tracking_uri, dataset=dataset, model=model, columns=columns, test_subset=test_subset,
              data_root=data_root, device=device, seed=seed)
    ca, clf_a, gen_a, what_a = _configure(a, None, profile, **kw)
    cb, clf_b, gen_b, what_b = _configure(b, None, profile, **kw)
    for field, va, vb in (("dataset", ca.dataset, cb.dataset), ("eps", ca.eps, cb.eps),
                          ("columns", tuple(ca.eval_columns), tuple(cb.eval_columns)),
                          ("test_subset", ca.test_subset, cb.test_subset)):
        if va != vb:
            hint = "; pass --columns to evaluate both on the same ones" if field == "columns" else ""
            raise EvalError(f"--compare: A ({what_a}) has {field} {quote(va)}, B ({what_b}) has {quote(vb)}: "
                            f"not comparable on the same test points{hint}")
    clock = Clock(log, "eval")
    say = clock.say if log else None
    with clock.heartbeat():
        clock.current = "running A's robustness matrix"
        res_a = _matrix(ca, clf_a, gen_a, what_a, profile, device, say)
        clock.current = "running B's robustness matrix"
        res_b = _matrix(cb, clf_b, gen_b, what_b, profile, device, say)
    try:
        wa, wb, _ = stats.align({"indices": res_a.indices, "correct": res_a.correct, "profile": res_a.profile},
                                {"indices": res_b.indices, "correct": res_b.correct, "profile": res_b.profile})
    except stats.PairingError as exc:
        raise EvalError(f"--compare: {exc}") from None
    test = stats.mcnemar_exact(wa, wb)
    text = format_comparison(res_a, res_b, test)
    from orchestrator import matrix_table

    text += "\n" + matrix_table.render([("A", res_a.metrics, False), ("B", res_b.metrics, False)], n=test.n)
    if log:
        log(text)
    summary = {"a": what_a, "b": what_b, "profile": profile, "eps": ca.eps, "seed": ca.seed, "n": test.n,
               "worst_a": float(wa.mean()), "worst_b": float(wb.mean()), "diff": float(wb.mean() - wa.mean()),
               "mcnemar": test.to_dict(), "significant": test.significant,
               "accuracy_a": _accuracies(res_a), "accuracy_b": _accuracies(res_b)}
    if out is not None:
        d = Path(out)
        art.render_matrix(res_a.to_dict(), d / "A", title=what_a)
        art.render_matrix(res_b.to_dict(), d / "B", title=what_b)
        (d / "compare.json").write_text(json.dumps(art._jsonable(summary), indent=2))
        if log:
            log(f"wrote {d / 'A'}, {d / 'B'}, {d / 'compare.json'}")
    return {"a": res_a, "b": res_b, "mcnemar": test, "diff": summary["diff"], "text": text}
