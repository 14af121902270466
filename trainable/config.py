"""One frozen, validated configuration per trial (docs/architecture.md).

Every trial — whether it runs under Ray Tune or in a plain Python process — is fully
described by a :class:`TrialConfig`. ``TrialConfig.from_dict`` rejects unknown keys and
wrong types with a one-line :class:`ConfigError` that names the key, so a typo in a
search space fails before any compute is spent. Dataset-dependent defaults (ε, λ, the
classifier) are resolved once, in :meth:`TrialConfig.resolved`, from the dataset's registry
entry, and the defense's (augmentation, classifier clip) from its entry (docs/method.md settings table).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any, Mapping

from trainable.text import quote
from trainable.errors import ConfigError

AUGMENT_CHOICES = ("auto", True, False)
AMP_CHOICES = ("bf16",)
INPUT_NORM_CHOICES = ("auto", "none", "dataset", "imagenet")  # trainable.models.classifiers.INPUT_NORMS + auto
GEN_OBJECTIVE_CHOICES = ("sum", "mean")  # trainable.generators.losses.GEN_OBJECTIVES

# Fields that artifacts written by earlier versions lack, with the value those versions used
# (TrialConfig.from_stored): their classifiers normalised by the dataset's statistics, and their
# generator averaged its loss over the T steps and built its batch norms with PyTorch's ε.
STORED_BEFORE = {"input_norm": "dataset", "gen_objective": "mean", "gen_bn_eps": 1e-5}


def default_augment(defense: str, dataset: str) -> bool:
    """The source's augmentation for a defense on a dataset (docs/method.md), from the registries.

    CIFAR-10: flip + crop for every defense. MNIST-like data: the authors' L2L-DA/L2L*
    loader crops (28, pad 4); their baselines' loader and Madry's MNIST training do not.
    """
    from trainable.data.registry import DATASETS
    from trainable.defenses.registry import DEFENSES

    return DATASETS[dataset].augment_every_defense or DEFENSES[defense].augment


def _dataset(name: str) -> Any:
    from trainable.data.registry import DATASETS

    return DATASETS[name]


def parse_budget(value: Any, key: str = "eps") -> float:
    """Parse a pixel-space budget given as a number or a fraction string such as ``"8/255"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number or a fraction like '8/255', got {quote(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9.eE+-]+\s*(/\s*[0-9.eE+-]+\s*)?", value):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError) as exc:
            raise ConfigError(f"{key}: cannot parse {quote(value)} as a budget ({exc})") from None
    raise ConfigError(f"{key}: expected a number or a fraction like '8/255', got {quote(value)}")


# Fields that say how a trial ran (or which replicate it is), not what was trained: the report never
# splits a table's rows on them (docs/architecture.md, "Registries and plug-ins").
HOW = {"identity": False}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs. Budgets are in [0, 1] pixel space (ℓ∞)."""

    # --- data ---
    dataset: str = "mnist5k"
    data_root: str = field(default="data", metadata=HOW)
    download: bool = field(default=False, metadata=HOW)
    augment: bool | str = "auto"  # auto → the source's choice per defense and dataset; true/false force it
    # --- classifier and defense ---
    model: str | None = None  # None → dataset default (LeNet-5 / ResNet-20)
    input_norm: str = "auto"  # auto → the classifier's source on this dataset (LeNet-5: none; ResNet-20 on CIFAR-10: imagenet)
    defense: str = "l2lda"
    eps: float | None = None  # None → dataset default (0.3 / 0.1 / 8/255)
    eps_step_frac: float = 0.25  # ε_step = eps_step_frac · ε (paper: ε/4)
    # --- L2L-DA generator (docs/method.md) ---
    T: int = 10
    lam: float | None = None  # None → dataset default (0.02 MNIST, 0.5 CIFAR-10)
    recursive: bool = True
    diversity: bool = True
    use_delta: bool = True
    use_label: bool = True
    grad_norm: bool = True
    z_dim: int = 8
    gen_width: int = 64
    gen_objective: str = "sum"  # sum: Eqs. 6–7 summed over the T steps (authors' code); mean: averaged (paper's Eq. 6)
    gen_bn_eps: float = 1e-10  # ε of the generator's batch norms: the authors' generator (docs/method.md)
    # --- optimisation ---
    batch_size: int = 100
    iterations: int = 100_000  # adversarial iterations after warm-up
    warmup: int = 1000  # clean warm-up iterations of the classifier
    lr: float = 0.01
    gen_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lr_decay_at: float | str | None = "auto"  # classifier LR ×0.1 at this fraction of `iterations`; None → no decay; auto → the defense's source
    grad_clip: float = 1.0  # grad-norm clip of the generator's (and generator attackers') steps
    clf_grad_clip: float | None = None  # classifier's clip in the training phase; None → per defense, 0 → none
    stop_on_collapse: bool = False  # end training when check/generator_collapsed fires (docs/method.md)
    seed: int = field(default=0, metadata=HOW)
    # --- execution ---
    device: str = field(default="auto", metadata=HOW)  # auto | cpu | cuda | cuda:N
    threads: int = field(default=0, metadata=HOW)  # torch threads; 0 → the CPU share given by the scheduler (or 1)
    gpu_fraction: float = field(default=0.0, metadata=HOW)  # caps CUDA memory to this share when in (0, 1)
    # Execution options of the training step (docs/performance.md); none changes what is computed.
    compile: bool = field(default=False, metadata=HOW)  # torch.compile the rollout's per-step kernels (eager fallback, one line, if unavailable)
    channels_last: bool = field(default=False, metadata=HOW)  # generator and classifier stored NHWC (CPU and CUDA)
    amp: str | None = field(default=None, metadata=HOW)  # "bf16": the generator under bf16 autocast, CUDA only; the classifier's loss stays fp32
    deterministic: bool = field(default=False, metadata=HOW)  # cuDNN deterministic, no autotuning, no TF32, torch's deterministic algorithms (docs/reliability.md)
    # --- reporting and evaluation ---
    steps_per_report: int = field(default=100, metadata=HOW)  # iterations per Tune step()
    val_subset: int = field(default=200, metadata=HOW)  # fixed validation points for val/ metrics
    val_columns: tuple[str, ...] = field(default=("natural", "pgd10"), metadata=HOW)
    eval_columns: tuple[str, ...] = field(default=("natural", "fgsm", "pgd10", "pgd100", "cw100"), metadata=HOW)
    test_subset: int = field(default=0, metadata=HOW)  # 0 → the whole test split
    eval_batch_size: int = field(default=500, metadata=HOW)
    gen_attack_steps: int = 300  # fine-tune steps of generator columns (authors: 48k)
    gen_attack_samples: int = 10  # z draws per example for the l2lda column
    gen_attack_width: int = 0  # 0 → gen_width; width of generators trained for columns
    square_queries: int = 5000
    transfer_iterations: int = 0  # 0 → surrogate training length from `iterations`
    eps_curve: tuple[float, ...] = field(default=(), metadata=HOW)  # ε values of the test matrix's accuracy-vs-ε PGD curve (() → none)
    cache_dir: str = field(default=".cache/l2lda-tune", metadata=HOW)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_stored(cls, d: Mapping[str, Any]) -> TrialConfig:
        """The config of a stored artifact (checkpoint, export): fields it predates take the value
        the version that wrote it used (:data:`STORED_BEFORE`), so it loads back as it was trained."""
        if not isinstance(d, Mapping):
            return cls.from_dict(d)
        return cls.from_dict({**{k: v for k, v in STORED_BEFORE.items() if k not in d}, **d})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        """Build a config from a flat mapping; unknown keys and wrong types raise ConfigError."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"config: expected a mapping, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown config key (known: {', '.join(sorted(known))})")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(k, v, hints[k]) for k, v in d.items()}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> TrialConfig:
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def flat(self, prefix: str = "") -> dict[str, str]:
        """Dotted string params for MLflow (lists joined by commas)."""
        out = {}
        for k, v in self.to_dict().items():
            out[f"{prefix}{k}"] = ",".join(map(str, v)) if isinstance(v, list) else str(v)
        return out

    # --------------------------------------------------------------- derived
    def resolved(self) -> TrialConfig:
        """Fill the dataset and defense defaults (model, ε, λ, augmentation, classifier clip, LR schedule); idempotent."""
        dd = _dataset(self.dataset)
        return dataclasses.replace(
            self,
            model=self.model or dd.model,
            input_norm=self.input_norm_value,
            eps=self.eps if self.eps is not None else dd.eps,
            lam=self.lam if self.lam is not None else dd.lam,
            augment=self.augment_value,
            clf_grad_clip=self.clf_grad_clip_value,
            lr_decay_at=self.lr_decay_at_value,
        )

    @property
    def augment_value(self) -> bool:
        """Whether this trial's training batches are augmented ("auto" → :func:`default_augment`)."""
        if self.augment == "auto":
            return default_augment(self.defense, self.dataset)
        return bool(self.augment)

    @property
    def clf_grad_clip_value(self) -> float:
        """The classifier's grad-norm clip after warm-up (0: none); warm-up never clips."""
        if self.clf_grad_clip is not None:
            return self.clf_grad_clip
        from trainable.defenses.registry import DEFENSES

        return DEFENSES[self.defense].clf_grad_clip

    @property
    def input_norm_value(self) -> str:
        """The classifier's input normalisation: "auto" → its source's on this dataset (docs/method.md, "Classifiers")."""
        if self.input_norm != "auto":
            return self.input_norm
        from trainable.models.registry import CLASSIFIERS

        return CLASSIFIERS[self.model_name].input_norm_for(self.dataset)

    @property
    def lr_decay_at_value(self) -> float | None:
        """Fraction of the adversarial iterations after which the classifier LR is ×0.1 (None: never).

        "auto" follows the defense's source at its own length: a source that decays at step N
        of its run (the authors' L2L-DA trainer: ×0.1 at 50,000 of 100,000 steps, warm-up
        included) decays here at total iteration N, so a shorter run never decays, as the
        source's run would not have by then (docs/method.md, "Defaults and their sources")."""
        if self.lr_decay_at != "auto":
            return self.lr_decay_at
        from trainable.defenses.registry import DEFENSES

        step = DEFENSES[self.defense].lr_decay_step
        if step is None or self.iterations <= 0 or step >= self.total_iterations:
            return None
        return max(0.0, (step - self.warmup) / self.iterations)

    @property
    def eps_value(self) -> float:
        return self.eps if self.eps is not None else _dataset(self.dataset).eps

    @property
    def eps_step(self) -> float:
        return self.eps_step_frac * self.eps_value

    @property
    def lam_value(self) -> float:
        """λ actually used: 0 when the diversity ablation flag is off."""
        if not self.diversity:
            return 0.0
        return self.lam if self.lam is not None else _dataset(self.dataset).lam

    @property
    def model_name(self) -> str:
        return self.model or _dataset(self.dataset).model

    @property
    def gen_steps(self) -> int:
        """Recursion length: one-shot generation when `recursive` is off (docs/method.md)."""
        return self.T if self.recursive else 1

    @property
    def total_iterations(self) -> int:
        return self.warmup + self.iterations

    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{key}: {msg}")

        # Names are checked against the registries (ours and plug-ins'), imported here: they import torch.
        from trainable.attacks.registry import COLUMNS
        from trainable.data.registry import DATASETS
        from trainable.defenses.registry import DEFENSES
        from trainable.models.registry import CLASSIFIERS

        need(self.dataset in DATASETS, "dataset", DATASETS.unknown(self.dataset))
        need(self.model is None or self.model in CLASSIFIERS, "model", CLASSIFIERS.unknown(self.model))
        need(self.defense in DEFENSES, "defense", DEFENSES.unknown(self.defense))
        if self.eps is not None:
            need(0 < self.eps <= 1 and math.isfinite(self.eps), "eps", f"must be in (0, 1], got {self.eps}")
        need(0 < self.eps_step_frac <= 1, "eps_step_frac", f"must be in (0, 1], got {self.eps_step_frac}")
        need(self.T >= 1, "T", f"must be >= 1, got {self.T}")
        if self.lam is not None:
            need(self.lam >= 0 and math.isfinite(self.lam), "lam", f"must be >= 0, got {self.lam}")
        need(self.z_dim >= 1, "z_dim", f"must be >= 1, got {self.z_dim}")
        need(self.gen_width >= 4, "gen_width", f"must be >= 4, got {self.gen_width}")
        need(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        need(self.iterations >= 0, "iterations", f"must be >= 0, got {self.iterations}")
        need(self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        for k in ("lr", "gen_lr"):
            v = getattr(self, k)
            need(v > 0 and math.isfinite(v), k, f"must be > 0, got {v}")
        need(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.lr_decay_at is not None and self.lr_decay_at != "auto":
            need(0 <= self.lr_decay_at <= 1, "lr_decay_at", f"must be in [0, 1] or null (no decay), got {self.lr_decay_at}")
        need(self.grad_clip > 0 and math.isfinite(self.grad_clip), "grad_clip", f"must be > 0, got {self.grad_clip}")
        if self.clf_grad_clip is not None:
            need(self.clf_grad_clip >= 0 and not math.isnan(self.clf_grad_clip), "clf_grad_clip",
                 f"must be >= 0 (0: no clipping) or null (the defense's default), got {self.clf_grad_clip}")
        need(self.augment in AUGMENT_CHOICES, "augment", f"must be auto, true or false, got {quote(self.augment)}")
        need(self.input_norm in INPUT_NORM_CHOICES, "input_norm",
             f"expected one of {', '.join(INPUT_NORM_CHOICES)}, got {quote(self.input_norm)}")
        need(self.gen_objective in GEN_OBJECTIVE_CHOICES, "gen_objective",
             f"expected one of {', '.join(GEN_OBJECTIVE_CHOICES)}, got {quote(self.gen_objective)}")
        need(0 < self.gen_bn_eps < 1, "gen_bn_eps", f"must be in (0, 1), got {self.gen_bn_eps}")
        need(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
        need(0 <= self.gpu_fraction, "gpu_fraction", f"must be >= 0, got {self.gpu_fraction}")
        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None, "device", f"unknown device {quote(self.device)}")
        need(self.amp is None or self.amp in AMP_CHOICES, "amp", f"expected null or one of {', '.join(AMP_CHOICES)}, got {quote(self.amp)}")
        need(self.amp is None or not self.device.startswith(("cpu", "mps")), "amp",
             f"{self.amp} runs on CUDA only (device is {self.device}); set amp: null")
        need(self.steps_per_report >= 1, "steps_per_report", f"must be >= 1, got {self.steps_per_report}")
        need(self.val_subset >= 1, "val_subset", f"must be >= 1, got {self.val_subset}")
        need(self.test_subset >= 0, "test_subset", f"must be >= 0, got {self.test_subset}")
        need(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        need(self.gen_attack_steps >= 0, "gen_attack_steps", f"must be >= 0, got {self.gen_attack_steps}")
        need(self.gen_attack_samples >= 1, "gen_attack_samples", f"must be >= 1, got {self.gen_attack_samples}")
        need(self.square_queries >= 1, "square_queries", f"must be >= 1, got {self.square_queries}")
        need(all(0 < e <= 1 and math.isfinite(e) for e in self.eps_curve), "eps_curve", f"every ε must be in (0, 1], got {list(self.eps_curve)}")
        need(len(self.eval_columns) >= 1, "eval_columns", "must name at least one column")
        need(len(set(self.eval_columns)) == len(self.eval_columns), "eval_columns", "has a duplicate column")
        need(len(self.val_columns) >= 1, "val_columns", "must name at least one column")
        need(len(set(self.val_columns)) == len(self.val_columns), "val_columns",
             f"has a duplicate column ({', '.join(sorted({c for c in self.val_columns if self.val_columns.count(c) > 1}))})")
        for key in ("eval_columns", "val_columns"):
            for c in getattr(self, key):
                need(c in COLUMNS, key, COLUMNS.unknown(c))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check/convert one value against its annotation; YAML gives ints where floats are meant."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {quote(value)}")
        return tuple(_coerce(key, v, args[0]) for v in value)
    if key == "lr_decay_at" and value == "auto":
        return value
    if key == "amp":
        if value is None or value is False:  # false: how configs before the bf16 option spelt "off"
            return None
        if value in AMP_CHOICES:
            return value
        raise ConfigError(f"amp: expected null or one of {', '.join(AMP_CHOICES)}, got {quote(value)}")
    if key == "augment":
        if isinstance(value, bool) or value == "auto":
            return value
        raise ConfigError(f"{key}: expected auto, true or false, got {quote(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {quote(value)}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {quote(value)}")
        return int(value)
    if hint is float:
        if key in ("eps",):
            return parse_budget(value, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {quote(value)}")
        if not math.isfinite(value):  # YAML's .inf/.nan: never a meaningful setting here
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {quote(value)}")
        return value
    return value


def config_fields() -> list[str]:
    return [f.name for f in fields(TrialConfig)]


def identity_fields() -> list[str]:
    """The fields that say what a trial trained (every field not marked ``HOW``): a report row's identity."""
    return [f.name for f in fields(TrialConfig) if f.metadata.get("identity", True)]
