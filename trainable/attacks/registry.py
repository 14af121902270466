"""The column registry of the robustness matrix (docs/extending.md): one entry per attack column.

An entry carries everything the tool needs to know about a column:

* how to run it — ``attack(model, x, y, *, eps, generator) -> x_adv`` with a fixed ``budget``,
  or ``prepare(model, ctx) -> [(metric name, attack_fn, budget)]`` for columns that first
  train something (generator columns) or yield sub-columns (``transfer/A/pgd10`` …);
* its ``kind`` — ``gradient`` (white-box, follows the target's gradient), ``parameter_free``
  (APGD/FAB/AutoAttack), ``gradient_free`` (Square), ``generator`` (a learned attacker
  trained against the frozen classifier), ``transfer`` (perturbations from surrogates) —,
  from which the gradient-masking checks take their roles (docs/architecture.md, selection);
* the report tables that show it (``table1``: the ablation, ``table2``: defenses × attacks);
* which contract suite runs it (``fast``: the default test run; ``slow``; ``own``: its own tests);
* whether it is a composite — the worst case per example over ``stages``, other columns each
  run as its own column would be, so those the matrix already ran are reused (``autoattack``);
* its cost: input-gradient steps per attacked point (``cost``), the preparation's steps
  (``training``, for the matrix's progress estimate) and ms (``setup``, for ``--dry-run``);
* its budget under each ``eval --profile`` (the config values it reads).

Registration order is the report's column order. Plug-ins add entries through the
``l2lda_tune.attacks`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from trainable.attacks.gradient import PGDColumn, fgsm_column
from trainable.registry import Registry, RegistryError, resolve

KINDS = ("natural", "gradient", "parameter_free", "gradient_free", "generator", "transfer")
# Roles in the masking checks (trainable.evaluation.checks): the white-box reference, the
# parameter-free attacks compared with PGD100, the black-box attacks that must not beat white-box.
KIND_ROLES: dict[str, frozenset[str]] = {
    "natural": frozenset(), "gradient": frozenset({"whitebox"}),
    "parameter_free": frozenset({"whitebox", "parameter_free"}), "gradient_free": frozenset({"blackbox"}),
    "generator": frozenset(), "transfer": frozenset({"blackbox"}),
}
TESTS = ("fast", "slow", "own")

Cost = float | Callable[[Any], float] | str


@dataclass(frozen=True)
class ColumnEntry:
    name: str
    kind: str
    attack: Callable[..., Any] | str | None = None  # attack(model, x, y, *, eps, generator) -> x_adv in the ε-ball
    budget: Mapping[str, Any] = field(default_factory=dict)  # what `attack` does, recorded in the matrix profile
    prepare: Callable[..., Any] | str | None = None  # prepare(model, ctx) -> [(name, attack_fn, budget)]
    stages: tuple[str, ...] = ()  # a composite: in the matrix, the worst case per example over these columns
    tables: tuple[str, ...] = ("table2",)
    test: str = "fast"
    cost: Cost | None = None  # input-gradient steps per test point (cfg -> float); None: budget["steps"] or 1
    setup: Callable[[Any, Callable[[dict], float]], float] | str | None = None  # one-time ms: setup(cfg, price)
    training: Callable[[Any], float] | str | None = None  # preparation in example input-gradient steps (progress)
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # eval profile -> config values
    roles: frozenset[str] | None = None  # masking-check roles; None: from the kind
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RegistryError(f"l2lda_tune.attacks: column {self.name!r} has kind {self.kind!r} "
                                f"(choose from {', '.join(KINDS)})")
        if self.test not in TESTS:
            raise RegistryError(f"l2lda_tune.attacks: column {self.name!r} has test {self.test!r} "
                                f"(choose from {', '.join(TESTS)})")
        if self.kind != "natural" and not self.stages and (self.attack is None) == (self.prepare is None):
            raise RegistryError(f"l2lda_tune.attacks: column {self.name!r} needs exactly one of attack, prepare "
                                f"or stages")

    @property
    def masking_roles(self) -> frozenset[str]:
        return self.roles if self.roles is not None else KIND_ROLES[self.kind]

    def columns(self, model: Any, ctx: Any) -> list[tuple[str, Callable[..., Any], dict]]:
        """[(metric name, attack_fn, budget)]: one for a plain attack, any number for a prepared column."""
        if self.attack is not None:
            return [(self.name, resolve(self.attack), dict(self.budget))]
        return list(resolve(self.prepare)(model, ctx))

    def steps(self, cfg: Any) -> float:
        """--dry-run: input-gradient steps per test point (a forward pass costs about a third of one)."""
        if self.cost is None:
            return float(self.budget.get("steps", 1))
        cost = resolve(self.cost)
        return float(cost(cfg)) if callable(cost) else float(cost)

    def setup_ms(self, cfg: Any, price: Callable[[dict], float]) -> float:
        """--dry-run: one-time preparation (ms); `price(overrides)` is one training iteration's ms."""
        return 0.0 if self.setup is None else float(resolve(self.setup)(cfg, price))

    def training_steps(self, cfg: Any) -> float:
        """The matrix's progress estimate: example input-gradient steps spent preparing the column."""
        return 0.0 if self.training is None else float(resolve(self.training)(cfg))


