"""The YAML study schema: shipped studies validate; malformed specs fail in one line naming the key."""
from __future__ import annotations

import textwrap

import optuna
import pytest
import yaml

from _specs import BAD_SPECS
from orchestrator.spec.load import load_spec, shipped_studies
from orchestrator.spec.schema import SpecError
from orchestrator.spec.study import build_study, condition_order
from orchestrator.sweep.dry_run import describe_study
from orchestrator.tune_runner import DefineByRun, _Conditional, base_trial_config
from trainable.config import TrialConfig

MINIMAL = {
    "name": "t",
    "base": {"dataset": "mnist5k", "iterations": 4, "warmup": 2, "steps_per_report": 2},
    "space": {"defense": {"grid": ["plain", "fgsm_at"]}},
}


def study(**changes):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MINIMAL.items()}
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return build_study(raw)


def test_every_shipped_study_validates():
    names = shipped_studies()
    assert {"smoke", "ablation", "architecture", "baselines", "hpo", "cifar10"} <= set(names)
    for name in names:
        s = load_spec(name)
        assert s.name == name
        assert s.trial_count() >= 1
        assert all(m.startswith("val/") for m in s.metrics)
        TrialConfig.from_dict(base_trial_config(s))  # the shared part of every trial is a valid config
        assert s.text.strip(), "the YAML text travels to MLflow's parent run"


def test_smoke_study_has_every_matrix_column_and_one_cpu_per_trial():
    s = load_spec("smoke")
    cols = set(s.base["eval_columns"])
    assert {"natural", "fgsm", "pgd10", "pgd100", "cw100", "cw1000", "l2lda", "advgan", "gap",
            "apgd_ce", "apgd_t", "square", "autoattack"} <= cols
    assert s.resources.cpu == 1 and s.resources.gpu == 0
    assert s.trial_count() == 2 and s.search.max_concurrent == 2
    assert [c["defense"] for c in s.grid_configs()] == ["l2lda", "pgd10_at"]


def test_budget_strings_are_resolved_once():
    s = load_spec("cifar10")
    assert s.base["eps"] == pytest.approx(8 / 255)
    s2 = study(space={"eps": {"grid": ["8/255", "16/255"]}})
    assert s2.params["eps"].values == pytest.approx((8 / 255, 16 / 255))
    s3 = study(space={"eps": {"uniform": ["2/255", "8/255"]}}, search={"type": "random"})
    assert (s3.params["eps"].low, s3.params["eps"].high) == pytest.approx((2 / 255, 8 / 255))


def test_trial_count_and_grid_configs():
    s = study(space={"defense": {"grid": ["plain", "fgsm_at"]}, "seed": {"grid": [0, 1, 2]}})
    assert s.search_type == "grid" and s.trial_count() == 6
    assert len(s.grid_configs()) == 6
    s = study(space={"defense": {"grid": ["plain", "fgsm_at"]}, "lr": {"loguniform": [1e-3, 1e-1]}},
              search={"num_samples": 3})
    assert s.search_type == "random" and s.trial_count() == 6
    s = load_spec("hpo")
    assert s.search_type == "optuna" and s.trial_count() == 40 and len(s.metrics) == 2


def test_cli_overrides_are_validated_again():
    s = load_spec("smoke").with_overrides(num_samples=3, cpus_per_trial=2, gpus_per_trial=0.5, max_concurrent=1)
    assert (s.search.num_samples, s.resources.cpu, s.resources.gpu, s.search.max_concurrent) == (3, 2.0, 0.5, 1)
    with pytest.raises(SpecError, match=r"^resources\.gpu: "):
        load_spec("smoke").with_overrides(gpus_per_trial=1.5)
    with pytest.raises(SpecError, match=r"^search\.num_samples: must be >= 1"):
        load_spec("smoke").with_overrides(num_samples=0)


def test_optuna_define_by_run_honours_conditions():
    """λ is only searched when the diversity loss is on; otherwise it keeps its default."""
    s = load_spec("hpo")
    order = [p.name for p in condition_order(s.params)]
    assert order.index("diversity") < order.index("lam")
    fn = DefineByRun(s)
    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3), directions=["maximize", "maximize"])
    seen = {True: 0, False: 0}
    for _ in range(30):
        trial = ostudy.ask()
        constants = fn(trial) or {}
        params = {**trial.params, **constants}
        seen[params["diversity"]] += 1
        assert ("lam" in trial.params) == params["diversity"]
        if params["diversity"]:
            assert 1e-3 <= params["lam"] <= 1.0
        else:
            assert constants["lam"] is None  # TrialConfig default: the dataset's λ (unused: λ_value is 0)
        assert 1 <= params["T"] <= 10 and 0.1 <= params["eps_step_frac"] <= 0.5
        cfg = TrialConfig.from_dict({**base_trial_config(s), **params})
        assert cfg.lam_value == (params["lam"] if params["diversity"] else 0.0)
        ostudy.tell(trial, [0.5, 0.5])
    assert seen[True] and seen[False]


