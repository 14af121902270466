"""The robustness matrix as one row per trial: what a researcher reads first (docs/architecture.md, summary).

Every evaluated column under a short name (PGD100, APGD-T, FAB-T, Square, AA …), the paper's
`min`, the worst case per example, and the gradient-masking flags that fired; the best trial's
row is marked. The same rows end a sweep (:func:`orchestrator.sweep.summary.summarize`), an ``eval`` and the
parent run's description in MLflow (Markdown there).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

# Short names of our columns (a plug-in's column keeps its own name).
SHORT = {"natural": "nat", "fgsm": "FGSM", "pgd10": "PGD10", "pgd100": "PGD100", "cw100": "CW100",
         "cw1000": "CW1000", "l2lda": "L2L-DA", "advgan": "AdvGAN", "gap": "GAP", "apgd_ce": "APGD-CE",
         "apgd_t": "APGD-T", "fab_t": "FAB-T", "square": "Square", "autoattack": "AA", "min": "min",
         "worst": "worst"}
# Short names of the masking flags (trainable.evaluation.checks; docs/method.md, masking flags).
FLAG_SHORT = {"more_steps_help": "steps", "pfree_gap": "pfree-gap", "blackbox_beats_whitebox": "bb>wb",
              "perturbation": "bounds", "unbounded_pgd": "eps=1"}
BEST = "*"


def short_name(column: str) -> str:
    """'apgd_t' → 'APGD-T'; 'transfer/A/pgd10' → 'A:PGD10'; 'transfer/min' → 'xfer-min'."""
    if column.startswith("transfer/"):
        rest = column.split("/", 1)[1]
        if rest == "min":
            return "xfer-min"
        src, _, attack = rest.partition("/")
        return f"{src}:{SHORT.get(attack, attack)}"
    return SHORT.get(column, column)


def _columns(metrics: Iterable[Mapping[str, Any]]) -> list[str]:
    """The matrix columns any row has, in the registry's order (unknown ones after), then min and worst."""
    from trainable.evaluation import known_columns

    metrics = list(metrics)
    seen: list[str] = []
    for m in metrics:
        for k in m:
            if not isinstance(k, str):
                continue
            col = k[len("matrix/"):] if k.startswith("matrix/") else (k if k.startswith("transfer/") else None)
            if col and col not in ("min", "worst") and col not in seen:
                seen.append(col)
    order = {c: i for i, c in enumerate(known_columns())}
    seen.sort(key=lambda c: (order.get(c.split("/", 1)[0], len(order)), c))
    extra = [c for c in ("min", "worst") if any(f"matrix/{c}" in m for m in metrics)]
    return seen + extra


def _value(m: Mapping[str, Any], col: str) -> str:
    v = m.get(col if col.startswith("transfer/") else f"matrix/{col}")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "-"
    return f"{100 * v:.1f}" if math.isfinite(v) else "-"


def fired_flags(m: Mapping[str, Any]) -> list[str]:
    """Short names of the masking flags recorded as fired (``check/<flag>`` = 1)."""
    out = []
    for k, v in m.items():
        if isinstance(k, str) and k.startswith("check/"):
            try:
                if float(v) >= 0.5:
                    out.append(FLAG_SHORT.get(k.split("/", 1)[1], k.split("/", 1)[1]))
            except (TypeError, ValueError):
                continue
    return sorted(out)


def rows_of(entries: Iterable[tuple[str, Mapping[str, Any], bool]]) -> list[list[str]]:
    """[(label, metrics, is_best)] → the header and one row per entry (accuracies in %)."""
    entries = list(entries)
    cols = _columns(m for _, m, _ in entries)
    rows = [["", "trial", *(short_name(c) for c in cols), "flags"]]
    for label, m, best in entries:
        has_matrix = any(isinstance(k, str) and k.startswith("matrix/") for k in m)
        flags = fired_flags(m)
        rows.append([BEST if best else "", label, *(_value(m, c) for c in cols),
                     (", ".join(flags) if flags else "none") if has_matrix else "-"])
    return rows


def render(entries: Iterable[tuple[str, Mapping[str, Any], bool]], *, n: int | None = None,
           markdown: bool = False) -> str:
    """The table as aligned text (a terminal) or Markdown (MLflow's description)."""
    rows = rows_of(entries)
    if len(rows) == 1 or len(rows[0]) == 3:  # no entry, or no matrix column at all
        return ""
    about = (f"test accuracy in % on {n} points" if n else "test accuracy in %") + \
        f"; worst = correct under every column; {'best' if markdown else BEST} = best trial"
    if markdown:
        last = len(rows[0]) - 1
        head = "| " + " | ".join(rows[0]) + " |"
        sep = "|" + "|".join(":-:" if i == 0 else ("---" if i in (1, last) else "---:") for i in range(last + 1)) + "|"
        body = ["| " + " | ".join(("best" if i == 0 else f"**{c}**") if r[0] == BEST else c for i, c in enumerate(r))
                + " |" for r in rows[1:]]
        return "\n".join([f"Robustness matrix ({about}):", "", head, sep, *body])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"robustness matrix ({about}):"]
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 or i == len(r) - 1 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    fired = sorted({f for r in rows[1:] for f in r[-1].split(", ")} & set(FLAG_SHORT.values()))
    if fired:
        names = {s: k for k, s in FLAG_SHORT.items()}
        lines.append("masking flags (recorded warnings, docs/method.md): "
                     + ", ".join(f"{f} = {names[f]}" for f in fired))
    return "\n".join(lines)


def points_of(metrics: Mapping[str, Any]) -> int | None:
    """Test points of a result that carries its matrix (a trial's last report)."""
    mat = metrics.get("matrix")
    if isinstance(mat, Mapping) and isinstance(mat.get("indices"), (list, tuple)):
        return len(mat["indices"])
    return None
