"""The `l2lda-tune` CLI: bad input is one line and exit code 2, before Ray starts and before
any MLflow run exists; --dry-run describes every shipped study and runs nothing."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from _ray_fixtures import cli_env, run_cli
from orchestrator import cli as cli_mod
from orchestrator.sweep import connect, storage
from orchestrator.sweep import run as runner
from orchestrator.spec.load import shipped_studies

GOOD = """\
name: good
base: {dataset: mnist5k, iterations: 2, warmup: 1, steps_per_report: 2}
space: {defense: {grid: [plain, fgsm_at]}}
"""


@pytest.fixture
def no_run(monkeypatch, tmp_path):
    """The CLI in a fresh working directory where starting Ray or a sweep is a test failure."""
    def forbidden(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(connect, "init_ray", forbidden)
    monkeypatch.setattr(runner, "run_study", forbidden)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _sweep_dir(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "tuner.pkl").write_bytes(b"x")
    (path / "experiment_state-2026.json").write_text("{}")


# Each case: (argv with {spec}/{tmp} placeholders, YAML written to {spec} or None, expected message part)
CASES = [
    (["--space", "{spec}"], "name: t\nbase: {eps: 0.3\n", "YAML syntax error at line"),
    (["--space", "{spec}"], "name: t\nbase: {epsilon: 0.3}\nspace: {seed: 0}\n", "base.epsilon: unknown config key"),
    (["--space", "{spec}"], "name: t\nbase: {eps: 1.5}\nspace: {seed: 0}\n", "base.eps: must be in (0, 1]"),
    (["--space", "{spec}"], "name: t\nspace: {T: {grid: [0, 10]}}\n", "space.T.grid[0]: must be >= 1"),
    (["--space", "{spec}"], "name: t\nspace: {lam: {choice: [-0.1, 0.1]}}\nsearch: {type: random}\n",
     "space.lam.choice[0]: must be >= 0"),
    (["--space", "{spec}"], "name: t\nbase: {dataset: svhn}\nspace: {seed: 0}\n", "base.dataset: unknown dataset 'svhn'"),
    (["--space", "{spec}"], "name: t\nspace: {seed: 0}\nevaluation: {columns: [natural, deepfool]}\n",
     "evaluation.columns: unknown attack column 'deepfool'"),
    (["--space", "{spec}"], "name: t\nspace: {defense: {grid: [plain, trades]}}\n", "space.defense.grid[1]: unknown defense"),
    (["--space", "{spec}"], "name: t\nspace: {}\n", "space: is empty"),
    (["--space", "{spec}"], "name: t\nspace: {lr: {choice: [0.1, 0.01]}}\nsearch: {type: optuna, metric: [val/natural, "
     "val/worst]}\nscheduler: {type: asha}\n", "scheduler.type: ASHA takes one metric"),
    (["--space", "{spec}"], "name: t\nspace: {seed: 0}\nsearch: {metric: matrix/pgd100}\n",
     "search.metric: 'matrix/pgd100' is not a validation metric"),
    (["--space", "{spec}"], "name: t\nspace: {seed: 0}\nresources: {gpu: 2.5}\n", "resources.gpu: a share above 1"),
    (["--space", "{spec}", "--gpus-per-trial", "-1"], GOOD, "resources.gpu: must be 0, a fraction"),
    (["--space", "{spec}", "--gpus-per-trial", "1.5"], GOOD, "resources.gpu: a share above 1 must be a whole number"),
    (["--space", "{spec}", "--num-samples", "0"], GOOD, "search.num_samples: must be >= 1"),
    (["--space", "{spec}", "--max-concurrent", "0"], GOOD, "search.max_concurrent: must be >= 1"),
    (["--space", "{spec}", "--cpus-per-trial", "0"], GOOD, "resources.cpu: must be > 0"),
    (["--space", "{spec}", "--num-samples", "many"], GOOD, "Invalid value for '--num-samples'"),
    (["--space", "{tmp}/missing.yaml"], None, "missing.yaml: no such study file"),
    (["--space", "{tmp}"], None, "is not a file"),
    (["--space", "{spec}", "--storage", "{tmp}/afile/runs"], GOOD, "--storage: cannot create"),
    (["--space", "{spec}", "--tracking-uri", "http://127.0.0.1:9"], GOOD, "MLflow server http://127.0.0.1:9 is unreachable"),
    (["--space", "{spec}", "--tracking-uri", "file:///{tmp}/mlruns"], GOOD, "MLflow's file store is refused"),
    (["--space", "{spec}", "--tracking-uri", "sqlite:///{tmp}/afile/mlflow.db"], GOOD, "cannot create directory"),
    (["--space", "{spec}", "--resume"], GOOD, "--resume: no sweep of study 'good'"),
    (["--space", "{spec}", "--resume", "--name", "nosuch"], GOOD, "is not a sweep directory"),
    (["--space", "{spec}", "--name", "taken"], GOOD, "already holds a sweep; pass --resume"),
    (["--space", "{spec}", "--resume", "--dry-run"], GOOD, "--resume and --dry-run: choose one"),
    (["--space", "{spec}", "--name", "a/b"], GOOD, "--name: 'a/b' must be a plain directory name"),
    (["--space", "{spec}"], "name: t\nbase: {dataset: cifar10, data_root: '{tmp}/nodata'}\nspace: {seed: 0}\n",
     "dataset 'cifar10' not found or incomplete"),
    ([], None, "--space is required"),
    (["--space", "{spec}", "export", "--experiment", "x", "--out", "y"], GOOD, "do not go with `export`"),
    (["eval"], None, "eval: give exactly one of --checkpoint or --export"),
]


@pytest.mark.parametrize("argv,yaml_text,expected", CASES, ids=[f"{i}-{c[2][:30]}" for i, c in enumerate(CASES)])
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
    assert len({c[2] for c in CASES}) >= 15


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
