"""Paper figures rendered from data computed in ``trainable`` (which stays rendering-free).

Figure 2: the CE loss of PGD, L2L and L2L-DA per attack iteration — mean over test images
of the maximum over draws, with the mean standard deviation as the lower error bar (paper
§5.3). The data come from :func:`trainable.evaluation.loss_curves.compute_figure2`. Matplotlib's Agg
canvas on a bare ``Figure`` (no pyplot global state; safe in worker threads).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

LABELS = {"pgd": "PGD", "l2l": "L2L", "l2lda": "L2L-DA"}
STYLES = {"pgd": ("tab:blue", "o"), "l2l": ("tab:green", "^"), "l2lda": ("tab:red", "s")}


def _check_figure2(data: Mapping[str, Any]) -> None:
    for key in ("iterations", "methods"):
        if key not in data:
            raise ValueError(f"figure2 data: missing key {key!r}")
    n = len(data["iterations"])
    for m, c in data["methods"].items():
        for k in ("max", "std"):
            if len(c.get(k, [])) != n:
                raise ValueError(f"figure2 data: methods.{m}.{k} has {len(c.get(k, []))} values, expected {n}")


def plot_figure2(data: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """PNG of Figure 2: mean max-loss per iteration per method, lower error bar = mean std over draws."""
    from matplotlib.figure import Figure

    _check_figure2(data)
    fig = Figure(figsize=(5.5, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    it = list(data["iterations"])
    for m, c in data["methods"].items():
        color, marker = STYLES.get(m, (None, "o"))
        ax.errorbar(it, c["max"], yerr=[c["std"], [0.0] * len(it)], label=LABELS.get(m, m), color=color,
                    marker=marker, markersize=4, capsize=3)
    ax.set_xlabel("Iteration")
    ax.set_ylabel("Loss (mean over images of max over draws)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title is None:
        title = (f"{data.get('dataset', '')} · {data.get('defense', '')}-trained classifier · "
                 f"{data.get('n_images', '?')} images × {data.get('draws', '?')} draws")
    ax.set_title(title, fontsize=9)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    return p


def save_figure2(data: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write figure2.json (the data) and figure2.png (the plot) under `out_dir`; returns both paths."""
    _check_figure2(data)
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    js = d / "figure2.json"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, js)
    return [js, plot_figure2(data, d / "figure2.png")]


def figure2_command(checkpoint: str, out: str, *, n_images: int = 200, draws: int = 10,
                    tracking_uri: str | None = None, log=print) -> list[Path]:
    """`l2lda-tune figure2`: Figure 2 of the paper for a trial checkpoint, written under `out`.

    `checkpoint`: a trial checkpoint directory, or ``run:<MLFLOW_RUN_ID>`` (the run's
    ``checkpoint_path`` tag, as ``eval`` reads it). The trial's own generator is used for its
    method (L2L-DA or L2L*); the missing ones are trained against the frozen classifier for
    the checkpoint's ``gen_attack_steps``.
    """
    from trainable.evaluation.loss_curves import compute_figure2
    from trainable.experiment.loop import Experiment

    if checkpoint.startswith(("run:", "runs:/")):
        from orchestrator.evaluate import _resolve_run

        checkpoint = _resolve_run(checkpoint, tracking_uri)
        if log:
            log(f"figure2: checkpoint {checkpoint}")
    exp = Experiment.from_checkpoint(checkpoint, log=log)
    data = compute_figure2(exp.classifier, exp.cfg, exp.data, generator=exp.defense.generator,
                           n_images=n_images, draws=draws, seed=exp.cfg.seed, log=log)
    paths = save_figure2(data, out)
    for m, c in data["methods"].items():
        log(f"{LABELS.get(m, m):7s} max loss t=1 {c['max'][0]:.3f}  t={len(c['max'])} {c['max'][-1]:.3f}  "
            f"mean std {sum(c['std']) / len(c['std']):.4f}")
    log(f"wrote {', '.join(map(str, paths))}")
    return paths
