"""An export is a plain folder a researcher can copy and load: normal file modes, relative
paths, and a loader that needs neither Ray nor MLflow (docs/architecture.md, checkpoints)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import torch

from trainable.weights.export_dir import CLASSIFIER_FILE, load_export, save_export
from trainable.models import build_classifier

REPO = Path(__file__).resolve().parents[3]


def _export(tmp_path: Path, monkeypatch, **paths) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_classifier("lenet5", "mnist5k").eval()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "best"
    save_export(out, model.state_dict(), {"dataset": "mnist5k", "model": "lenet5", "defense": "plain", **paths},
                provenance={"checkpoint": {"path": "/somewhere/checkpoint_000001"}})
    return out, model


def test_export_files_have_the_normal_mode_and_relative_paths(tmp_path, monkeypatch):
    out, _ = _export(tmp_path, monkeypatch, data_root=str(tmp_path / "datasets" / "mnist"),
                     cache_dir="/elsewhere/cache")
    mask = os.umask(0)
    os.umask(mask)
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name  # safetensors alone would write 0600
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data_root"] == "datasets/mnist"  # under the working directory: relative to it
    assert cfg["cache_dir"] == ".cache/l2lda-tune"  # elsewhere: the default, not a foreign absolute path
    info = json.loads((out / "export.json").read_text())
    assert info["trial_paths"]["cache_dir"] == "/elsewhere/cache"


def test_load_export_needs_neither_ray_nor_mlflow(tmp_path, monkeypatch):
    out, model = _export(tmp_path, monkeypatch)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
    torch.save(x, tmp_path / "x.pt")
    torch.save(want, tmp_path / "want.pt")
    code = (
        "import sys\n"
        "for m in ('ray', 'mlflow', 'optuna', 'click', 'pyarrow'):\n"
        "    sys.modules[m] = None  # any import of these raises ImportError\n"
        "import torch\n"
        "from trainable.weights.export_dir import load_export\n"
        f"m = load_export({str(out)!r})\n"
        f"x, want = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'want.pt')!r})\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(m(x), want)\n"
        "assert not any(k.split('.')[0] in ('ray', 'mlflow') and v is not None for k, v in sys.modules.items())\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    assert load_export(out)(x).shape == (4, 10)
    assert (out / CLASSIFIER_FILE).is_file()
