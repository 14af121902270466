"""Bounded work and bounded messages (docs/reliability.md, "Bounded messages and YAML"): alias bombs
and recursive aliases refused within seconds in a short line; 5000-character values in a study or on
the command line quoted cut, with their length; a shared anchor within budget still loads. Each
refused case asserts the exit code, one line on stderr, no traceback and an unchanged working tree
(``refused`` in tests/_cli.py)."""
from __future__ import annotations

import time

import pytest

from _cli import refused
from _specs import spec_file


def _bomb(levels: int, width: int = 9, at: str = "name") -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"{at}: *a{levels - 1}" if at == "name" else
                 f"name: t\nbase: {{{at}: *a{levels - 1}}}\nspace: {{seed: 0}}")
    return "\n".join(lines) + "\n"


BOMBS = [
    ("name", _bomb(9), "alias bomb"),
    ("base.lr", _bomb(9, at="lr"), "alias bomb"),
    ("base.dataset", _bomb(7, at="dataset"), "alias bomb"),
    ("small-bomb", _bomb(6, width=6, at="lr"), "alias bomb"),
    ("recursive", "name: &x [*x]\n", "recursive YAML alias"),
    ("wide", "a: &a [" + ", ".join(["x"] * 300) + "]\nname: t\nbase: {val_columns: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a, "
     "*a, *a, *a, *a]}\nspace: {seed: 0}\n", "alias bomb"),
]


@pytest.mark.parametrize("what,text,expected", BOMBS, ids=[b[0] for b in BOMBS])
def test_alias_bombs_refused_quickly(what, text, expected, no_run, capsys):
    assert len(text) < 2000
    t0 = time.monotonic()
    refused(["--space", str(spec_file(no_run, text=text))], capsys, no_run, expected, max_len=300)
    assert time.monotonic() - t0 < 5


LONG = "x" * 5000
BOUNDED = [
    ({"name": LONG, "space": {"seed": 0}}, "name:"),
    ({"name": "t", "base": {"dataset": LONG}, "space": {"seed": 0}}, "base.dataset: unknown dataset"),
    ({"name": "t", "base": {"lr": LONG}, "space": {"seed": 0}}, "base.lr: expected a number"),
    ({"name": "t", "base": {"eps": LONG}, "space": {"seed": 0}}, "eps"),
    ({"name": "t", "space": {"defense": {"grid": ["plain", LONG]}}}, "space.defense.grid[1]: unknown defense"),
    ({"name": "t", "space": {"seed": 0}, "search": {"metric": LONG}}, "search.metric"),
    ({"name": "t", "space": {"seed": 0}, "search": {"type": "optuna", "storage": LONG}}, "search.storage"),
    ({"name": "t", "space": {"seed": 0}, "evaluation": {"columns": ["natural", LONG]}}, "unknown attack column"),
    ({"name": "t", "space": {"lr": {"uniform": [LONG, 1]}}, "search": {"type": "random"}}, "space.lr.uniform"),
    ({"name": "t", "space": {"seed": {"grid": [[0] * 5000]}}}, "space.seed.grid[0]"),
]


@pytest.mark.parametrize("raw,expected", BOUNDED, ids=[e.split(":")[0] for _, e in BOUNDED])
def test_messages_quote_bounded_values(raw, expected, no_run, capsys):
    refused(["--space", str(spec_file(no_run, raw))], capsys, no_run, expected, max_len=400)


def test_long_cli_values_are_bounded(no_run, capsys):
    refused(["--space", str(spec_file(no_run)), "--name", "n" * 300], capsys, no_run, "(300 characters)", max_len=400)
    refused(["--space", str(spec_file(no_run)), "--tracking-uri", "foo://" + "y" * 5000], capsys, no_run,
            "unknown scheme", max_len=400)
    refused(["--space", str(spec_file(no_run)), "--storage", "zz://" + "b" * 5000], capsys, no_run,
            "unknown filesystem", max_len=400)


def test_shared_anchor_within_budget_still_loads(tmp_path):
    from orchestrator.spec.load import load_spec

    text = ("name: t\nbase: {val_columns: &c [natural, pgd10], eval_columns: *c}\n"
            "space: {seed: {grid: [0, 1]}}\n")
    study = load_spec(spec_file(tmp_path, text=text))
    assert study.base["val_columns"] == study.base["eval_columns"] == ["natural", "pgd10"]


def test_quote_helper_bounds_work_and_length():
    from trainable.text import quote, shorten

    nested: list = ["lol"] * 9
    for _ in range(12):
        nested = [nested] * 9  # 9**13 leaves: never expanded
    t0 = time.monotonic()
    assert len(quote(nested)) <= 81 and len(quote("z" * 10**6)) < 120
    assert time.monotonic() - t0 < 0.5
    assert shorten("abc") == "abc" and shorten("a" * 100, 10) == "aaaaaaaaaa… (100 characters)"
    assert quote("plain") == "'plain'"
