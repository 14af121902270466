"""The `l2lda-tune` command line in-process: one call (``invoke``), one refused call
(``refused``: exit code, one line, nothing created), and the table of bad calls
(``BAD_CLI_CASES``) that the CLI and reliability tests both run."""
from __future__ import annotations

from pathlib import Path

import pytest

from _files import tree
from orchestrator import cli as cli_mod


def invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    """`l2lda-tune ARGV` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def refused(argv: list[str], capsys, tmp: Path, expected: str, code: int = 2, max_len: int = 600) -> str:
    """Run the CLI in-process: exit `code`, exactly one line naming `expected`, no traceback, the
    working tree unchanged (nothing created, nothing already there changed)."""
    before = tree(tmp)
    rc, out, err = invoke(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == code and len(lines) == 1, (rc, out[-2000:], err[-2000:])
    assert lines[0].startswith("l2lda-tune: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert len(lines[0]) <= max_len, len(lines[0])
    assert tree(tmp) == before, "a failed start created or changed files"
    return lines[0]


def fill(argv: list[str], **kw: str) -> list[str]:
    """`argv` with its {placeholders} filled in from `kw`."""
    return [a.format(**kw) for a in argv]


# A valid study the bad calls below pass beside their bad flag.
_GOOD = """\
name: good
base: {dataset: mnist5k, iterations: 2, warmup: 1, steps_per_report: 2}
space: {defense: {grid: [plain, fgsm_at]}}
"""

# Each case: (argv with {spec}/{tmp} placeholders, YAML written to {spec} or None, expected message part)
BAD_CLI_CASES = [
    (["--space", "{spec}"], "name: t\nbase: {eps: 0.3\n", "YAML syntax error at line"),
    (["--space", "{spec}"], "name: t\nbase: {epsilon: 0.3}\nspace: {seed: 0}\n", "base.epsilon: unknown config key"),
    (["--space", "{spec}"], "name: t\nbase: {eps: 1.5}\nspace: {seed: 0}\n", "base.eps: must be in (0, 1]"),
    (["--space", "{spec}"], "name: t\nspace: {T: {grid: [0, 10]}}\n", "space.T.grid[0]: must be >= 1"),
    (["--space", "{spec}"], "name: t\nspace: {lam: {choice: [-0.1, 0.1]}}\nsearch: {type: random}\n",
     "space.lam.choice[0]: must be >= 0"),
    (["--space", "{spec}"], "name: t\nbase: {dataset: svhn}\nspace: {seed: 0}\n", "base.dataset: unknown dataset 'svhn'"),
    (["--space", "{spec}"], "name: t\nspace: {seed: 0}\nevaluation: {columns: [natural, deepfool]}\n",
     "evaluation.columns: unknown attack column 'deepfool'"),
    (["--space", "{spec}"], "name: t\nspace: {defense: {grid: [plain, madry]}}\n", "space.defense.grid[1]: unknown defense"),
    (["--space", "{spec}"], "name: t\nspace: {}\n", "space: is empty"),
    (["--space", "{spec}"], "name: t\nspace: {lr: {choice: [0.1, 0.01]}}\nsearch: {type: optuna, metric: [val/natural, "
     "val/worst]}\nscheduler: {type: asha}\n", "scheduler.type: ASHA takes one metric"),
    (["--space", "{spec}"], "name: t\nspace: {seed: 0}\nsearch: {metric: matrix/pgd100}\n",
     "search.metric: 'matrix/pgd100' is not a validation metric"),
    (["--space", "{spec}"], "name: t\nspace: {seed: 0}\nresources: {gpu: 2.5}\n", "resources.gpu: a share above 1"),
    (["--space", "{spec}", "--gpus-per-trial", "-1"], _GOOD, "resources.gpu: must be 0, a fraction"),
    (["--space", "{spec}", "--gpus-per-trial", "1.5"], _GOOD, "resources.gpu: a share above 1 must be a whole number"),
    (["--space", "{spec}", "--num-samples", "0"], _GOOD, "search.num_samples: must be >= 1"),
    (["--space", "{spec}", "--max-concurrent", "0"], _GOOD, "search.max_concurrent: must be >= 1"),
    (["--space", "{spec}", "--cpus-per-trial", "0"], _GOOD, "resources.cpu: must be > 0"),
    (["--space", "{spec}", "--num-samples", "many"], _GOOD, "Invalid value for '--num-samples'"),
    (["--space", "{tmp}/missing.yaml"], None, "missing.yaml: no such study file"),
    (["--space", "{tmp}"], None, "is not a file"),
    (["--space", "{spec}", "--storage", "{tmp}/afile/runs"], _GOOD, "--storage: cannot create"),
    (["--space", "{spec}", "--tracking-uri", "http://127.0.0.1:9"], _GOOD, "MLflow server http://127.0.0.1:9 is unreachable"),
    (["--space", "{spec}", "--tracking-uri", "file:///{tmp}/mlruns"], _GOOD, "MLflow's file store is refused"),
    (["--space", "{spec}", "--tracking-uri", "sqlite:///{tmp}/afile/mlflow.db"], _GOOD, "cannot create directory"),
    (["--space", "{spec}", "--resume"], _GOOD, "--resume: no sweep of study 'good'"),
    (["--space", "{spec}", "--resume", "--name", "nosuch"], _GOOD, "is not a sweep directory"),
    (["--space", "{spec}", "--name", "taken"], _GOOD, "already holds a sweep; pass --resume"),
    (["--space", "{spec}", "--resume", "--dry-run"], _GOOD, "--resume and --dry-run: choose one"),
    (["--space", "{spec}", "--name", "a/b"], _GOOD, "--name: 'a/b' must be a plain directory name"),
    (["--space", "{spec}"], "name: t\nbase: {dataset: cifar10, data_root: '{tmp}/nodata'}\nspace: {seed: 0}\n",
     "dataset 'cifar10' not found or incomplete"),
    ([], None, "--space is required"),
    (["--space", "{spec}", "export", "--experiment", "x", "--out", "y"], _GOOD, "do not go with `export`"),
    (["eval"], None, "eval: give exactly one of --checkpoint or --export"),
]
