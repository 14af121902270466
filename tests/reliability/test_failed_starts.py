"""Nothing created by a failed start (docs/reliability.md, "Order of a start"): a start refused for
a missing dataset, a bad address, storage or name leaves no runs/ folder, no store and no new
folder; one that fails after claiming its directory and opening a new store takes both back."""
from __future__ import annotations

import pytest
import yaml

from _cli import fill, invoke, refused
from _files import tree
from _specs import GOOD_STUDY, spec_file
from orchestrator.sweep import connect
from orchestrator.sweep import run as runner


FAILED_STARTS = [  # argv (with {spec}/{tmp}), spec override, expected
    (["--space", "{spec}"], {"base": {**GOOD_STUDY["base"], "dataset": "mnist", "data_root": "{tmp}/nodata"}}, "mnist"),
    (["--space", "{spec}", "--tracking-uri", "sqlite:///{tmp}/new/deep/mlflow.db"],
     {"base": {**GOOD_STUDY["base"], "dataset": "mnist", "data_root": "{tmp}/nodata"}}, "mnist"),
    (["--space", "{spec}", "--storage", "{tmp}/new/runs", "--address", "127.0.0.1:1"], {}, "no Ray cluster answers"),
    (["--space", "{spec}", "--storage", "{tmp}/new/runs", "--tracking-uri", "sqlite:///{tmp}/new2/m.db",
      "--address", "127.0.0.1:1"], {}, "no Ray cluster answers"),
    (["--space", "{spec}", "--storage", "foo://bucket", "--tracking-uri", "sqlite:///{tmp}/new/m.db"], {},
     "unknown filesystem"),
    (["--space", "{spec}", "--resume", "--name", "gone", "--storage", "{tmp}/new/runs"], {}, "is not a sweep directory"),
    (["--space", "{spec}", "--resume", "--storage", "{tmp}/new/runs"], {}, "--resume: no sweep of study"),
    (["--space", "{spec}", "--storage", "{tmp}/new/runs", "--cpus-per-trial", "64"], {}, "resources.cpu 64"),
    (["--space", "{spec}", "--tracking-uri", "sqlite:///{tmp}/new/m.db", "--name", "a/b"], {}, "--name:"),
]


@pytest.mark.parametrize("argv,over,expected", FAILED_STARTS, ids=[f"{i}-{e[:20]}" for i, (_, _, e) in enumerate(FAILED_STARTS)])
def test_failed_start_creates_nothing(argv, over, expected, no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    text = yaml.safe_dump({**GOOD_STUDY, **over}, sort_keys=False).replace("{tmp}", str(no_run))
    spec_file(no_run, text=text)
    refused(fill(argv, spec=str(no_run / "spec.yaml"), tmp=str(no_run)), capsys, no_run, expected)
    assert not (no_run / "runs").exists() and not (no_run / "new").exists() and not (no_run / "mlflow.db").exists()


def test_start_failing_after_the_claim_takes_it_back(no_run, capsys, monkeypatch):
    """Ray refusing the sweep after the directory was claimed and the store opened: both go."""
    def placement(*a, **k):
        raise connect.PlacementError("Ray cluster at x: resources.cpu 64 per trial, but the largest node has 2 CPU")

    monkeypatch.setattr(runner, "run_study", placement)
    monkeypatch.setattr(connect, "check_local_placement", lambda s: None)
    before = tree(no_run)
    spec = spec_file(no_run)
    before = tree(no_run)
    rc, out, err = invoke(["--space", str(spec), "--name", "sw", "--tracking-uri",
                           f"sqlite:///{no_run}/new/mlflow.db"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "largest node" in err
    assert tree(no_run) == before, "the claim or the new store was left behind"
