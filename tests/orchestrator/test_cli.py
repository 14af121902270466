"""The `l2lda-tune` CLI: bad input is one line and exit code 2, before Ray starts and before
any MLflow run exists; --dry-run describes every shipped study and runs nothing."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from _cli import BAD_CLI_CASES, invoke
from _ray_fixtures import cli_env, run_cli
from orchestrator.sweep import connect, storage
from orchestrator.spec.load import shipped_studies


def _sweep_dir(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "tuner.pkl").write_bytes(b"x")
    (path / "experiment_state-2026.json").write_text("{}")


@pytest.mark.parametrize("argv,yaml_text,expected", BAD_CLI_CASES,
                         ids=[f"{i}-{c[2][:30]}" for i, c in enumerate(BAD_CLI_CASES)])
def test_bad_input_is_one_line_exit_2_nothing_started(argv, yaml_text, expected, no_run, capsys):
    tmp = no_run
    (tmp / "afile").write_text("a regular file where a directory is needed")
    _sweep_dir(tmp / "runs" / "taken")
    spec = tmp / "spec.yaml"
    if yaml_text is not None:
        spec.write_text(yaml_text.replace("{tmp}", str(tmp)))
    args = [a.replace("{spec}", str(spec)).replace("{tmp}", str(tmp)) for a in argv]
    code, out, err = invoke(args, capsys)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("l2lda-tune: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert not (tmp / "mlflow.db").exists(), "an MLflow store was created for a bad input"
    assert not list(tmp.rglob("*.db")), "no tracking store may be created"


def test_at_least_fifteen_distinct_bad_inputs():
    assert len({c[2] for c in BAD_CLI_CASES}) >= 15


@pytest.mark.parametrize("name", shipped_studies())
def test_dry_run_describes_every_shipped_study(name, no_run, capsys):
    code, out, err = invoke(["--space", name, "--dry-run"], capsys)
    assert code == 0, err
    assert f"study '{name}'" in out and "trials: " in out and "cost: " in out and "resources per trial" in out
    assert not (no_run / "mlflow.db").exists() and not (no_run / "runs").exists()


def test_dry_run_lists_grid_configs_and_overrides(no_run, capsys):
    code, out, _ = invoke(["--space", "ablation", "--dry-run", "--gpus-per-trial", "0.5", "--name", "abl1"], capsys)
    assert code == 0
    assert "trials: 12" in out and "0.5 GPU" in out and "sweep name: abl1" in out
    assert "recursive=True, diversity=True, seed=0" in out and "recursive=False, diversity=False, seed=2" in out


def test_version_and_help(no_run, capsys):
    code, out, _ = invoke(["--version"], capsys)
    assert code == 0 and "l2lda-tune" in out
    code, out, _ = invoke(["--help"], capsys)
    assert code == 0
    for opt in ("--space", "--name", "--address", "--storage", "--tracking-uri", "--num-samples", "--max-concurrent",
                "--cpus-per-trial", "--gpus-per-trial", "--resume", "--dry-run", "export", "eval", "report", "figure2"):
        assert opt in out


def test_address_and_tracking_uri_from_environment(no_run, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.2:6399")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    code, out, _ = invoke(["--space", "smoke", "--dry-run"], capsys)
    assert code == 0
    assert "ray: 127.0.0.2:6399" in out and "tracking: sqlite:///elsewhere.db" in out


def test_console_script_subprocess_one_line(tmp_path):
    """The real entry point in a fresh process: exit 2, one line, nothing written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nspace: {seed: 0}\nsearch: {type: optuna}\n")
    exe = shutil.which("l2lda-tune")
    if exe:  # installed console script (pip install -e .)
        p = subprocess.run([exe, "--space", str(bad)], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                           timeout=300)
    else:
        p = run_cli("--space", str(bad), cwd=tmp_path, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "l2lda-tune: error: space: optuna search needs at least one choice, uniform, loguniform or int parameter"]
    assert list(tmp_path.iterdir()) == [bad]


def test_node_ip_for_loopback_addresses():
    assert connect._node_ip_for(None) == "127.0.0.2"
    assert connect._node_ip_for("127.0.0.2:6379") == "127.0.0.2"
    assert connect._node_ip_for("10.1.2.3:6379") is None
    assert connect._node_ip_for("ray://head:10001") is None


def test_storage_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve_storage(None) == str(tmp_path / "runs")
    assert storage.resolve_storage("rel/dir") == str(tmp_path / "rel" / "dir")
    assert storage.resolve_storage("s3://bucket/runs") == "s3://bucket/runs"
    assert storage.resolve_storage(f"file://{tmp_path}/x") == str(tmp_path / "x")
