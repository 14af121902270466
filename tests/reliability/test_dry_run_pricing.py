"""An honest --dry-run (docs/reliability.md, "--dry-run"): each trial's own iterations priced
(conditional budgets), TrialConfig's default iterations and the test matrix priced apart, the
placement said (cannot run here / fits / checked against the cluster), every shipped study priced;
nothing written."""
from __future__ import annotations

import pytest

from _cli import invoke
from _files import tree
from _specs import spec_file
from orchestrator.sweep import connect


def _dry(no_run, capsys, argv) -> str:
    before = tree(no_run)
    rc, out, err = invoke(["--dry-run", *argv], capsys)
    assert rc == 0 and err == "" and "Traceback" not in out, (rc, err)
    assert tree(no_run) == before
    return out


def _seconds(text: str) -> float:
    import re

    n, unit = re.match(r"([\d.]+) (s|min|h|days)", text).groups()
    return float(n) * {"s": 1, "min": 60, "h": 3600, "days": 86400}[unit]


def test_dry_run_counts_each_trials_own_iterations(no_run, capsys, monkeypatch):
    """A conditional budget (quickstart: L2L-DA 800 + 300, PGD10-AT 1200 + 300) is priced per trial."""
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    out = _dry(no_run, capsys, ["--space", "quickstart"])
    assert "1,100 to 1,500 iterations per trial, 2 trials = 2,600 iterations" in out, out


def test_dry_run_prices_default_iterations_and_the_matrix(no_run, capsys, monkeypatch):
    import re

    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    raw = {"name": "d", "base": {"dataset": "mnist5k", "defense": "plain"}, "space": {"seed": {"grid": [0]}}}
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run, raw))])
    m = re.search(r"training (\S+ \S+), validation (\S+ \S+), test matrix (\S+ \S+)", out)
    assert m, out
    assert "101,000 iterations per trial" in out  # TrialConfig's defaults, 100k + 1000 warm-up
    assert _seconds(m.group(1)) > 600 and _seconds(m.group(3)) > 0
    small = {**raw, "evaluation": {"columns": ["natural"], "test_subset": 10}}
    big = {**raw, "evaluation": {"columns": ["natural", "pgd100", "cw1000"], "test_subset": 1000}}
    ms = [_seconds(re.search(r"test matrix (\S+ \S+)", _dry(no_run, capsys, ["--space", str(spec_file(no_run, r, name=f"{i}.yaml"))])).group(1))
          for i, r in enumerate((small, big))]
    assert ms[1] > 100 * max(ms[0], 0.5)


def test_dry_run_says_when_a_study_cannot_be_placed(no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    out = _dry(no_run, capsys, ["--space", "ablation"])
    assert "placement: CANNOT RUN HERE — resources.gpu 0.25 per trial, but this machine has 2 CPU, 0 GPU" in out
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run)), "--cpus-per-trial", "8"])
    assert "CANNOT RUN HERE — resources.cpu 8 per trial" in out
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run))])
    assert "placement: fits this machine (2 CPU, 0 GPU): up to 2 trials at once" in out
    out = _dry(no_run, capsys, ["--space", str(spec_file(no_run)), "--address", "10.0.0.1:6379"])
    assert "placement: checked against the cluster at 10.0.0.1:6379" in out


@pytest.mark.parametrize("study", ["smoke", "ablation", "hpo", "baselines", "architecture"])
def test_dry_run_of_shipped_studies_prices_everything(study, no_run, capsys):
    from orchestrator.spec.load import shipped_studies

    if study not in shipped_studies():
        pytest.skip(f"{study} not shipped")
    out = _dry(no_run, capsys, ["--space", study])
    assert "test matrix" in out and "placement:" in out and " 0 s of" not in out
