"""The RobustBench entry written beside an export: RobustBench's fields, filled honestly."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from orchestrator import robustbench as rbm
from trainable.attacks.autoattack import prepare_apgd_ce, prepare_apgd_t, prepare_fab_t, prepare_square
from trainable.config import TrialConfig

# The keys of RobustBench's model entries as its model_info files carry them
# (e.g. model_info/cifar10/Linf/Wong2020Fast.json).
ROBUSTBENCH_KEYS = {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                    "architecture", "eps", "clean_acc", "reported", "autoattack_acc"}


def _matrix(square_queries: int, n: int = 500, eps: float = 0.3) -> dict:
    """A test matrix whose autoattack budgets are the ones our own stage columns record."""
    ctx = SimpleNamespace(cfg=SimpleNamespace(square_queries=square_queries))
    stages = {}
    for prep in (prepare_apgd_ce, prepare_apgd_t, prepare_fab_t, prepare_square):
        (name, _, budget), = prep(None, ctx)
        stages[name] = budget
    return {"metrics": {"matrix/natural": 0.9512, "matrix/pgd100": 0.80, "matrix/autoattack": 0.7271},
            "profile": {"n": n, "eps": eps, "seed": 0, "split": "test", "dataset": "mnist5k",
                        "budgets": {"autoattack": {"cascade": list(stages), "stages": stages}}}}


def _cfg(**kw):
    return TrialConfig.from_dict({"defense": "pgd10_at", "dataset": "mnist5k", **kw}).resolved()


def test_entry_has_robustbench_fields_and_autoattack_only_for_the_standard_cascade():
    entry = rbm.entry(_cfg(), _matrix(5000))
    assert set(entry) <= set(rbm.ENTRY_FIELDS)
    assert ROBUSTBENCH_KEYS - {"reported"} <= set(entry)  # a paper's own number: none for weights trained here
    assert "reported" not in entry and "external" not in entry
    assert entry["additional_data"] is False and entry["number_forward_passes"] == 1
    assert entry["name"] == "Towards Deep Learning Models Resistant to Adversarial Attacks"
    assert entry["architecture"] == "LeNet-5" and entry["eps"] == "0.3" and entry["dataset"] == "mnist5k"
    assert entry["clean_acc"] == "95.12" and entry["autoattack_acc"] == "72.71"  # strings, as RobustBench's
    assert "on 500 fixed points of mnist5k's 1000-point test split" in entry["footnote"] and "not the 10,000-image MNIST test set" in entry["footnote"]
    json.dumps(entry)

    cpu = rbm.entry(_cfg(), _matrix(1000))  # Square with 1000 queries: not AutoAttack's standard version
    assert "autoattack_acc" not in cpu and cpu["clean_acc"] == "95.12"
    assert "square ran with n_queries = 1000 (standard: 5000)" in cpu["footnote"] and "72.71%" in cpu["footnote"]
    other_eps = rbm.entry(_cfg(), _matrix(5000, eps=0.1))
    assert "autoattack_acc" not in other_eps
    bare = rbm.entry(_cfg(), None)
    assert "clean_acc" not in bare and "No test matrix" in bare["footnote"]


def test_budget_text_and_defenses_without_a_paper():
    assert rbm.eps_text(8 / 255) == "8/255" and rbm.eps_text(0.3) == "0.3" and rbm.eps_text(1.0) == "1"
    plain = rbm.entry(_cfg(defense="plain"), _matrix(5000))
    assert {"link", "name", "authors", "venue"}.isdisjoint(plain)


@pytest.mark.parametrize("queries,standard", [(5000, True), (100, False)])
def test_standard_check_reads_the_recorded_budgets(queries, standard):
    assert rbm.standard_autoattack(_matrix(queries))[0] is standard
