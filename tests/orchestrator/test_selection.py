"""The one selection rule (orchestrator/selection.py; docs/architecture.md, selection): objective in
the study's mode, then the higher val/natural, then the earlier trial."""
from __future__ import annotations

import math

import pytest

from orchestrator import selection
from orchestrator.selection import best, candidate, rule_text, trial_index


@pytest.mark.parametrize("value", [None, "n/a", float("nan"), math.inf, -math.inf, "inf"])
def test_a_missing_or_non_finite_objective_is_no_candidate(value):
    assert candidate("t_00000", value, 0.9) is None


def test_a_candidate_keeps_its_numbers_and_item():
    c = candidate("t_00003", "0.25", "0.9", item={"run": "r"})
    assert (c.trial_id, c.value, c.natural, c.item) == ("t_00003", 0.25, 0.9, {"run": "r"})
    assert candidate("t_00004", 0.5, "not a number").natural is None


def test_the_objective_decides_in_the_studys_mode():
    pool = [candidate("t_00000", 0.4, 0.9), candidate("t_00001", 0.6, 0.1), candidate("t_00002", 0.5, 0.99)]
    assert best(pool, "max").trial_id == "t_00001"
    assert best(pool, "min").trial_id == "t_00000"
    assert best(pool, "MAX").trial_id == "t_00001"


def test_a_tie_goes_to_the_higher_val_natural_missing_or_nan_counting_lowest():
    pool = [candidate("t_00000", 0.5, None), candidate("t_00001", 0.5, 0.80), candidate("t_00002", 0.5, 0.85),
            candidate("t_00003", 0.5, float("nan"))]
    assert best(pool, "max").trial_id == "t_00002"
    assert best(pool, "min").trial_id == "t_00002"  # the tie-break is "higher natural" in either mode
    assert best([candidate("t_00000", 0.5, None), candidate("t_00001", 0.5, 0.0)], "max").trial_id == "t_00001"


def test_then_the_earlier_trial_by_its_index_not_its_spelling():
    pool = [candidate("sweep_10", 0.5, 0.9), candidate("sweep_9", 0.5, 0.9), candidate("other", 0.5, 0.9)]
    assert best(pool, "max").trial_id == "sweep_9"  # 9 < 10 although "sweep_10" < "sweep_9" as text
    assert trial_index("abc_00012") == 12
    assert trial_index("no-index") > trial_index("x_99999999")  # unnumbered ids sort after numbered ones
    # equal indices (two sweeps): the trial id itself decides, so the result never depends on input order
    a, b = candidate("b_00001", 0.5, 0.9), candidate("a_00001", 0.5, 0.9)
    assert best([a, b], "max").trial_id == best([b, a], "max").trial_id == "a_00001"


def test_no_candidate_means_no_best():
    assert best([], "max") is None
    assert best([None, candidate("t_00000", None, 0.9)], "max") is None


def test_the_rule_reads_as_applied():
    assert rule_text("val/worst", "max") == ("best val/worst (max); on a tie the higher val/natural, then the "
                                             "earlier trial (lower index)")
    # selecting on val/natural itself: no second val/natural tie-break to speak of
    assert rule_text(selection.TIE_BREAK, "max") == "best val/natural (max); on a tie the earlier trial (lower index)"
