"""The matrix summary: one row per trial, every column under its short name, worst, flags fired, best marked."""
from __future__ import annotations

from orchestrator import matrix_table as mt

PGD_AT = {"matrix/natural": 0.95, "matrix/pgd100": 0.806, "matrix/apgd_ce": 0.75, "matrix/apgd_t": 0.73,
          "matrix/fab_t": 0.80, "matrix/square": 0.85, "matrix/autoattack": 0.727, "matrix/min": 0.727,
          "matrix/worst": 0.72, "check/pfree_gap": 1.0, "check/perturbation": 0.0,
          "transfer/A/pgd10": 0.9, "transfer/min": 0.9, "val/worst": 0.7, "matrix": {"indices": list(range(500))}}
L2LDA = {"matrix/natural": 0.97, "matrix/pgd100": 0.5, "matrix/apgd_ce": 0.4, "matrix/autoattack": 0.3,
         "matrix/min": 0.3, "matrix/worst": 0.29, "check/pfree_gap": 0.0, "check/unbounded_pgd": 1.0}


def test_text_table_has_every_column_worst_flags_and_the_best_row():
    text = mt.render([("pgd10_at-s0", PGD_AT, True), ("l2lda-s0", L2LDA, False), ("crashed", {}, False)],
                     n=mt.points_of(PGD_AT))
    lines = text.splitlines()
    assert "on 500 points" in lines[0]
    head = lines[1].split()
    assert head == ["trial", "nat", "PGD100", "APGD-CE", "APGD-T", "FAB-T", "Square", "AA", "A:PGD10",
                    "xfer-min", "min", "worst", "flags"]
    best = next(ln for ln in lines if "pgd10_at-s0" in ln)
    assert best.startswith("*") and best.split()[1:] == ["pgd10_at-s0", "95.0", "80.6", "75.0", "73.0", "80.0",
                                                         "85.0", "72.7", "90.0", "90.0", "72.7", "72.0", "pfree-gap"]
    other = next(ln for ln in lines if "l2lda-s0" in ln)
    assert not other.startswith("*") and other.split()[-2:] == ["29.0", "eps=1"]
    assert next(ln for ln in lines if "crashed" in ln).split()[-1] == "-"  # no matrix: no flags claimed
    # the legend names only flags that fired
    assert lines[-1].endswith("eps=1 = unbounded_pgd, pfree-gap = pfree_gap")


def test_markdown_table_for_the_parent_run():
    md = mt.render([("a", PGD_AT, False), ("b", L2LDA, True)], markdown=True)
    rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert rows[0].startswith("|  | trial | nat | PGD100 |") and rows[0].endswith("| worst | flags |")
    assert rows[3].startswith("| best | **b** | **97.0** |")
    assert rows[2].startswith("|  | a | 95.0 |")


def test_no_matrix_no_table():
    assert mt.render([("t", {"val/worst": 0.5}, True)]) == ""
    assert mt.short_name("my_plugin_attack") == "my_plugin_attack"
