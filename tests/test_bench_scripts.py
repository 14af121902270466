"""The benchmark scripts in bench/ stay runnable as the code moves: each parses its options.

One subprocess runs every script's ``--help`` as ``__main__`` (torch imported once), so an import
or an option default that refers to a moved name fails here rather than when someone next
measures (docs/performance.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py")
                 if p.name not in ("__init__.py", "common.py", "reference_l2lda.py"))

PROBE = """
import contextlib, io, runpy, sys
bad = []
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path("bench/" + name, run_name="__main__")
        bad.append(f"{name}: --help did not exit")
    except SystemExit as e:
        if e.code not in (0, None) or "usage" not in out.getvalue().lower():
            bad.append(f"{name}: exit {e.code}")
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(bad) or "ALL OK")
"""


def test_every_bench_script_parses_its_options():
    assert len(SCRIPTS) >= 9, SCRIPTS
    r = subprocess.run([sys.executable, "-c", PROBE, *SCRIPTS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ALL OK"), r.stdout + r.stderr[-2000:]


def test_train_step_cost_leaves_room_for_every_compiled_row_and_never_runs_one_eager_silently(monkeypatch):
    """Its compiled rows share code objects: past dynamo's recompile limit (8) the rest ran eager
    without a word and the table compared eager with eager."""
    import torch._dynamo.config as dynamo_config

    monkeypatch.syspath_prepend(str(ROOT))
    from bench import train_step_cost

    for key in ("recompile_limit", "accumulated_recompile_limit", "fail_on_recompile_limit_hit"):
        monkeypatch.setattr(dynamo_config, key, getattr(dynamo_config, key))
    train_step_cost.compile_budget(rows=5 * 2)  # five option rows at two widths
    assert dynamo_config.recompile_limit >= 4 * 10 and dynamo_config.fail_on_recompile_limit_hit
