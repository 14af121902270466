"""Bad input, table-driven (issue 6 §7), built on the existing tables rather than a third copy:
tests/_cli.py's BAD_CLI_CASES (33 CLI calls, each checked by tests/orchestrator/test_cli.py for exit 2,
one line, no Ray, no MLflow store) and tests/_specs.py's BAD_SPECS (61 malformed specs, checked by
tests/orchestrator/test_spec.py only as a SpecError from ``load_spec``). Here every BAD_SPECS document
also goes through the real command line — exit 2, exactly one line naming the key, Ray never started,
no tracking store, no run directory — a few CLI calls the tables lack are added (storage or store that
cannot be written), and a map checks that every kind of bad input issue 6 names is in the tables.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from _cli import BAD_CLI_CASES, invoke
from _specs import BAD_SPECS


def _check_nothing_started(tmp: Path) -> None:
    assert not list(tmp.rglob("*.db")), "a tracking store was created for a bad input"
    assert not (tmp / "runs").exists() or not any((tmp / "runs").iterdir()), "a sweep directory was created"
    assert not (tmp / "mlruns").exists()


@pytest.mark.parametrize("text,expected", BAD_SPECS, ids=[f"{i}-{e.split(':')[0]}" for i, (_, e) in enumerate(BAD_SPECS)])
def test_every_malformed_spec_through_the_cli(text, expected, no_run, capsys):
    spec = no_run / "bad.yaml"
    spec.write_text(text)
    code, out, err = invoke(["--space", str(spec)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, out, err)
    prefix = "l2lda-tune: error: "
    want = f"{spec}: YAML syntax error at line" if expected.startswith("spec: YAML") else expected
    assert lines[0].startswith(prefix + want), lines[0]
    assert out == ""
    _check_nothing_started(no_run)


def _unwritable_dir(tmp: Path) -> Path:
    """A directory this process cannot create entries in (root ignores modes: use /sys there)."""
    if os.geteuid() == 0:
        return Path("/sys/l2lda-test-unwritable")
    d = tmp / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d


GOOD = "name: good\nbase: {dataset: mnist5k, iterations: 2, warmup: 0, steps_per_report: 2}\nspace: {seed: {grid: [0, 1]}}\n"
EXTRA = [  # (argv with {spec}/{ro}/{tmp}, expected part of the one line)
    (["--space", "{spec}", "--storage", "{ro}/runs"], "--storage: cannot create"),
    (["--space", "{spec}", "--tracking-uri", "sqlite:///{ro}/store/mlflow.db"], "cannot create directory"),
    (["--space", "{spec}", "--cpus-per-trial", "-1"], "resources.cpu: must be > 0"),
    (["--space", "{spec}", "--gpus-per-trial", "2.5"], "resources.gpu: a share above 1 must be a whole number"),
    (["--space", "{spec}", "--max-concurrent", "two"], "Invalid value for '--max-concurrent'"),
    (["--space", "{spec}", "--no-such-flag"], "No such option '--no-such-flag'"),
    (["--space", "{spec}", "--dry-run", "--resume", "--name", "x"], "--resume and --dry-run: choose one"),
    (["eval", "--checkpoint", "{tmp}/a", "--export", "{tmp}/b"], "eval: give exactly one of --checkpoint or --export"),
    (["eval", "--checkpoint", "{tmp}/nothing-here"], "nothing-here"),
    (["export", "--experiment", "x"], "Missing option '--out'"),
    (["--space", ""], "--space is required"),
]


@pytest.mark.parametrize("argv,expected", EXTRA, ids=[f"{i}-{e[:28]}" for i, (_, e) in enumerate(EXTRA)])
def test_more_bad_cli_calls(argv, expected, no_run, capsys):
    spec = no_run / "spec.yaml"
    spec.write_text(GOOD)
    ro = _unwritable_dir(no_run)
    args = [a.replace("{spec}", str(spec)).replace("{ro}", str(ro)).replace("{tmp}", str(no_run)) for a in argv]
    code, out, err = invoke(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("l2lda-tune: error: ") and expected in lines[0], lines[0]
    _check_nothing_started(no_run)


# Issue 6 §7's kinds of bad input → a predicate over (argv, YAML, expected message) of a table row.
KINDS = {
    "YAML syntax error": lambda a, y, m: "YAML syntax error" in m,
    "unknown key": lambda a, y, m: "unknown key" in m or "unknown config key" in m,
    "wrong type": lambda a, y, m: "expected an integer" in m or "Invalid value for" in m or "valid integer" in m,
    "eps out of (0, 1]": lambda a, y, m: "eps: must be in (0, 1]" in m,
    "T < 1": lambda a, y, m: m.startswith(("base.T", "space.T")) and "must be >= 1" in m,
    "lambda < 0": lambda a, y, m: ".lam." in m and "must be >= 0" in m,
    "unknown dataset": lambda a, y, m: "unknown dataset" in m,
    "unknown attack": lambda a, y, m: "unknown attack column" in m,
    "unknown defense": lambda a, y, m: "unknown defense" in m,
    "empty space": lambda a, y, m: "space: is empty" in m,
    "conflicting flags": lambda a, y, m: "choose one" in m or "do not go with" in m or "exactly one of" in m,
    "negative GPU share": lambda a, y, m: "resources.gpu: must be 0, a fraction" in m,
    "GPU share > 1 not whole": lambda a, y, m: "a share above 1 must be a whole" in m,
    "missing file": lambda a, y, m: "no such study file" in m,
    "unwritable storage": lambda a, y, m: m.startswith("--storage: cannot create"),
}


def _rows() -> list[tuple[list[str], str, str]]:
    rows = [(a, y or "", m) for a, y, m in BAD_CLI_CASES]
    rows += [(["--space", "bad.yaml"], y, m) for y, m in BAD_SPECS]
    rows += [(a, GOOD, m) for a, m in EXTRA]
    return rows


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_issue_table_is_covered(kind):
    hits = [m for a, y, m in _rows() if KINDS[kind](a, y, m)]
    assert hits, f"no bad-input case of kind {kind!r}"


def test_at_least_thirty_distinct_bad_inputs():
    assert len({m for _, _, m in _rows()}) >= 30
