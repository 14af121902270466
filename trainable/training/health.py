"""Is the trial's generator still attacking? (docs/method.md, "A generator that stops fooling").

A generator whose output saturates into a near-constant perturbation that the classifier
has learned to ignore trains nothing: the classifier's adversarial batches are as easy as
its clean ones and every robustness column of the finished trial reads near zero, with
nothing in the run to say why. :class:`CollapseCheck` watches the per-report training
metrics of a generator defense and fires ``check/generator_collapsed`` once the train
adversarial accuracy has stayed within :data:`ACC_GAP` of the clean accuracy, with the
spread between two z draws below :data:`SPREAD` (where the defense has one), for
:data:`REPORTS` consecutive reports of the adversarial phase.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

ACC_GAP = 0.01  # "within a point": train/acc_adv ≥ train/acc_clean − 0.01
SPREAD = 1e-3  # mean |x_adv(T)(z1) − x_adv(T)(z2)| per pixel below this counts as "no diversity"
REPORTS = 3  # consecutive reports

FLAG = "check/generator_collapsed"


@dataclass
class CollapseCheck:
    """Fires once, after :data:`REPORTS` consecutive collapsed reports; its state goes into checkpoints."""

    streak: int = 0
    fired_at: int | None = None  # the iteration of the report that fired it

    @staticmethod
    def collapsed(metrics: Mapping[str, float]) -> bool:
        """One report's verdict: the generator did not fool the classifier and its draws did not differ."""
        if "train/acc_adv" not in metrics or "train/acc_clean" not in metrics:
            return False
        if metrics["train/acc_adv"] < metrics["train/acc_clean"] - ACC_GAP:
            return False
        return metrics.get("train/adv_spread", 0.0) < SPREAD

    def update(self, metrics: Mapping[str, float], iteration: int) -> bool:
        """Read one report (all of whose iterations were adversarial); True when the flag fires now."""
        if self.fired_at is not None:
            return False
        self.streak = self.streak + 1 if self.collapsed(metrics) else 0
        if self.streak >= REPORTS:
            self.fired_at = iteration
            return True
        return False

    @property
    def fired(self) -> bool:
        return self.fired_at is not None

    def message(self, metrics: Mapping[str, float]) -> str:
        """The one line a trial's log and the report show."""
        parts = [f"train adversarial accuracy {100 * metrics.get('train/acc_adv', float('nan')):.1f}% vs clean "
                 f"{100 * metrics.get('train/acc_clean', float('nan')):.1f}%"]
        if "train/adv_spread" in metrics:
            parts.append(f"spread {metrics['train/adv_spread']:.2g}")
        if "train/clamp_erased" in metrics:
            parts.append(f"{100 * metrics['train/clamp_erased']:.0f}% of δ erased by the [0, 1] clamp")
        if "train/gen_grad_norm" in metrics:
            parts.append(f"generator gradient norm {metrics['train/gen_grad_norm']:.2g}")
        return (f"generator collapsed by iteration {self.fired_at}: it no longer fools the classifier over "
                f"{REPORTS} reports ({', '.join(parts)}); its robustness numbers will read near zero")

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak, "fired_at": self.fired_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.streak = int(state.get("streak", 0))
        fired = state.get("fired_at")
        self.fired_at = None if fired is None else int(fired)
