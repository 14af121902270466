"""Training step cost: one L2L-DA iteration, before the fast path and now, eager and with each option, side by side.

Rows per generator width (T 10, batch 100 doubled to 200, LeNet-5 on mnist5k, defaults
otherwise): ``before`` — the frozen pre-change generator step (bench/reference_l2lda.py)
inside the same runner; ``eager`` — the current default; then ``channels_last``,
``compile``, ``compile+channels_last`` and, on CUDA only, ``amp bf16`` (with and without
channels_last). Each row is a real ``Experiment.train(1)`` (generator step + classifier
step), timed interleaved with the others so that load hits all alike; the first call of
each row (compilation included) is reported apart. Printed per row: ms/iteration, speed-up
over ``before``, achieved GFLOP/s — the current eager iteration's FLOPs (counted with
torch.utils.flop_counter; every row computes the same thing) over the row's time — against
the 3×3-convolution throughput measured in this process, and the ratio to a PGD10-AT
iteration measured alongside. Target (docs/performance.md): best row ≥ 1.5× ``before`` at
width 64.

    python bench/train_step_cost.py [--widths 16,64] [--repeats 3] [--threads 1] [--batch 100] [--T 10]
                                    [--options eager,channels_last,compile,compile+channels_last] [--profile]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench import reference_l2lda  # noqa: E402
from bench.common import set_threads  # noqa: E402
from trainable.config import TrialConfig  # noqa: E402
from trainable.experiment.loop import Experiment  # noqa: E402

OPTIONS = {  # row name → config changes
    "eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "compile+channels_last": {"compile": True, "channels_last": True},
    "amp_bf16": {"amp": "bf16"},
    "amp_bf16+channels_last": {"amp": "bf16", "channels_last": True},
}


class _GlobalOnly:
    """FlopCounterMode's module tracker breaks autograd.grad on leaves; count globally instead."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def conv_throughput(device: torch.device) -> float:
    """FLOP/s of a 64→64 3×3 convolution forward at 28×28, batch 64, best of both layouts (a practical peak)."""
    flops = 2 * 64 * 64 * 28 * 28 * 64 * 9
    best = 0.0
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(64, 64, 28, 28, device=device).contiguous(memory_format=fmt)
        w = torch.randn(64, 64, 3, 3, device=device).contiguous(memory_format=fmt)
        ts = []
        for i in range(6):
            _sync(device)
            t = time.perf_counter()
            F.conv2d(x, w, padding=1)
            _sync(device)
            if i:
                ts.append(time.perf_counter() - t)
        best = max(best, flops / statistics.median(ts))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_batch(exp: Experiment):
    """The defense's batch() with the frozen pre-change generator step (same z draw, same outputs up to rounding)."""
    d, cfg = exp.defense, exp.cfg

    def batch(x, y, iteration):
        d.generator.train()
        z = torch.randn((2 * x.shape[0], cfg.z_dim), device=x.device, dtype=x.dtype)
        lc, ld, a1, a2 = reference_l2lda.l2lda_step(d.generator, d.optimizer, d.classifier, x, y, z, eps=cfg.eps_value,
                                                    eps_step=cfg.eps_step, steps=cfg.gen_steps, lam=cfg.lam_value,
                                                    clip=cfg.grad_clip)
        return torch.cat([x, a1, a2]), torch.cat([y, y, y]), {"train/loss_cls": lc, "train/loss_div": ld}

    return batch


