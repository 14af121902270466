"""One command that checks the whole GPU path and writes a markdown report (docs/performance.md, the GPU path).

Stages, in order, each timed and each either run, failed (with the reason) or skipped (with
the reason); a stage that needs CUDA is skipped on a machine without it, so the CPU-safe
stages run anywhere:

1. ``probe`` — Python, torch, CUDA and driver (``nvidia-smi``), the device and its memory (CPU-safe).
2. ``ray`` — four Ray tasks on loopback asking for 0.25 GPU each: the visible devices, the device
   the trainable resolves, the memory cap it sets and whether an allocation over the cap is refused.
   Without CUDA: four 0-GPU tasks, and a 0.25 share is refused in one line instead of training on
   the CPU (CPU-safe).
3. ``export-cpu`` — a checkpoint written and exported here, then loaded by a process that sees no
   CUDA (CPU-safe; with CUDA the export of stage 5 is used instead).
4. ``sweep`` — the smoke study, 4 trials × 0.25 GPU with ``compile``, ``amp: bf16``,
   ``channels_last``, a checkpoint every report and the transfer and generator columns; killed
   (SIGTERM) after its first checkpoint and continued with ``--resume`` (CUDA).
5. ``artifacts`` — ``figure2``, ``export`` and ``eval`` from the GPU checkpoints, and the export
   loaded in a CPU-only process (CUDA).
6. ``train_step_cost`` — ``bench/train_step_cost.py --widths 64`` on CUDA (CUDA).
7. ``gpu_packing`` — ``bench/gpu_packing.py``; target: 4 trials at 0.25 GPU give ≥ 3× one trial's
   samples/s (CUDA).

Budget: at most 8 minutes on one H100 (each stage has its own time limit; the whole run stops
starting stages past ``--budget``). Not a test dependency: nothing in tests/ runs it.

    python bench/gpu_check.py [--out gpu_check.md] [--budget 480] [--only probe,ray,...] [--rehearse]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("probe", "ray", "export-cpu", "sweep", "artifacts", "train_step_cost", "gpu_packing")
NEEDS_CUDA = {"sweep", "artifacts", "train_step_cost", "gpu_packing"}

SMOKE = """\
name: gpu-check
base: {{dataset: mnist5k, batch_size: 50, warmup: 40, iterations: 60, lr_decay_at: null, steps_per_report: 20,
       gen_width: 16, T: 5, val_subset: 100, val_columns: [natural, pgd10], gen_attack_steps: 20,
       gen_attack_samples: 2, transfer_iterations: 40, {options}, cache_dir: {cache}}}
