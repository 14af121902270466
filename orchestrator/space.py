"""The distribution kinds of a study's ``space`` (docs/architecture.md, data flow): one class each.

A parameter of the space is fixed (a bare value), enumerated (``grid``) or drawn by the
searcher (``choice``, ``uniform``, ``loguniform``, ``int``). Each kind says how its YAML
value is parsed and checked, how it reads in ``--dry-run``, which values a trial may take
(the longest trial, the costliest configuration), and what it becomes for Ray Tune's
``param_space`` (grid and random search) and for Optuna's define-by-run space. A
:class:`orchestrator.spec.schema.Param` stores only its kind's name, so the experiment state a
sweep pickles keeps plain data; its ``dist`` is the kind's object here.
"""
from __future__ import annotations

from typing import Any, Callable

from trainable.config import ConfigError, parse_budget
from trainable.text import quote


class SpaceError(ValueError):
    """A parameter's distribution is malformed; the message is one line starting with the key path
    (orchestrator.spec.study turns it into a SpecError)."""


# check(value, path) -> the value validated and resolved against TrialConfig (raises SpecError)
Check = Callable[[Any, str], Any]


class Distribution:
    """What every kind answers. `discrete` kinds have a list of values; `sampled` ones are drawn by a searcher."""

    kind = ""
    discrete = True
    sampled = True

    def parse(self, name: str, spec: Any, path: str, check: Check, *, is_int: bool, is_float: bool) -> dict[str, Any]:
        """The Param fields (values, or low and high) of this kind's YAML value at `path`."""
        raise NotImplementedError

    def describe(self, p: Any) -> str:
        raise NotImplementedError

    def span(self, p: Any) -> list[Any]:
        """The values a trial may take: all of a discrete kind, the ends of a range."""
        return list(p.values) if self.discrete else [p.low, p.high]

    def costliest(self, p: Any) -> Any:
        """The value --dry-run prices a drawn parameter at (the costly end); None: enumerated."""
        return None

    def tune_domain(self, p: Any) -> Any:
        """Ray Tune's sampling domain (grid and random search)."""
        raise SpaceError(f"space.{p.name}.{self.kind}: not a sampling domain")

    def suggest(self, trial: Any, p: Any) -> Any:
        """Optuna's suggestion of this parameter in a define-by-run space."""
        raise SpaceError(f"space.{p.name}.{self.kind}: not available with optuna search")


class Fixed(Distribution):
    """A bare value in ``space``: the same in every trial."""

    kind, sampled = "fixed", False

    def describe(self, p: Any) -> str:
        return repr(p.values[0])


class _Listed(Distribution):
    def parse(self, name, spec, path, check, *, is_int, is_float):
        if not isinstance(spec, list) or not spec:
            raise SpaceError(f"{path}: expected a non-empty list of values, got {quote(spec)}")
        values = tuple(check(v, f"{path}[{i}]") for i, v in enumerate(spec))
        if len(set(map(repr, values))) != len(values):
            raise SpaceError(f"{path}: a value is listed twice: {list(values)}")
        return {"values": values}

    def describe(self, p: Any) -> str:
        return f"{self.kind} {list(p.values)}"


class Grid(_Listed):
    """``grid: [a, b]`` — one trial per value (times the other grids)."""

    kind, sampled = "grid", False


class Choice(_Listed):
    """``choice: [a, b]`` — the searcher draws one value per trial."""

    kind = "choice"

    def costliest(self, p: Any) -> Any:
        return p.values[-1]

    def tune_domain(self, p: Any) -> Any:
        from ray import tune

        return tune.choice(list(p.values))

    def suggest(self, trial: Any, p: Any) -> Any:
        import json

        # Optuna's categorical values are scalars: lists and mappings travel as JSON.
        encoded = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in p.values]
        v = trial.suggest_categorical(p.name, encoded)
        if isinstance(v, str) and any(isinstance(x, (list, dict)) for x in p.values):
            v = json.loads(v) if v.startswith(("[", "{")) else v
        return v


class _Range(Distribution):
    discrete = False

    def describe(self, p: Any) -> str:
        return f"{self.kind} [{p.low}, {p.high}]"

    def costliest(self, p: Any) -> Any:
        return p.high

    def _pair(self, spec: Any, path: str) -> list:
        if not isinstance(spec, list) or len(spec) != 2:
            raise SpaceError(f"{path}: expected [low, high], got {quote(spec)}")
        return spec


class Uniform(_Range):
    """``uniform: [low, high]`` — a float drawn uniformly."""

    kind = "uniform"
    log = False

    def parse(self, name, spec, path, check, *, is_int, is_float):
        spec = self._pair(spec, path)
        if not is_float:
            what = "an integer parameter (use int)" if is_int else "not a numeric parameter (use choice or grid)"
            raise SpaceError(f"{path}: {name} is {what}")
        try:
            low, high = (parse_budget(v, name) for v in spec)
        except ConfigError:
            raise SpaceError(f"{path}: low and high must be numbers, got {quote(spec)}") from None
        if self.log and not low > 0:
            raise SpaceError(f"{path}: low must be > 0, got {low}")
        if not low < high:
            raise SpaceError(f"{path}: low must be < high, got [{low}, {high}]")
        return {"low": check(low, f"{path}[0]"), "high": check(high, f"{path}[1]")}

    def tune_domain(self, p: Any) -> Any:
        from ray import tune

        return (tune.loguniform if self.log else tune.uniform)(p.low, p.high)

    def suggest(self, trial: Any, p: Any) -> Any:
        return trial.suggest_float(p.name, p.low, p.high, log=self.log)


class LogUniform(Uniform):
    """``loguniform: [low, high]`` — a float drawn uniformly in log space (low > 0)."""

    kind, log = "loguniform", True


class IntRange(_Range):
    """``int: [low, high]`` — an integer drawn uniformly, both ends included."""

    kind = "int"

    def parse(self, name, spec, path, check, *, is_int, is_float):
        spec = self._pair(spec, path)
        if not is_int:
            raise SpaceError(f"{path}: {name} is not an integer parameter (use uniform, loguniform or choice)")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
            raise SpaceError(f"{path}: low and high must be integers, got {quote(spec)}")
        low, high = spec
        if low > high:
            raise SpaceError(f"{path}: low must be <= high, got [{low}, {high}]")
        return {"low": check(low, f"{path}[0]"), "high": check(high, f"{path}[1]")}

    def tune_domain(self, p: Any) -> Any:
        from ray import tune

        return tune.randint(p.low, p.high + 1)  # Tune's upper bound is exclusive, the spec's inclusive

    def suggest(self, trial: Any, p: Any) -> Any:
        return trial.suggest_int(p.name, p.low, p.high)


KINDS: dict[str, Distribution] = {d.kind: d for d in (Fixed(), Grid(), Choice(), Uniform(), LogUniform(), IntRange())}
DISTRIBUTIONS = tuple(k for k in KINDS if k != "fixed")  # what a space entry's mapping may name