def compile_budget(rows: int) -> None:
    """Room for every compiled row of this process, and an error instead of a silent eager row.

    Each row is an Experiment of its own whose two compiled kernels share their code objects
    with the other rows' (other widths, memory formats, dtypes): dynamo recompiles for each and,
    past its recompile limit (8), runs the rest eager without a word (docs/performance.md)."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4 * rows + 8)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 16 * rows + 64)
    dynamo_config.fail_on_recompile_limit_hit = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,64", help="generator widths, comma-separated")
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations per row (after one untimed first call)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--options", default="", help="rows besides 'before' (default: all that apply to the device)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of one eager iteration")
    args = ap.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    base = dict(warmup=0, iterations=10_000, batch_size=args.batch, threads=args.threads, augment=False, T=args.T,
                device=args.device, steps_per_report=1)
    probe = Experiment(TrialConfig.from_dict(dict(base, defense="plain", iterations=1)), use_cache=False)
    device = probe.device
    names = [n for n in (args.options.split(",") if args.options else OPTIONS) if n]
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise SystemExit(f"--options: unknown row {unknown[0]!r} (choose from {', '.join(OPTIONS)})")
    if device.type != "cuda":
        skipped = [n for n in names if "amp" in n]
        names = [n for n in names if "amp" not in n]
        if skipped:
            print(f"[bench] {', '.join(skipped)}: CUDA only, skipped on {device.type}")
    compile_budget(len(names) * len(widths))
    peak = conv_throughput(device)
    pgd = Experiment(TrialConfig.from_dict(dict(base, defense="pgd10_at")), use_cache=False)
    print(f"[bench] device {device}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}/"
          f"{os.getloadavg()[1]:.2f}/{os.getloadavg()[2]:.2f}; 3×3 conv throughput {peak / 1e9:.1f} GFLOP/s")
    table = []
    for width in widths:
        torch._dynamo.reset()  # one width's graphs never count against the next's
        cfg = dict(base, defense="l2lda", gen_width=width)
        rows: dict[str, Experiment] = {}
        ref = Experiment(TrialConfig.from_dict(cfg), use_cache=False)
        ref.defense.batch = reference_batch(ref)
        rows["before"] = ref
        for n in names:
            rows[n] = Experiment(TrialConfig.from_dict(dict(cfg, **OPTIONS[n])), use_cache=False)
        fc = FlopCounterMode(display=False)
        fc.mod_tracker = _GlobalOnly()
        counter = Experiment(TrialConfig.from_dict(cfg), use_cache=False)
        with fc:
            counter.train(1)
        flops = fc.get_total_flops()
        del counter
        first: dict[str, float] = {}
        for n, exp in rows.items():
            t = time.perf_counter()
            exp.train(1)
            _sync(device)
            first[n] = time.perf_counter() - t
        pgd.train(1)
        times: dict[str, list[float]] = {n: [] for n in [*rows, "pgd10_at"]}
        for _ in range(args.repeats):
            for n, exp in [*rows.items(), ("pgd10_at", pgd)]:
                _sync(device)
                t = time.perf_counter()
                exp.train(1)
                _sync(device)
                times[n].append(time.perf_counter() - t)
        med = {n: statistics.median(v) for n, v in times.items()}
        print(f"\nwidth {width}, T {args.T}, batch {args.batch} (doubled {2 * args.batch}); "
              f"{flops / 1e9:.1f} GFLOP per iteration; PGD10-AT {med['pgd10_at'] * 1e3:.0f} ms/iteration; "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"  {'row':24s} {'ms/it':>9s} {'vs before':>9s} {'GFLOP/s':>8s} {'of conv':>7s} {'/PGD10-AT':>9s} "
              f"{'first call s':>12s}")
        for n in rows:
            t = med[n]
            print(f"  {n:24s} {t * 1e3:9.0f} {med['before'] / t:8.2f}× {flops / t / 1e9:8.1f} {flops / t / peak:6.0%} "
                  f"{t / med['pgd10_at']:9.1f} {first[n]:12.1f}")
            table.append((width, n, t))
        best = min((n for n in rows if n != "before"), key=lambda n: med[n])
        print(f"  best: {best}, {med['before'] / med[best]:.2f}× before (target at width 64: ≥ 1.5×)")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            exp = rows.get("eager") or rows["before"]
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                exp.train(1)
            print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                                     max_name_column_width=32,
                                                                     max_shapes_column_width=70))


if __name__ == "__main__":
    main()