def test_random_search_conditional_parameter():
    s = study(space={"diversity": {"choice": [True, False]},
                     "lam": {"loguniform": [1e-3, 1.0], "when": {"diversity": True}}},
              search={"type": "random", "seed": 1})
    cond = _Conditional(s.params["lam"], seed=1)

    class Spec:
        def __init__(self, config):
            self.config = config

    v = cond(Spec({"diversity": True}))
    assert isinstance(v, float) and 1e-3 <= v <= 1.0
    assert cond(Spec({"diversity": False})) is None
    # seeded: the same sequence again
    again = _Conditional(s.params["lam"], seed=1)
    assert again(Spec({"diversity": True})) == v


def test_conditional_bodies_take_the_config_dict_as_ray_hands_it(caplog):
    """Ray calls a `sample_from` body with the config dict and warns once per call for bodies
    that need its older spec wrapper; ours take the dict (no warning in a sweep's output)."""
    import logging

    from ray import tune

    s = study(space={"diversity": {"choice": [True, False]},
                     "lam": {"loguniform": [1e-3, 1.0], "when": {"diversity": True}}},
              search={"type": "random", "seed": 1})
    domain = tune.sample_from(_Conditional(s.params["lam"], seed=1))
    with caplog.at_level(logging.WARNING):
        on = domain.sample(config={"diversity": True})
        off = domain.sample(config={"diversity": False})
    assert 1e-3 <= on <= 1.0 and off is None
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


def test_describe_study_names_count_resources_and_cost():
    text = describe_study(load_spec("baselines"))
    assert "trials: 18" in text and "0.25 GPU" in text and "iterations" in text and "cost:" in text
    assert "defense=pgd100_at, seed=1" in text and "defense=trades, seed=0" in text and "defense=mart, seed=1" in text


# --------------------------------------------------------------- malformed specs
@pytest.mark.parametrize("text,expected", BAD_SPECS, ids=[e.split(":")[0] + f"-{i}" for i, (_, e) in enumerate(BAD_SPECS)])
def test_malformed_spec_fails_in_one_line_naming_the_key(text, expected, tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as exc:
        load_spec(str(p))
    msg = str(exc.value)
    assert "\n" not in msg
    if expected.startswith("spec: YAML"):
        assert msg.startswith(f"{p}: YAML syntax error at line"), msg
    else:
        assert msg.startswith(expected), msg


def test_missing_study_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="shipped studies: .*smoke"):
        load_spec(str(tmp_path / "nope.yaml"))


def test_shipped_names_load_through_importlib_resources():
    assert load_spec("smoke").source.endswith("smoke.yaml")
    assert load_spec("smoke.yaml").name == "smoke"


def test_to_dict_is_plain_data():
    d = load_spec("hpo").to_dict()
    yaml.safe_dump(d)  # only plain data (the MLflow parent records it)
    assert d["search"]["metric"] == ["val/natural", "val/worst"] and d["search"]["mode"] == ["max", "max"]
    assert d["space"]["lam"]["when"]


def test_spec_text_kept_verbatim(tmp_path):
    text = textwrap.dedent("""\
        # a comment that must survive
        name: keep
        space: {seed: {grid: [0, 1]}}
        """)
    p = tmp_path / "keep.yaml"
    p.write_text(text)
    assert load_spec(str(p)).text == text


def test_tpe_start_up_trials_reach_the_sampler():
    from orchestrator.sweep.tuner import build_search

    def sampler(search):
        st = study(space={"lr": {"choice": [0.1, 0.2]}}, search={"type": "optuna", **search})
        return build_search(st).searcher._sampler if hasattr(build_search(st), "searcher") else build_search(st)._sampler

    assert sampler({})._n_startup_trials == 10  # Optuna's default, kept unless the study sets it
    assert sampler({"n_startup_trials": 3})._n_startup_trials == 3
