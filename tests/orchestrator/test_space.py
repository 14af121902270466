"""The distribution kinds of a study's space (orchestrator/space.py; docs/architecture.md, data flow):
each kind's parsing, what --dry-run reads of it, its Ray Tune domain and its Optuna suggestion."""
from __future__ import annotations

import numpy as np
import optuna
import pytest

from orchestrator.space import DISTRIBUTIONS, KINDS, SpaceError
from orchestrator.spec.schema import Param


def _parse(kind, spec, *, name="lr", is_int=False, is_float=True):
    seen = []

    def check(value, where):
        seen.append(where)
        return value

    return KINDS[kind].parse(name, spec, f"space.{name}.{kind}", check, is_int=is_int, is_float=is_float), seen


def test_every_kind_a_space_entry_may_name():
    assert DISTRIBUTIONS == ("grid", "choice", "uniform", "loguniform", "int")
    assert {k: (d.discrete, d.sampled) for k, d in KINDS.items()} == {
        "fixed": (True, False), "grid": (True, False), "choice": (True, True),
        "uniform": (False, True), "loguniform": (False, True), "int": (False, True)}


def test_listed_kinds_check_each_value_and_refuse_repeats_and_empty_lists():
    fields, seen = _parse("grid", [0.1, 0.2], name="lam")
    assert fields == {"values": (0.1, 0.2)} and seen == ["space.lam.grid[0]", "space.lam.grid[1]"]
    with pytest.raises(SpaceError, match=r"^space.lam.choice: a value is listed twice"):
        _parse("choice", [1, 1], name="lam")
    with pytest.raises(SpaceError, match=r"^space.lam.grid: expected a non-empty list"):
        _parse("grid", [], name="lam")


def test_ranges_check_their_kind_of_number_and_order():
    assert _parse("uniform", ["1/255", "8/255"], name="eps")[0] == {"low": 1 / 255, "high": 8 / 255}
    for kind, spec, flags, msg in [
        ("uniform", [0.2, 0.1], {}, r"low must be < high, got \[0.2, 0.1\]"),
        ("uniform", [0.1], {}, r"expected \[low, high\]"),
        ("uniform", [1, 4], {"is_int": True, "is_float": False}, "an integer parameter \\(use int\\)"),
        ("uniform", ["a", "b"], {}, "low and high must be numbers"),
        ("loguniform", [0.0, 1.0], {}, "low must be > 0"),
        ("int", [4, 2], {"is_int": True, "is_float": False}, r"low must be <= high, got \[4, 2\]"),
        ("int", [True, 3], {"is_int": True, "is_float": False}, "low and high must be integers"),
        ("int", [1, 3], {}, "not an integer parameter"),
    ]:
        with pytest.raises(SpaceError, match=msg):
            _parse(kind, spec, **flags)
    assert _parse("int", [2, 2], is_int=True, is_float=False)[0] == {"low": 2, "high": 2}  # one value: allowed


def test_what_dry_run_reads_span_costliest_and_description():
    grid, choice = Param("T", "grid", (5, 10)), Param("T", "choice", (5, 10, 20))
    rng, fixed = Param("lr", "loguniform", low=1e-3, high=1e-1), Param("T", "fixed", (7,))
    assert grid.dist.span(grid) == [5, 10] and rng.dist.span(rng) == [1e-3, 1e-1]
    assert grid.dist.costliest(grid) is None and fixed.dist.costliest(fixed) is None  # enumerated, priced per value
    assert choice.dist.costliest(choice) == 20 and rng.dist.costliest(rng) == 1e-1
    assert [p.describe() for p in (grid, choice, rng, fixed)] == ["grid [5, 10]", "choice [5, 10, 20]",
                                                                  "loguniform [0.001, 0.1]", "7"]


def _draws(p, n=4000):
    return np.asarray(p.dist.tune_domain(p).sample(size=n, random_state=np.random.RandomState(0)))


def test_tune_domains_draw_from_the_right_distribution():
    lin, log = Param("lr", "uniform", low=1e-4, high=1.0), Param("lr", "loguniform", low=1e-4, high=1.0)
    a, b = _draws(lin), _draws(log)
    assert a.min() >= 1e-4 and a.max() <= 1.0 and b.min() >= 1e-4 and b.max() <= 1.0
    assert abs(np.median(a) - 0.5) < 0.05  # uniform: the middle of the range
    assert abs(np.log10(np.median(b)) + 2.0) < 0.2  # log-uniform: the middle in log space, 1e-2
    ints = _draws(Param("T", "int", low=2, high=4))
    assert set(ints.tolist()) == {2, 3, 4}  # both ends included (Tune's randint excludes its upper bound)
    assert set(_draws(Param("T", "choice", (5, 10)), 200).tolist()) == {5, 10}
    for p in (Param("T", "fixed", (7,)), Param("T", "grid", (5, 10))):
        with pytest.raises(SpaceError, match="not a sampling domain"):
            p.dist.tune_domain(p)


def test_optuna_suggestions_use_each_kinds_distribution():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cols = Param("val_columns", "choice", (["natural"], ["natural", "pgd10"]))
    params = [Param("lr", "loguniform", low=1e-3, high=1e-1), Param("eps_step_frac", "uniform", low=0.1, high=0.5),
              Param("T", "int", low=2, high=4), cols]
    got = []
    for _ in range(30):
        trial = study.ask()
        got.append({p.name: p.dist.suggest(trial, p) for p in params})
        study.tell(trial, 0.0)
    dists = study.trials[0].distributions
    assert dists["lr"].log and not dists["eps_step_frac"].log
    assert (dists["T"].low, dists["T"].high) == (2, 4)
    assert all(1e-3 <= g["lr"] <= 1e-1 and 0.1 <= g["eps_step_frac"] <= 0.5 and g["T"] in (2, 3, 4) for g in got)
    # a list-valued choice travels through Optuna as JSON and comes back as the list
    assert {tuple(g["val_columns"]) for g in got} == {("natural",), ("natural", "pgd10")}
    with pytest.raises(SpaceError, match="not available with optuna search"):
        grid = Param("T", "grid", (5, 10))
        grid.dist.suggest(study.ask(), grid)
