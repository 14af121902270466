"""Paired statistics (orchestrator.stats) with hand-computed values, and `eval --compare`."""
from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator import stats
from orchestrator.stats import PairingError, align, compare_runs, mcnemar_exact, mcnemar_p, t_interval, worst_correct


def _exact(b: int, c: int) -> float:
    """min(1, 2·P[X ≤ min(b, c)]), X ~ Binomial(b + c, ½), summed by hand."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def test_mcnemar_hand_computed():
    # b = 10, c = 2: 2 · (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 · 79 / 4096
    assert mcnemar_p(10, 2) == pytest.approx(158 / 4096, abs=1e-12)
    assert round(mcnemar_p(10, 2), 4) == 0.0386
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0  # 2 · P[X ≤ 5] > 1: capped
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)
    with pytest.raises(ValueError):
        mcnemar_p(-1, 3)


def test_mcnemar_matches_scipy_and_the_binomial_sum():
    from scipy.stats import binomtest

    for b in range(0, 25, 3):
        for c in range(0, 25, 4):
            want = _exact(b, c)
            assert mcnemar_p(b, c) == pytest.approx(want, rel=1e-9, abs=1e-15), (b, c)
            if b + c:
                assert mcnemar_p(b, c) == pytest.approx(min(1.0, binomtest(b, b + c, 0.5).pvalue), rel=1e-9)


def test_mcnemar_on_vectors_counts_the_discordant_pairs():
    a = np.array([1, 1, 1, 0, 0, 1, 0], dtype=bool)
    b = np.array([1, 0, 0, 1, 0, 1, 0], dtype=bool)
    t = mcnemar_exact(a, b)
    assert (t.b, t.c, t.n) == (2, 1, 7)  # b: A right and B wrong
    assert t.p == pytest.approx(_exact(2, 1)) and not t.significant
    with pytest.raises(PairingError, match="not paired"):
        mcnemar_exact(a, b[:-1])


def test_worst_correct_is_summarize_worst():
    from trainable.evaluation import summarize

    rng = np.random.default_rng(1)
    correct = {"natural": rng.random(50) < 0.9, "pgd10": rng.random(50) < 0.6, "transfer/A/pgd10": rng.random(50) < 0.8}
    w = worst_correct({"correct": correct})
    assert w.mean() == pytest.approx(summarize(correct)["matrix/worst"])
    wt = worst_correct({"correct": correct}, stats.transfer_only)
    assert np.array_equal(wt, correct["natural"] & correct["transfer/A/pgd10"])
    with pytest.raises(PairingError, match="natural"):
        worst_correct({"correct": {"pgd10": correct["pgd10"]}})


def _m(indices, natural, pgd, eps=0.3, **more):
    return {"indices": np.asarray(indices), "correct": {"natural": np.asarray(natural, bool), "pgd10": np.asarray(pgd, bool),
                                                        **{k: np.asarray(v, bool) for k, v in more.items()}},
            "profile": {"eps": eps}}


def test_align_orders_by_test_index():
    a = _m([5, 7, 9], [1, 1, 1], [1, 0, 1])
    b = _m([9, 5, 7], [1, 1, 0], [0, 1, 0])  # index 9 → 0, 5 → 1, 7 → 0
    wa, wb, idx = align(a, b)
    assert idx.tolist() == [5, 7, 9]
    assert wa.tolist() == [True, False, True] and wb.tolist() == [True, False, False]


@pytest.mark.parametrize("b,match", [
    (_m([5, 7, 8], [1, 1, 1], [1, 1, 1]), "different test points .*2 in common"),
    (_m([5, 7], [1, 1], [1, 1]), "different test points"),
    (_m([5, 7, 9], [1, 1, 1], [1, 1, 1], eps=0.1), "ε = 0.3, B at ε = 0.1"),
    (_m([5, 7, 9], [1, 1, 1], [1, 1, 1], fgsm=[1, 1, 1]), "different columns .*only B: fgsm"),
    (_m([5, 5, 9], [1, 1, 1], [1, 1, 1]), "B: repeated test indices"),
    ({"indices": [5, 7, 9], "correct": {}}, "B: no per-example correctness vectors"),
])
def test_align_refuses_what_is_not_paired(b, match):
    with pytest.raises(PairingError, match=match):
        align(_m([5, 7, 9], [1, 1, 1], [1, 0, 1]), b)


def test_align_selected_columns_must_have_run():
    with pytest.raises(PairingError, match="none of the selected columns"):
        align(_m([1], [1], [1]), _m([1], [1], [1]), columns=stats.transfer_only)


def test_t_interval_hand_computed():
    s = t_interval([0.1, 0.2, 0.3])
    # mean 0.2, std 0.1 (ddof 1), t_{0.975, 2} = 4.302653: half-width 0.1 · 4.302653 / √3 = 0.248414
    assert s.mean == pytest.approx(0.2) and s.std == pytest.approx(0.1) and s.k == 3
    assert s.ci_low == pytest.approx(0.2 - 0.248414, abs=1e-6) and s.ci_high == pytest.approx(0.2 + 0.248414, abs=1e-6)
    one = t_interval([0.4])
    assert one.mean == 0.4 and one.k == 1 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert t_interval([]).k == 0


def test_compare_runs_pairs_by_seed_and_pools():
    idx = np.arange(12)
    ones = np.ones(12, bool)
    # seed 0: A right / B wrong on 10 points, the reverse on 2 (b = 10, c = 2)
    a0, b0 = ones.copy(), ones.copy()
    b0[:10] = False
    a0[10:] = False
    # seed 1: b = 1, c = 3
    a1, b1 = ones.copy(), ones.copy()
    b1[:1] = False
    a1[1:4] = False
    A = {0: _m(idx, ones, a0), 1: _m(idx, ones, a1), 2: _m(idx, ones, ones)}  # seed 2 only in A
    B = {1: _m(idx, ones, b1), 0: _m(idx, ones, b0), 5: _m(idx, ones, ones)}
    cmp = compare_runs(A, B)
    assert cmp.seeds == [0, 1]
    s0, s1 = cmp.per_seed
    assert (s0["b"], s0["c"], s1["b"], s1["c"]) == (10, 2, 1, 3)
    assert s0["p"] == pytest.approx(158 / 4096) and s0["diff"] == pytest.approx(8 / 12)
    assert (cmp.pooled.b, cmp.pooled.c, cmp.pooled.n) == (11, 5, 24)
    assert cmp.pooled.p == pytest.approx(_exact(11, 5))
    assert cmp.diff.mean == pytest.approx((8 / 12 + -2 / 12) / 2) and cmp.diff.k == 2
    assert cmp.acc_a.mean == pytest.approx((10 / 12 + 9 / 12) / 2)
    with pytest.raises(PairingError, match="share no seed"):
        compare_runs({0: A[0]}, {1: B[1]})


def test_format_p():
    assert stats.format_p(0.0386) == "0.039" and stats.format_p(1.2e-5) == "1.2e-05" and stats.format_p(None) == "–"


# ------------------------------------------------------------------ l2lda-tune eval --compare
@pytest.fixture(scope="module")
def sources(trained, tmp_path_factory):
    """(A: an untrained LeNet-5 state dict file, B: a 30-iteration plain checkpoint directory)."""
    import torch

    from trainable.models import build_classifier

    d = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    torch.save(build_classifier("lenet5", "mnist5k", 1).state_dict(), d / "untrained.pt")
    exp = trained("plain", warmup=0, iterations=30, lr=0.05, steps_per_report=30, test_subset=100, val_subset=50,
                  eval_columns=("natural", "fgsm"), val_columns=("natural",))
    exp.save(d / "checkpoint_000001")
    return str(d / "untrained.pt"), str(d / "checkpoint_000001"), d


def _main(argv, capsys):
    from orchestrator import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_eval_compare_cli(sources, capsys):
    import json

    a, b, d = sources
    out = d / "cmp"
    code, text, err = _main(["eval", "--compare", a, b, "--columns", "natural", "--test-subset", "100",
                             "--out", str(out)], capsys)
    assert code == 0, err
    assert "A: state dict" in text and "B: checkpoint" in text and "B − A" in text
    assert "B is more robust than A at 5%: p = " in text
    s = json.loads((out / "compare.json").read_text())
    m = s["mcnemar"]
    assert s["n"] == m["n"] == 100 and (m["c"] - m["b"]) / 100 == pytest.approx(s["diff"])
    assert m["p"] == pytest.approx(_exact(m["b"], m["c"])) and m["p"] < 0.05
    assert (out / "A" / "robustness_matrix.parquet").is_file() and (out / "B" / "robustness_matrix.parquet").is_file()


def test_eval_compare_same_source_no_difference(sources):
    from orchestrator.evaluate import compare_command

    _, b, _ = sources
    r = compare_command(b, b, columns=["natural", "fgsm"], test_subset=50, log=None)
    assert (r["mcnemar"].b, r["mcnemar"].c, r["mcnemar"].p, r["diff"]) == (0, 0, 1.0, 0.0)
    assert "no significant difference at 5% (p = 1)" in r["text"]
    assert np.array_equal(r["a"].indices, r["b"].indices)


@pytest.mark.parametrize("args,expected", [
    (["--compare", "{a}", "{d}/missing.pt"], "missing.pt: no such file or directory"),
    (["--compare", "{a}", "{b}", "--checkpoint", "{b}"], "--compare A B takes the place of --checkpoint/--export"),
    (["--compare", "{a}", "{b}", "--test-subset", "20"], "has columns"),  # each source's own columns differ
    (["--compare", "{a}", "{b}", "--columns", "natural,deepfool"], "unknown attack column 'deepfool'"),
    (["--compare", "{a}"], "--compare"),
])
def test_eval_compare_bad_input_is_one_line_exit_2(sources, capsys, args, expected):
    a, b, d = sources
    code, _, err = _main(["eval", *[x.format(a=a, b=b, d=d) for x in args]], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("l2lda-tune: error: "), err
    assert expected in lines[0], lines[0]