space: {{defense: {{grid: [l2lda, pgd10_at, l2l_star, plain]}}}}
search: {{type: grid, metric: val/worst, mode: max, max_concurrent: 4}}
resources: {{{resources}}}
failure: {{max_failures: 1}}
checkpoint: {{every: 1, keep: 1}}
evaluation: {{columns: [natural, fgsm, pgd10, l2lda, advgan, transfer], test_subset: 100}}
"""


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    e.update({"PYTHONPATH": str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else ""),
              "RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0", "MLFLOW_DISABLE_TELEMETRY": "true"})
    e.update(extra)
    return e


SLOW = {"factor": 1.0}  # a CPU rehearsal gets longer time limits


def sh(args: list[str], timeout: float, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env(**extra), capture_output=True, text=True,
                          timeout=timeout * SLOW["factor"])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def tail(text: str, n: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class Skip(Exception):
    """A stage that cannot run here; the message is the reason."""


# ------------------------------------------------------------------------------------ stages
def stage_probe(ctx: dict) -> list[str]:
    import torch

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, CUDA build {torch.version.cuda}",
             f"CPU cores visible: {len(os.sched_getaffinity(0))}"]
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        lines.append("nvidia-smi: " + (smi.stdout.strip() or smi.stderr.strip() or f"exit {smi.returncode}"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        lines.append(f"nvidia-smi: not available ({type(exc).__name__})")
    ctx["cuda"] = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if ctx["cuda"]:
        p = torch.cuda.get_device_properties(0)
        lines.append(f"device 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
                     f"bf16 {torch.cuda.is_bf16_supported()}; {torch.cuda.device_count()} visible")
    else:
        lines.append("CUDA: not usable here (torch.cuda.is_available() is False): the CUDA stages are skipped")
    return lines


def stage_ray(ctx: dict) -> list[str]:
    import ray

    from orchestrator.sweep.connect import init_ray

    started = init_ray(None, log=lambda m: None)
    gpu = 0.25 if ctx["cuda"] else 0.0

    @ray.remote(num_cpus=0.25, num_gpus=gpu)
    def probe(share: float) -> dict:
        import torch

        from trainable.config import TrialConfig
        from trainable.errors import DeviceError
        from trainable.training.resources import place

        out: dict[str, Any] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"),
                               "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        try:
            p = place(TrialConfig.from_dict({"defense": "plain", "gpu_fraction": share or 0.25}))
        except DeviceError as exc:
            out["refused"] = str(exc)
            return out
        out.update(device=str(p.device), cap=p.tags()["device/memory_cap"])
        if p.device.type == "cuda" and p.memory_cap:
            try:
                torch.empty(int(p.memory_cap * 1.05), dtype=torch.uint8, device=p.device)
                out["over_cap"] = "allocated: the cap is NOT enforced"
            except torch.cuda.OutOfMemoryError:
                out["over_cap"] = "refused (the cap is enforced)"
        return out

    try:
        got = ray.get([probe.remote(gpu) for _ in range(4)], timeout=180)
    finally:
        if started:
            ray.shutdown()
    lines = [f"task {i}: " + ", ".join(f"{k}={v}" for k, v in r.items()) for i, r in enumerate(got)]
    if ctx["cuda"]:
        bad = [r for r in got if r.get("device") != "cuda:0" or "NOT" in r.get("over_cap", "NOT")]
        if bad:
            raise RuntimeError(f"{len(bad)} of 4 tasks did not resolve cuda:0 with an enforced cap: {bad[0]}")
    elif not all("refused" in r for r in got):
        raise RuntimeError("a 0.25-GPU share without CUDA was not refused")
    return lines


def _cpu_only_load(export: Path) -> str:
    code = ("import torch; from trainable.weights import load_export; m = load_export(%r); "
            "x = torch.rand(2, 1, 28, 28); print(tuple(m(x).shape), 'cuda available:', torch.cuda.is_available())"
            % str(export))
    p = sh([sys.executable, "-c", code], timeout=300, CUDA_VISIBLE_DEVICES="")
    if p.returncode != 0:
        raise RuntimeError(f"CPU-only load failed: {tail(p.stderr, 3)}")
    return p.stdout.strip()


def stage_export_cpu(ctx: dict) -> list[str]:
    from trainable.config import TrialConfig
    from trainable.experiment.loop import Experiment
    from trainable.weights.export_dir import load_checkpoint_modules, save_export

    work = ctx["work"] / "export-cpu"
    cfg = TrialConfig.from_dict({"defense": "plain", "warmup": 0, "iterations": 4, "batch_size": 20,
                                 "steps_per_report": 4, "val_subset": 20, "val_columns": ["natural"],
                                 "cache_dir": str(work / "cache"), "threads": 1})
    exp = Experiment(cfg, use_cache=False)
    exp.step()
    exp.save(work / "ck")
    c, clf, gen, _ = load_checkpoint_modules(work / "ck")
    save_export(work / "export", clf.state_dict(), c.to_dict())
    return [f"checkpoint written on {exp.device}, exported, loaded with CUDA hidden: {_cpu_only_load(work / 'export')}"]


def _checkpoints(runs: Path) -> list[Path]:
    return sorted(runs.glob("*/*/checkpoint_*"))


def stage_sweep(ctx: dict) -> list[str]:
    work = ctx["work"] / "sweep"
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "gpu_check.yaml"
    if ctx.get("rehearse"):  # the same mechanics on the CPU, small: not a GPU result
        import yaml

        raw = yaml.safe_load(SMOKE.format(cache=work / "cache", options="channels_last: true, threads: 1",
                                          resources="cpu: 1, gpu: 0"))
        raw["base"].update(warmup=20, iterations=20, steps_per_report=10, val_subset=50, gen_attack_steps=5,
                           transfer_iterations=10, batch_size=20)
        raw["space"]["defense"]["grid"] = ["l2lda", "plain"]
        raw["search"]["max_concurrent"] = 2
        raw["evaluation"] = {"columns": ["natural", "fgsm", "l2lda", "transfer"], "test_subset": 50}
        spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    else:
        spec.write_text(SMOKE.format(cache=work / "cache", options="compile: true, amp: bf16, channels_last: true",
                                     resources="cpu: 2, gpu: 0.25"))
    db = f"sqlite:///{work / 'mlflow.db'}"
    args = cli("--space", str(spec), "--name", "gpu-check", "--storage", str(work / "runs"), "--tracking-uri", db)
    log = (work / "first.log").open("w")
    proc = subprocess.Popen(args, cwd=work, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait = 240 * SLOW["factor"]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and proc.poll() is None and not _checkpoints(work / "runs"):
        time.sleep(2)
    lines = []
    if proc.poll() is None:
        lines.append(f"first checkpoint after {wait - (deadline - time.monotonic()):.0f} s; SIGTERM to the driver")
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines.append(f"first run exit {proc.returncode}: {tail((work / 'first.log').read_text(), 2)}")
    p = sh(args + ["--resume"], timeout=300, cwd=work)
    (work / "resume.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"--resume exit {p.returncode}: {tail(p.stdout + p.stderr, 6)}")
    lines.append(f"--resume exit 0: {tail(p.stdout, 8)}")
    ctx["sweep_db"] = db
    return lines


def stage_artifacts(ctx: dict) -> list[str]:
    if "sweep_db" not in ctx:
        raise Skip("needs the sweep stage's checkpoints")
    work, db = ctx["work"] / "sweep", ctx["sweep_db"]
    lines = []
    export = work / "export"
    p = sh(cli("export", "--experiment", "gpu-check", "--out", str(export), "--tracking-uri", db), 180, work)
    if p.returncode != 0:
        raise RuntimeError(f"export exit {p.returncode}: {tail(p.stderr, 4)}")
    ck = json.loads((export / "export.json").read_text())["checkpoint"]["path"]
    lines.append(f"export: {tail(p.stdout, 1)}")
    p = sh(cli("figure2", "--checkpoint", ck, "--out", str(work / "figure2"), "--images", "50", "--draws", "2"),
           180, work)
    if p.returncode != 0:
        raise RuntimeError(f"figure2 exit {p.returncode}: {tail(p.stderr, 4)}")
    lines.append(f"figure2: {tail(p.stdout, 1)}")
    device = "cpu" if ctx.get("rehearse") else "cuda"
    p = sh(cli("eval", "--export", str(export), "--device", device, "--columns", "natural,pgd10",
               "--test-subset", "200"), 180, work)
    if p.returncode != 0:
        raise RuntimeError(f"eval exit {p.returncode}: {tail(p.stderr, 4)}")
    lines.append(f"eval on {device}: {tail(p.stdout, 4)}")
    lines.append(f"export loaded with CUDA hidden: {_cpu_only_load(export)}")
    return lines


def stage_train_step_cost(ctx: dict) -> list[str]:
    p = sh([sys.executable, str(ROOT / "bench" / "train_step_cost.py"), "--widths", "64", "--repeats", "3",
            "--device", "cuda"], timeout=240)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {tail(p.stderr, 6)}")
    return tail(p.stdout, 12).splitlines()


def stage_gpu_packing(ctx: dict) -> list[str]:
    p = sh([sys.executable, str(ROOT / "bench" / "gpu_packing.py"), "--iterations", "200"], timeout=240)
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {tail(p.stderr, 6)}")
    out = tail(p.stdout, 6).splitlines()
    ratio = next((ln for ln in out if ln.startswith("GPU packing ratio")), None)
    if ratio is None:
        raise RuntimeError("no GPU packing ratio printed: " + " / ".join(out))
    value = float(ratio.split(":", 1)[1].split()[0])
    out.append(f"target ≥ 3.00×: {'met' if value >= 3 else 'NOT met'}")
    return out


RUN: dict[str, Callable[[dict], list[str]]] = {
    "probe": stage_probe, "ray": stage_ray, "export-cpu": stage_export_cpu, "sweep": stage_sweep,
    "artifacts": stage_artifacts, "train_step_cost": stage_train_step_cost, "gpu_packing": stage_gpu_packing}


def report(results: list[dict], wall: float) -> str:
    md = ["# GPU path check (bench/gpu_check.py)", "",
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, host {platform.node()}, wall {wall:.0f} s.", "",
          "| stage | outcome | seconds |", "|---|---|---:|"]
    md += [f"| {r['stage']} | {r['outcome']} | {r['seconds']:.1f} |" for r in results]
    for r in results:
        md += ["", f"## {r['stage']}: {r['outcome']}", ""]
        md += [f"    {part}" for ln in r["lines"] for part in str(ln).splitlines()] or ["    (nothing printed)"]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.md", help="the markdown report")
    ap.add_argument("--budget", type=float, default=480.0, help="no stage starts after this many seconds")
    ap.add_argument("--only", default="", help=f"comma-separated stages (of {', '.join(STAGES)})")
    ap.add_argument("--work", default="", help="working folder (default: a temporary one)")
    ap.add_argument("--rehearse", action="store_true",
                    help="without CUDA, run the sweep and artifacts stages on the CPU at a small size (their "
                         "mechanics: kill, --resume, figure2, export, eval); not a GPU result")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s] or list(STAGES)
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise SystemExit(f"gpu_check: error: --only: unknown stage {unknown[0]!r} (choose from {', '.join(STAGES)})")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.monotonic()
    work = Path(args.work or tempfile.mkdtemp(prefix="l2lda-gpu-check-"))
    ctx: dict[str, Any] = {"work": work, "cuda": False, "rehearse": False}
    results = []
    for name in STAGES:
        if name != "probe" and name not in only:
            continue  # the probe always runs: every other stage needs to know about CUDA
        start = time.monotonic()
        try:
            if start - t0 > args.budget:
                raise Skip(f"the {args.budget:.0f} s budget was spent before this stage")
            rehearsal = args.rehearse and not ctx["cuda"] and name in ("sweep", "artifacts")
            ctx["rehearse"] = rehearsal
            SLOW["factor"] = 3.0 if rehearsal else 1.0
            if name in NEEDS_CUDA and not ctx["cuda"] and not rehearsal:
                raise Skip("needs CUDA, and CUDA is not usable on this machine")
            lines, outcome = RUN[name](ctx), "ok (CPU rehearsal, not a GPU result)" if rehearsal else "ok"
        except Skip as exc:
            lines, outcome = [str(exc)], "skipped"
        except Exception as exc:
            lines, outcome = [f"{type(exc).__name__}: {exc}"], "FAILED"
        results.append({"stage": name, "outcome": outcome, "lines": lines, "seconds": time.monotonic() - start})
        print(f"[gpu_check] {name}: {outcome} ({results[-1]['seconds']:.1f} s)" + (f" — {lines[0]}" if outcome in ("skipped", "FAILED") else ""),
              flush=True)
    text = report(results, time.monotonic() - t0)
    Path(args.out).write_text(text)
    print(f"[gpu_check] report: {args.out} (work folder {work})")
    sys.exit(1 if any(r["outcome"] == "FAILED" for r in results) else 0)


if __name__ == "__main__":
    main()
