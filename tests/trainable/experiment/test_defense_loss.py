"""The loop trains on the defense's loss (docs/extending.md, "A defense"); the default loss is the one
CE over [x ; x_adv] the loop computed itself before defenses owned their loss, bit for bit."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainable.config import TrialConfig
from trainable.data.loading import augment
from trainable.experiment.loop import Experiment


def _before_hook(exp: Experiment, n: int) -> dict[str, float]:
    """The training iteration as the loop wrote it before the hook: CE over the defense's batch."""
    cfg, sums = exp.cfg, {}
    for _ in range(n):
        it = exp.iteration
        idx = exp.sampler.next()
        x, y = exp.data.train_x[idx], exp.data.train_y[idx]
        if cfg.augment:
            x = augment(x, cfg.dataset, exp.aug_rng)
        adversarial = it >= cfg.warmup and exp.adversarial
        xt, yt, m = exp.defense.batch(x, y, it) if adversarial else (x, y, {})
        for g in exp.clf_opt.param_groups:
            g["lr"] = exp.lr_at(it)
        exp.classifier.train()
        logits = exp.classifier(xt)
        loss = F.cross_entropy(logits, yt)
        exp.clf_opt.zero_grad(set_to_none=True)
        loss.backward()
        if exp.clip_at(it) > 0:
            nn.utils.clip_grad_norm_(exp.classifier.parameters(), exp.clip_at(it))
        exp.clf_opt.step()
        with torch.no_grad():
            m = {**m, "train/loss": loss.detach(), "train/acc_clean": (logits[:len(y)].argmax(1) == y).float().mean()}
            if adversarial and len(yt) > len(y):
                m["train/acc_adv"] = (logits[len(y):].argmax(1) == yt[len(y):]).float().mean()
            for k, v in m.items():
                sums.setdefault(k, []).append(float(v))
        exp.iteration += 1
    return {k: sum(v) / len(v) for k, v in sums.items()}


@pytest.mark.parametrize("defense,extra", [("pgd10_at", {}), ("l2l_star", {"gen_width": 4})])
def test_default_loss_is_the_old_cross_entropy_bit_for_bit(defense, extra, tmp_path):
    cfg = TrialConfig.from_dict({"defense": defense, "warmup": 2, "iterations": 3, "batch_size": 12, "threads": 1,
                                 "val_subset": 8, "test_subset": 8, "cache_dir": str(tmp_path), **extra})
    new = Experiment(cfg, use_cache=False)  # each built right before it trains: they share torch's global RNG
    got = new.train(5)
    old = Experiment(cfg, use_cache=False)
    want = _before_hook(old, 5)
    for (k, a), b in zip(new.classifier.state_dict().items(), old.classifier.state_dict().values()):
        assert torch.equal(a, b), f"{defense}: {k} differs from the CE step before the hook"
    for k, v in want.items():
        assert abs(got[k] - v) < 1e-6, k