COLUMNS: Registry[ColumnEntry] = Registry("attack column", "l2lda_tune.attacks", ColumnEntry)


# ----------------------------------------------------------------- lookups by role
def column_of(name: str) -> ColumnEntry | None:
    """The entry a matrix column comes from (``transfer/A/pgd10`` → ``transfer``); None if unknown."""
    return COLUMNS.get(name) or COLUMNS.get(name.split("/", 1)[0])


def with_role(role: str) -> tuple[str, ...]:
    """Registered column names with a masking-check role, in registry order."""
    return tuple(e.name for e in COLUMNS.values() if role in e.masking_roles)


def has_role(name: str, role: str) -> bool:
    e = column_of(name)
    return e is not None and role in e.masking_roles


def table_columns(table: str) -> tuple[str, ...]:
    """The registered columns a report table shows, in registry order."""
    return tuple(e.name for e in COLUMNS.values() if table in e.tables)


def column_steps(name: str, cfg: Any, columns: tuple[str, ...] | list[str] = ()) -> float:
    """Input-gradient steps per attacked point of column `name` in a matrix of `columns`: a
    composite costs only the stages the matrix does not run as columns (rough)."""
    e = COLUMNS[name]
    if e.stages:
        return sum(column_steps(s, cfg, columns) for s in e.stages if s not in columns)
    return e.steps(cfg)


def profile_settings(profile: str) -> dict[str, Any]:
    """The config values every column's budget takes under an ``eval --profile``."""
    out: dict[str, Any] = {}
    for e in COLUMNS.values():
        for key, value in e.profiles.get(profile, {}).items():
            if key in out and out[key] != value:
                raise RegistryError(f"l2lda_tune.attacks: column {e.name!r} sets {key} = {value!r} under profile "
                                    f"{profile!r}, another column {out[key]!r}")
            out[key] = value
    return out


# ----------------------------------------------------------------- our columns
def _generator_steps(cfg: Any) -> float:
    return float(getattr(cfg, "gen_attack_samples", 1) * max(getattr(cfg, "T", 1), 1))


def _l2lda_training(cfg: Any) -> float:
    # T classifier gradients per step plus the generator's backward, on gen_attack_steps batches
    return float(cfg.gen_attack_steps) * cfg.batch_size * 3 * max(cfg.T, 1)


def _net_training(cfg: Any) -> float:
    return float(cfg.gen_attack_steps) * cfg.batch_size * 3


def _generator_setup(cfg: Any, price: Callable[[dict], float]) -> float:
    # Each generator column trains an attacker with an L2L-DA-sized step against the frozen classifier.
    return cfg.gen_attack_steps * price({"defense": "l2lda", "gen_width": cfg.gen_attack_width or cfg.gen_width})


def _square_steps(cfg: Any) -> float:
    return 0.3 * cfg.square_queries  # one forward per query


def _transfer_steps(cfg: Any) -> float:
    return 3 * (110 + _generator_steps(cfg))  # 3 surrogates × (pgd10 + pgd100 + an L2L-DA attack)


def _transfer_training(cfg: Any) -> float:
    # plain, FGSM-AT, PGD10-AT surrogates (1, 2 and 11 gradients per image), each with its own L2L-DA attacker
    it = float(cfg.transfer_iterations or cfg.iterations)
    return it * cfg.batch_size * (1 + 2 + 11) + 3 * _l2lda_training(cfg)


# Budgets per eval profile (docs/method.md, evaluation): cpu takes minutes on a CPU, full is the authors' scale.
GENERATOR_PROFILES = {"cpu": {"gen_attack_steps": 200, "gen_attack_samples": 4},
                      "full": {"gen_attack_steps": 48_000, "gen_attack_samples": 10}}
