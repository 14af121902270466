"""The defense registry (docs/extending.md): one entry per training-time defense with its facts.

An entry says how to build the defense, whether it trains adversarially at all (``plain``
does not: no adversarial batches, no shared warm-up cache), how to build its generator
when it trains one (exports and checkpoints rebuild it from the config), its cost model
for ``--dry-run``, and its source's training pipeline: augmentation on datasets whose
sources do not augment every defense, and the classifier's grad-norm clip after warm-up
(docs/method.md, "Defaults and their sources"). For the report it says which tables hold its
rows and which of its flags Table 1 ablates; registration order is the report's row order.
Plug-ins add entries through the ``l2lda_tune.defenses`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from trainable.registry import Registry, resolve


@dataclass(frozen=True)
class DefenseEntry:
    name: str
    # build(cfg, classifier, shape, num_classes, device) -> trainable.defenses.Defense; or "module:attr"
    build: Callable[..., Any] | str
    # ms of one training iteration per 100 images on LeNet-5, one CPU thread (--dry-run); or cost(cfg mapping) -> ms
    cost: float | Callable[[Mapping[str, Any]], float] | str
    adversarial: bool = True  # False: trains on clean batches only (no defense)
    # generator(cfg, shape, num_classes, *, width) -> nn.Module, for defenses that train one; None: no generator
    generator: Callable[..., nn.Module] | str | None = None
    augment: bool = False  # crops on datasets whose sources do not augment every defense (MNIST-like)
    clf_grad_clip: float = 0.0  # classifier grad-norm clip after warm-up (0: none)
    # the source's classifier LR schedule: ×0.1 at this total iteration, warm-up included (None: constant);
    # TrialConfig turns it into `lr_decay_at` for the trial's length (never, if the run ends first)
    lr_decay_step: int | None = None
    # the source's settings of a defense that takes some (TRADES, MART: steps, step_frac, beta), per dataset
    # name with "*" for the rest; passed to `build` as keywords by the defense's own factory
    settings: Mapping[str, Mapping[str, float]] | None = None
    # the report (docs/extending.md, a defense): the tables with rows of this defense (table1: the
    # ablation, table2: defenses × attacks; Table 3 follows Table 2's rows), the config flags Table 1
    # ablates with their short labels there (("recursive", "R"), …), and its name in the tables
    tables: tuple[str, ...] = ("table2",)
    ablation: tuple[tuple[str, str], ...] = ()
    label: str = ""  # empty: its registry name
    doc: str = ""

    def settings_for(self, dataset: str) -> dict[str, float]:
        """The source's settings on `dataset` (its own entry, else "*"); {} for a defense without settings."""
        table = self.settings or {}
        return dict(table.get(dataset, table.get("*", {})))

    def make(self, cfg: Any, classifier: nn.Module, shape: tuple[int, int, int], num_classes: int,
             device: torch.device) -> Any:
        return resolve(self.build)(cfg, classifier, shape, num_classes, device)

    def make_generator(self, cfg: Any, shape: Sequence[int], num_classes: int, *, width: int) -> nn.Module:
        if self.generator is None:
            raise ValueError(f"defense {self.name!r} trains no generator")
        return resolve(self.generator)(cfg, shape, num_classes, width=width)

    @property
    def ablation_flags(self) -> tuple[str, ...]:
        return tuple(flag for flag, _ in self.ablation)

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def iteration_ms(self, cfg: Mapping[str, Any]) -> float:
        """--dry-run's cost of one iteration per 100 images (LeNet-5, one CPU thread)."""
        cost = resolve(self.cost)
        return float(cost(cfg)) if callable(cost) else float(cost)


DEFENSES: Registry[DefenseEntry] = Registry("defense", "l2lda_tune.defenses", DefenseEntry)

# --dry-run costs, measured on this project's 2-core machine (docs/reliability.md, "--dry-run").
L2LDA_MS_PER_100_PER_STEP = 290.0  # per recursion step at generator width 16


def l2lda_cost(cfg: Mapping[str, Any]) -> float:
    """L2L-DA's iteration: recursion steps × generator width (cost ∝ width^1.5, at least a quarter of width 16)."""
    steps = int(cfg.get("T", 10)) if cfg.get("recursive", True) else 1
    return L2LDA_MS_PER_100_PER_STEP * steps * max(0.25, (int(cfg.get("gen_width", 64)) / 16) ** 1.5)


# TRADES and MART: one inner step (forward + input gradient of 100 images) and the rest of the iteration
# (target, outer step on [x ; x_adv]); measured at 40 steps beside PGD10-AT in one process (TRADES 1120 ms,
# MART 1250 ms, PGD10-AT 280-320 ms at load 3-4) and scaled to PGD10-AT's 270 above.
INNER_STEP_MS, OUTER_MS = 25.0, 60.0


def _inner_max_cost(name: str, cfg: Mapping[str, Any]) -> float:
    steps = DEFENSES[name].settings_for(str(cfg.get("dataset", "mnist5k"))).get("steps", 10)
    return INNER_STEP_MS * steps + OUTER_MS


def trades_cost(cfg: Mapping[str, Any]) -> float:
    """TRADES' iteration: its source's inner steps on the trial's dataset (40 on MNIST, 10 on CIFAR-10)."""
    return _inner_max_cost("trades", cfg)


def mart_cost(cfg: Mapping[str, Any]) -> float:
    """MART's iteration, as TRADES' (the same inner budget)."""
    return _inner_max_cost("mart", cfg)


