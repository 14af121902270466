"""`l2lda-tune report`: the paper's tables from finished studies in MLflow, written to ``--out``.

* ``report.md`` — Table 1 (the ablation: rows of the defenses whose registry entry puts them in
  Table 1, the ablated one's by the flags that vary, R×D / δ×y for L2L-DA), Table 2 (defenses ×
  white-box, parameter-free and gradient-free attacks, Min, worst), Table 3 (defenses × transfer
  from surrogates A/B/C, Min), each cell ``mean ± std`` over seeds (percent) with a 95% Wilson
  interval over the pooled test points; under each table its *paired comparisons*
  (:mod:`orchestrator.report.paired`); then every gradient-masking flag that fired, as a warning;
* ``table1.parquet``, ``table2.parquet``, ``table3.parquet`` — the same cells, long format;
* ``paired.json`` (with the per-seed tests) and ``paired.parquet`` — the paired comparisons;
* ``heatmap.png`` — Table 2's means; ``eps_curve_<row>.png`` — accuracy vs ε per defense.

Our ``cw100``/``cw1000`` are ℓ∞ PGD on the C&W margin loss, not the paper's C&W
optimisation attack (mister_ed); the report says so under Table 2.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator import stats
from orchestrator.report.collect import ReportError, collect
from orchestrator.report.paired import compare_rows, paired_markdown, row_pairs, write_paired
from orchestrator.report.plots import write_eps_curve, write_heatmap
from orchestrator.report.tables import (FLAG_TEXT, SURROGATE_LETTERS, ablating_defenses, ablation_flags,
                                        build_table, defense_rank, determinism_note, display_name, flags_of,
                                        generator_checks, group_rows, identity_keys, in_table, is_on, markdown_table,
                                        pipeline_note, row_identity, slug, table_keys, write_table_parquet)
from trainable.evaluation.transfer import TRANSFER_ATTACKS
from trainable.text import Clock, quote

CW_NOTE = ("`cw100`/`cw1000` are ℓ∞ PGD on the C&W margin loss (κ = 0, step ε/12, keep-best), not the paper's "
           "C&W optimisation attack (mister_ed: Adam, soft ℓ∞ penalty, binary search): not directly comparable "
           "with the paper's C&W column. `min` is the paper's lowest white-box column; `autoattack` is our "
           "standard cascade APGD-CE → APGD-T → FAB-T → Square: a point counts only if no stage fools it "
           "(each stage run as its own column, so the columns already in the matrix are reused).")


@dataclass
class _Report:
    """What the report has written so far: report.md's lines, files, paired comparisons, tables not built."""

    out: Path
    md: list[str]
    written: dict[str, Any] = field(default_factory=lambda: {"tables": {}})
    paired: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def notes(self, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        for note in (pipeline_note(rows), determinism_note(rows)):
            self.md += [note, ""] if note else []


def make_report(recs: Sequence[Mapping[str, Any]], out: str | Path, experiment: str = "") -> dict[str, Any]:
    """Write report.md, table{1,2,3}.parquet and the PNGs from trial records; returns what was written."""
    if not recs:
        raise ReportError(f"experiment {quote(experiment)}: no finished trial with a robustness matrix")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flags = ablation_flags()
    ablating = set(ablating_defenses())
    ablated = [r for r in recs if r["params"].get("defense") in ablating]
    varying = [f for f in flags if len({r["params"].get(f) for r in ablated}) > 1]
    # An ablation flag names a row only where it varies among the ablated defense's trials (another
    # defense in the same report, e.g. L2L*, sets its own flags and must not split them).
    keys = [k for k in identity_keys(recs) if k not in flags or k in varying]
    rows = group_rows(recs, keys)
    md = [f"# Robustness report: {experiment}" if experiment else "# Robustness report", ""]
    # The ε the matrix ran at (the profile's, resolved), not the config's (None = dataset default).
    eps_vals = sorted({round(float(r["eps"]), 6) for r in recs if r.get("eps") is not None})
    md.append(f"{len(recs)} finished trials, {len(rows)} rows; ε = {', '.join(f'{e:g}' for e in eps_vals) or 'unknown'}. "
              "Cells: accuracy (%) mean ± std over seeds, [95% Wilson interval over the pooled test points]. "
              "`worst` counts a point only if it survives every column that ran (transfer included).")
    md.append("")
    rep = _Report(out, md)
    _table1(rep, recs, ablated, varying)
    pairs, how = _table2(rep, recs, rows, keys, experiment)
    _table3(rep, recs, rows, pairs, how)
    warn = _masking(rep, rows)
    collapsed = generator_checks(rows)
    if collapsed:
        rep.md += ["## Generator checks", "", "⚠ These trials' generators stopped fooling the classifier during "
                   "training (`check/generator_collapsed`, docs/method.md): their rows measure a classifier trained on "
                   "attacks it had learned to ignore.", "", *collapsed, ""]
    rep.written["generator_checks"] = collapsed
    curves = [p for row, members in rows.items()
              if (p := write_eps_curve(row, members, out / f"eps_curve_{slug(row)}.png")) is not None]
    if curves:
        rep.md += ["## Accuracy vs ε", "", *[f"![{c.stem}]({c.name})" for c in curves], ""]
    rep.written["eps_curves"] = curves
    (out / "report.md").write_text("\n".join(rep.md))
    rep.written.update(paired=write_paired(rep.paired, out), paired_comparisons=rep.paired, report=out / "report.md",
                       warnings=warn, skipped=rep.skipped)
    return rep.written


def _table1(rep: _Report, recs: Sequence[Mapping[str, Any]], ablated: Sequence[Mapping[str, Any]],
            varying: Sequence[str]) -> None:
    """Table 1, the ablation: only when an ablation flag varies among the ablated defense's trials.
    The other defenses the registry puts in Table 1 join as rows of their own (the paper's L2L*
    row, Chen et al.'s one-shot generator: e.g. `--experiment table1_cpu --experiment l2lstar_cpu`),
    paired with the ablation's rows like any other row."""
    flags = ablation_flags()
    names = [display_name(n) for n in dict.fromkeys(r["params"].get("defense") for r in ablated)]
    named = " and ".join(names) or " and ".join(display_name(n) for n in ablating_defenses())
    title = f"## Table 1 — ablation of {named}"
    if not ablated:
        rep.skipped["table1"] = f"no finished {named} trial (Table 1 ablates {named}'s flags)"
    elif not varying:
        every = list(dict.fromkeys(f for r in ablated for f in flags_of(r["params"].get("defense"))))
        rep.skipped["table1"] = (f"the {len(ablated)} {named} trial{'s' if len(ablated) != 1 else ''} share every "
                                 f"ablation flag ({', '.join(every)}): nothing to ablate (sweep one, as ablation.yaml "
                                 f"does)")
    if "table1" in rep.skipped:
        rep.md += [title, "", f"Not built: {rep.skipped['table1']}.", ""]
        return

    def abl(r: Mapping[str, Any]) -> str:
        return " ".join(f"{flags[f]}={'✓' if str(r['params'].get(f)).lower() == 'true' else '✗'}" for f in varying)

    several = len(names) > 1
    other = [k for k in identity_keys(ablated) if k not in flags]
    t1rows: dict[str, list] = defaultdict(list)
    t1id: dict[str, dict[str, Any]] = {}
    for r in sorted(ablated, key=abl):
        defense = r["params"].get("defense")
        extra = ", ".join(f"{k}={r['params'].get(k)}" for k in other)
        label = (f"{display_name(defense)} " if several else "") + abl(r) + (f" ({extra})" if extra else "")
        t1rows[label].append(r)
        t1id[label] = {"defense": defense, **{flags[f]: is_on(r["params"].get(f)) for f in varying},
                       **{k: r["params"].get(k) for k in other}}
    for defense in dict.fromkeys(r["params"].get("defense") for r in recs):
        if not in_table(defense, "table1") or flags_of(defense):
            continue
        members = [r for r in recs if r["params"].get("defense") == defense]
        own = identity_keys(members)
        for r in members:
            extra = ", ".join(f"{k}={r['params'].get(k)}" for k in own)
            label = display_name(defense) + (f" ({extra})" if extra else "")
            t1rows[label].append(r)
            t1id[label] = {"defense": defense, **{k: r["params"].get(k) for k in own}}
    cells = build_table(recs, t1rows, table_keys("table1"))
    rep.md += [title, "", markdown_table(cells, "flags"), ""]
    rep.notes(t1rows)
    rep.written["tables"]["table1"] = write_table_parquet(cells, rep.out / "table1.parquet", "table1")
    # "R helps", "D helps": pairs named by the flags that differ, the ablated defense's rows first,
    # then the row with more flags on.
    rank = {k: (bool(flags_of(t1id[k]["defense"])), sum(v is True for v in t1id[k].values())) for k in t1rows}
    pairs, how = row_pairs(t1rows, t1id, rank)
    p1 = [compare_rows("table1", x, y, t1rows[x], t1rows[y], differs=d) for x, y, d in pairs]
    rep.md += [*paired_markdown(p1, how), ""]
    rep.paired += p1


def _table2(rep: _Report, recs: Sequence[Mapping[str, Any]], rows: Mapping[str, list], keys: Sequence[str],
            experiment: str) -> tuple[list, str]:
    """Table 2, defenses × attacks, its paired comparisons and heatmap; returns the pairs (Table 3 reuses them)."""
    cells = build_table(recs, rows, table_keys("table2"))
    if not cells:
        rep.skipped["table2"] = ("no trial's matrix has any of the columns "
                                 f"{', '.join(c for c, _ in table_keys('table2'))}")
    rep.md += ["## Table 2 — white-box, parameter-free and gradient-free attacks", "", markdown_table(cells), "",
               CW_NOTE, ""]
    rep.notes(rows)
    if cells:
        rep.written["tables"]["table2"] = write_table_parquet(cells, rep.out / "table2.parquet", "table2")
    flags = ablation_flags()
    ident = {row: row_identity(members[0], keys) for row, members in rows.items()}
    rank = {row: (defense_rank(members[0]["params"].get("defense")),
                  sum(is_on(members[0]["params"].get(f)) for f in flags if f in ident[row]))
            for row, members in rows.items()}
    pairs, how = row_pairs(rows, ident, rank)
    if pairs:
        p2 = [compare_rows("table2", x, y, rows[x], rows[y], differs=d) for x, y, d in pairs]
        rep.md += [*paired_markdown(p2, how), ""]
        rep.paired += p2
    if cells:
        rep.written["heatmap"] = write_heatmap(cells, rep.out / "heatmap.png", f"{experiment}: accuracy (%)")
    return pairs, how


def _table3(rep: _Report, recs: Sequence[Mapping[str, Any]], rows: Mapping[str, list], pairs: list, how: str) -> None:
    """Table 3, black-box transfer: Table 2's rows × the transfer column's surrogates and attacks."""
    tcols = [(f"{s}/{a}", f"transfer/{s}/{a}") for s in SURROGATE_LETTERS for a in TRANSFER_ATTACKS]
    tcols.append(("min", "transfer/min"))
    cells = build_table(recs, rows, tcols)
    if not cells:
        rep.skipped["table3"] = "no transfer columns ran in this study (add `transfer` to `eval_columns`)"
        rep.md += ["## Table 3 — black-box transfer", "", "No transfer columns ran in this study "
                   "(add `transfer` to `eval_columns`).", ""]
        return
    rep.md += ["## Table 3 — black-box transfer (surrogates A plain, B FGSM-AT, C PGD10-AT)", "",
               markdown_table(cells), ""]
    rep.written["tables"]["table3"] = write_table_parquet(cells, rep.out / "table3.parquet", "table3")
    if pairs:
        p3 = [compare_rows("table3", x, y, rows[x], rows[y], differs=d, columns=stats.transfer_only, metric=None)
              for x, y, d in pairs]
        rep.md += [*paired_markdown(p3, how, "transfer worst case (correct on natural input and under every "
                                             "transfer column)"), ""]
        rep.paired += p3


def _masking(rep: _Report, rows: Mapping[str, list]) -> list[str]:
    """Gradient-masking flags that fired: warnings, never hidden."""
    warn = []
    for row, members in rows.items():
        for m in members:
            for flag, text in FLAG_TEXT.items():
                if m["metrics"].get(f"check/{flag}", 0.0) >= 0.5:
                    detail = (m["masking"].get(flag) or {}).get("detail", "")
                    warn.append(f"- **{row}**, seed {m['params'].get('seed', '?')} ({m['name']}): `{flag}` — {text}"
                                + (f" ({detail})" if detail else ""))
    rep.md += ["## Gradient-masking checks", ""]
    rep.md += (["⚠ These flags fired; the affected robustness numbers may be overestimates:", "", *warn]
               if warn else ["No gradient-masking flag fired."])
    rep.md.append("")
    return warn


def report_command(experiment: str | Sequence[str], out: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Entry point of `l2lda-tune report --experiment NAME [--experiment NAME2 …] --out DIR [--tracking-uri URI]`."""
    from orchestrator.export import open_store

    # the same checks as every reader: reachable, MLflow's, never created by reading (and no
    # download progress bars on stderr)
    client, uri = open_store(tracking_uri)
    recs = collect(client, experiment, log=print)
    clock = Clock(print, "report")
    clock.current = "building tables and figures"
    with clock.heartbeat():
        written = make_report(recs, out, " + ".join([experiment] if isinstance(experiment, str) else experiment))
    clock.stage("tables and figures written")
    for table, why in written["skipped"].items():
        print(f"report: {table} not built: {why}")
    pairs = written["paired_comparisons"]
    print(f"report: {written['report']} ({', '.join(sorted(written['tables']))}; "
          f"{len(pairs)} paired comparisons, {sum(e['significant'] for e in pairs)} significant at 5%; "
          f"{len(written['warnings'])} masking warnings; {len(written['generator_checks'])} collapsed generators)")
    return written