SQUARE_PROFILES = {"cpu": {"square_queries": 1000}, "full": {"square_queries": 5000}}
_PGD = {"random_start": True, "keep_best": True}
_AA = "trainable.attacks.autoattack"
_GEN = "trainable.attacks.generative"
_T12 = ("table1", "table2")


def _ours() -> None:
    add = COLUMNS.add
    add(ColumnEntry("natural", "natural", tables=_T12, test="own", cost=0.3, doc="clean accuracy"))
    add(ColumnEntry("fgsm", "gradient", fgsm_column, {"steps": 1, "step": "eps", "loss": "ce", "random_start": False},
                    tables=_T12, doc="FGSM (Goodfellow et al. 2015)"))
    add(ColumnEntry("pgd10", "gradient", PGDColumn(10, 4, "ce"), {"steps": 10, "step": "eps/4", "loss": "ce", **_PGD},
                    tables=_T12, doc="PGD, 10 steps of ε/4 (Madry et al. 2018)"))
    add(ColumnEntry("pgd100", "gradient", PGDColumn(100, 12, "ce"),
                    {"steps": 100, "step": "eps/12", "loss": "ce", **_PGD}, tables=_T12, doc="PGD, 100 steps of ε/12"))
    add(ColumnEntry("cw100", "gradient", PGDColumn(100, 12, "cw"),
                    {"steps": 100, "step": "eps/12", "loss": "cw_margin_k0", **_PGD}, tables=_T12,
                    doc="PGD on the C&W margin (κ = 0), 100 steps"))
    add(ColumnEntry("cw1000", "gradient", PGDColumn(1000, 12, "cw"),
                    {"steps": 1000, "step": "eps/12", "loss": "cw_margin_k0", **_PGD}, test="slow",
                    doc="PGD on the C&W margin, 1000 steps"))
    for name, tables, training, doc in (
            ("advgan", ("table2",), _net_training, "AdvGAN (Xiao et al. 2018)"),
            ("gap", ("table2",), _net_training, "GAP (Poursaeed et al. 2018)"),
            ("l2lda", _T12, _l2lda_training, "L2L-DA's generator as an attacker (fine-tuned or fresh)")):
        add(ColumnEntry(name, "generator", prepare=f"{_GEN}:prepare_{name}", tables=tables, cost=_generator_steps,
                        setup=_generator_setup, training=training, profiles=GENERATOR_PROFILES, doc=doc))
    add(ColumnEntry("apgd_ce", "parameter_free", prepare=f"{_AA}:prepare_apgd_ce", tables=_T12, cost=100,
                    doc="APGD-CE (Croce & Hein 2020)"))
    add(ColumnEntry("apgd_t", "parameter_free", prepare=f"{_AA}:prepare_apgd_t", cost=900,
                    doc="APGD on the targeted DLR loss, top-9 targets"))
    add(ColumnEntry("fab_t", "parameter_free", prepare=f"{_AA}:prepare_fab_t", cost=900,
                    doc="targeted FAB, ℓ∞, top-9 targets"))
    add(ColumnEntry("square", "gradient_free", prepare=f"{_AA}:prepare_square", cost=_square_steps,
                    profiles=SQUARE_PROFILES, doc="Square Attack (Andriushchenko et al. 2020)"))
    # AutoAttack: the worst case per example over its cascade's columns (docs/method.md, evaluation). It
    # ends with Square (gradient-free): a parameter-free attack, not a white-box reference.
    from trainable.attacks.autoattack import CASCADE

    # Its `prepare` is the cascade as one attack on a batch (what runs it outside the matrix).
    add(ColumnEntry("autoattack", "parameter_free", prepare=f"{_AA}:prepare_autoattack", stages=CASCADE,
                    tables=_T12, profiles=SQUARE_PROFILES,
                    roles=frozenset({"parameter_free"}), doc="the standard cascade APGD-CE → APGD-T → FAB-T → Square"))
    add(ColumnEntry("transfer", "transfer", prepare="trainable.evaluation.transfer:prepare_transfer", tables=(),
                    test="own", cost=_transfer_steps, setup="trainable.evaluation.transfer:transfer_setup", training=_transfer_training,
                    doc="PGD10, PGD100 and L2L-DA from surrogates A plain, B FGSM-AT, C PGD10-AT (Table 3)"))


COLUMNS.builtins(_ours)