# L2L-DA's ablation (the paper's Table 1): recursion, diversity, δ and y as generator inputs,
# the gradient's normalisation.
L2LDA_ABLATION = (("recursive", "R"), ("diversity", "D"), ("use_delta", "δ"), ("use_label", "y"), ("grad_norm", "g"))
AUTHORS_LR_DECAY_STEP = 50_000  # the authors' StepLR(step_size=max_step // 2) with max_step 100k
# TRADES' MNIST script: LR ×0.1 from epoch 55, i.e. after 54 epochs of 469 batches of 128 (60,000 images)
TRADES_LR_DECAY_STEP = 54 * 469

# TRADES and MART settings (docs/method.md, "TRADES and MART"): inner steps, step as a fraction of ε
# (the source's absolute step at its ε: 0.01 at 0.3 on MNIST, 0.007 at 0.031 on CIFAR-10) and β.
_MNIST_INNER = {"steps": 40, "step_frac": 0.01 / 0.3}
_CIFAR_INNER = {"steps": 10, "step_frac": 0.007 / 0.031}
TRADES_SETTINGS = {"*": {**_MNIST_INNER, "beta": 1.0}, "cifar10": {**_CIFAR_INNER, "beta": 6.0}}
MART_SETTINGS = {"*": {**_MNIST_INNER, "beta": 6.0}, "cifar10": {**_CIFAR_INNER, "beta": 6.0}}


def _ours() -> None:
    base, gen = "trainable.defenses.baselines", "trainable.defenses.l2lda"
    # Clip, augmentation and LR schedule (docs/method.md, "Defaults and their sources"): the authors
    # clip (1.0) and crop only in their own method's adversarial phase, and their L2L-DA trainer
    # multiplies the classifier's LR by 0.1 at step 50,000 of its 100,000 (StepLR at max_step // 2,
    # counted from the first warm-up step; also for their L2L* reproduction); their baselines
    # (mister_ed's loop) and Madry's PGD-AT do none of these and keep the rate constant.
    DEFENSES.add(DefenseEntry("plain", f"{base}:Plain", 20.0, adversarial=False, doc="no defense"))
    DEFENSES.add(DefenseEntry("fgsm_at", f"{base}:FGSMAT", 55.0, doc="FGSM-AT, CE over [x ; x_adv]"))
    DEFENSES.add(DefenseEntry("pgd10_at", f"{base}:pgd10_at", 270.0, doc="PGD-AT, 10 steps of ε/4"))
    DEFENSES.add(DefenseEntry("pgd100_at", f"{base}:pgd100_at", 2500.0, doc="PGD-AT, 100 steps of ε/12"))
    DEFENSES.add(DefenseEntry("cw100_at", f"{base}:cw100_at", 2500.0, doc="PGD-AT on the C&W margin, 100 steps"))
    own = "trainable.defenses.trades_mart"
    DEFENSES.add(DefenseEntry("trades", f"{own}:trades", "trainable.defenses.registry:trades_cost",
                              settings=TRADES_SETTINGS, lr_decay_step=TRADES_LR_DECAY_STEP,
                              doc="TRADES (Zhang et al. 2019), CE(x) + β·KL(p(x) ‖ p(x_adv)), x_adv ascending the KL"))
    DEFENSES.add(DefenseEntry("mart", f"{own}:mart", "trainable.defenses.registry:mart_cost",
                              settings=MART_SETTINGS,
                              doc="MART (Wang et al. 2020), boosted CE on x_adv + β·(1 − p_y(x))-weighted KL"))
    DEFENSES.add(DefenseEntry("l2l_star", f"{gen}:L2LStarDefense", 170.0, generator=f"{gen}:l2lstar_generator",
                              augment=True, clf_grad_clip=1.0, lr_decay_step=AUTHORS_LR_DECAY_STEP,
                              tables=("table1", "table2"), label="L2L*",
                              doc="L2L* (Chen et al.), one-shot generator"))
    DEFENSES.add(DefenseEntry("l2lda", f"{gen}:L2LDADefense", "trainable.defenses.registry:l2lda_cost",
                              generator=f"{gen}:l2lda_generator", augment=True, clf_grad_clip=1.0,
                              lr_decay_step=AUTHORS_LR_DECAY_STEP, tables=("table1", "table2"),
                              ablation=L2LDA_ABLATION, label="L2L-DA",
                              doc="L2L-DA (Algorithm 1), recursive stochastic generator"))


DEFENSES.builtins(_ours)


def build_defense(cfg: Any, classifier: nn.Module, shape: tuple[int, int, int], num_classes: int,
                  device: torch.device) -> Any:
    if cfg.defense not in DEFENSES:
        raise ValueError(f"defense: {DEFENSES.unknown(cfg.defense)}")
    return DEFENSES[cfg.defense].make(cfg, classifier, shape, num_classes, device)


def build_generator(cfg: Any, shape: Sequence[int], num_classes: int, *, width: int | None = None) -> nn.Module:
    """The generator the trial's defense trains, built by its registry entry, at `width` (default cfg.gen_width)."""
    if cfg.defense not in DEFENSES:
        raise ValueError(f"defense: {DEFENSES.unknown(cfg.defense)}")
    return DEFENSES[cfg.defense].make_generator(cfg, shape, num_classes, width=width or cfg.gen_width)
