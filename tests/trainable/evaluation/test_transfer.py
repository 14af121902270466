"""Black-box transfer from surrogates A/B/C (paper Table 3, issue 5)."""
from __future__ import annotations

import torch

from trainable.config import TrialConfig
from trainable.experiment.loop import Experiment
from trainable.evaluation.transfer import prepare_transfer
from trainable.training.surrogates import SURROGATES, surrogate_config, surrogate_dir


def _cfg(cache_dir: str, **kw) -> TrialConfig:
    base = dict(dataset="mnist5k", defense="plain", warmup=20, iterations=20, transfer_iterations=15,
                batch_size=50, steps_per_report=40, test_subset=60, val_subset=50, cache_dir=cache_dir,
                eval_columns=["natural", "pgd10", "transfer"], gen_width=8, T=2, gen_attack_steps=3,
                gen_attack_samples=2)
    base.update(kw)
    return TrialConfig.from_dict(base)


def test_surrogate_config_is_independent_and_natural_only(cache_dir):
    cfg = _cfg(cache_dir, defense="l2lda", transfer_iterations=0, iterations=77).resolved()
    s = surrogate_config(cfg, "pgd10_at")
    assert s.defense == "pgd10_at" and s.model == "lenet5" and s.iterations == 77
    assert s.seed != cfg.seed and s.eval_columns == ("natural",)
    assert surrogate_dir(s) != surrogate_dir(surrogate_config(cfg.replace(seed=1), "pgd10_at"))


def test_transfer_columns_appear_in_a_baselines_style_run(cache_dir):
    exp = Experiment(_cfg(cache_dir))
    out = {}
    while not exp.done:
        out = exp.step()
    names = [f"transfer/{s}/{a}" for s in SURROGATES for a in ("pgd10", "pgd100", "l2lda")]
    for k in names:
        assert k in out and 0.0 <= out[k] <= out["matrix/natural"], k
    assert out["transfer/min"] == min(out[k] for k in names)
    assert out["matrix/worst"] <= out["transfer/min"] and out["matrix/worst"] <= out["matrix/pgd10"]
    assert out["matrix"]["profile"]["budgets"]["transfer/C/pgd10"]["surrogate_defense"] == "pgd10_at"
    assert out["matrix"]["checks"]["perturbation_ok"]
    # The surrogates are cached on disk and loaded (not retrained) by the next matrix.
    for d in SURROGATES.values():
        assert (surrogate_dir(surrogate_config(exp.cfg, d)) / "state.pt").is_file()
    logs: list[str] = []
    ctx = exp._ctx()
    ctx.log = logs.append
    cols = prepare_transfer(exp.classifier, ctx)
    assert [c[0] for c in cols] == names
    assert sum("loaded surrogate" in m for m in logs) == 3 and not any("training surrogate" in m for m in logs)
    x, y = exp.data.test_x[:8], exp.data.test_y[:8]
    xa = cols[0][1](exp.classifier, x, y, eps=0.3, generator=torch.Generator().manual_seed(0))
    assert float((xa - x).abs().max()) <= 0.3 + 1e-6
