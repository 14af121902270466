"""No infinite waits (docs/reliability.md, "No infinite waits"): a trial that fits no node of the
local Ray, an address where no cluster answers, ``RAY_ADDRESS=auto`` without one are one line within
seconds; on an existing cluster the wait for placement is bounded (--placement-timeout). Each
refused case asserts the exit code, one line on stderr, no traceback and an unchanged working tree
(``refused`` in tests/_cli.py)."""
from __future__ import annotations

import time

import pytest

from _cli import fill, refused
from _specs import GOOD_STUDY, spec_file
from orchestrator.sweep import connect


WAIT_CASES = [
    ({"resources": {"cpu": 64}}, [], "resources.cpu 64 per trial, but this machine has"),
    ({"resources": {"gpu": 0.3}}, [], "resources.gpu 0.3 per trial"),
    ({"resources": {"cpu": 1.5, "gpu": 1}}, [], "resources.gpu 1 per trial"),
    ({}, ["--cpus-per-trial", "3"], "resources.cpu 3 per trial"),
    ({}, ["--gpus-per-trial", "0.5"], "resources.gpu 0.5 per trial"),
    ({"base": {**GOOD_STUDY["base"], "device": "cuda"}, "resources": {"gpu": 1}}, [], "GPU"),
]


@pytest.mark.parametrize("extra,argv,expected", WAIT_CASES, ids=[e for _, _, e in WAIT_CASES])
def test_unplaceable_trial_on_the_local_ray(extra, argv, expected, no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    spec = spec_file(no_run, {**GOOD_STUDY, **extra})
    line = refused(["--space", str(spec), *argv], capsys, no_run, expected)
    assert "2 CPU, 0 GPU" in line or "no CUDA GPU" in line


def test_shipped_ablation_on_a_cpu_machine(no_run, capsys, monkeypatch):
    monkeypatch.setattr(connect, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    refused(["--space", "ablation"], capsys, no_run, "resources.gpu 0.25 per trial, but this machine has 2 CPU, 0 GPU")


ADDRESS_CASES = [
    (["--address", "127.0.0.1:1"], {}, "--address 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1"),
    ([], {"RAY_ADDRESS": "127.0.0.1:{port}"}, "RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}"),
    (["--address", "ray://127.0.0.1:{port}"], {}, "no Ray cluster answers at 127.0.0.1:{port}"),
    (["--address", "127.0.0.2:{port}"], {}, "no Ray cluster answers at 127.0.0.2:{port}"),
    (["--address", "ray://[::1"], {}, "not a Ray address"),
    (["--address", "127.0.0.1:70000"], {}, "port 70000 is out of range"),
    (["--address", "not an address"], {}, "not a Ray address"),
]


@pytest.mark.parametrize("argv,env,expected", ADDRESS_CASES, ids=[str(i) for i in range(len(ADDRESS_CASES))])
def test_unreachable_address_fails_in_seconds(argv, env, expected, no_run, capsys, monkeypatch):
    from _ray_fixtures import free_port

    port = str(free_port("127.0.0.1"))
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(port=port))
    t0 = time.monotonic()
    refused(["--space", str(spec_file(no_run)), *fill(argv, port=port)], capsys, no_run, expected.format(port=port))
    assert time.monotonic() - t0 < 10


def test_address_auto_without_a_cluster(no_run, capsys, monkeypatch):
    from ray._private.services import canonicalize_bootstrap_address

    try:
        if canonicalize_bootstrap_address("auto"):
            pytest.skip("a Ray cluster runs on this machine")
    except Exception:
        pass
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    refused(["--space", str(spec_file(no_run))], capsys, no_run, "RAY_ADDRESS=auto: no running Ray cluster on this machine")


def test_bounded_wait_on_an_existing_cluster(ray_session):
    from orchestrator.spec.study import build_study

    big = build_study({**GOOD_STUDY, "resources": {"cpu": 64}})
    t0 = time.monotonic()
    with pytest.raises(connect.PlacementError) as ei:
        connect.wait_for_placement(big, "127.0.0.2:6379", timeout=1.5, log=lambda m: None)
    assert 1.4 < time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert "\n" not in msg and "resources.cpu 64" in msg and "waited 1.5 s" in msg
    connect.wait_for_placement(build_study(GOOD_STUDY), "127.0.0.2:6379", timeout=0, log=lambda m: None)  # fits: no wait


def test_placement_timeout_must_be_nonnegative(no_run, capsys):
    refused(["--space", str(spec_file(no_run)), "--placement-timeout", "-1"], capsys, no_run, "--placement-timeout")
