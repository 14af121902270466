"""Is the tool's L2L-DA the method as its authors train it? Side by side with a reference loop, one process.

Row "tool" is ``TrialConfig(defense="l2lda")`` with the tool's defaults (the authors' LeNet-5
on raw pixels, their initialisation, the generator objective summed over the T steps; see
docs/method.md), only the budget set to the benchmark's. Row "reference" is Algorithm 1 of
the paper written out below in our own words, sharing no training code with the tool: its
own LeNet-5 and U-Net generator, its own rollout, losses and updates, following the authors'
conventions (ĝ normalised per sample and channel by ‖g + 1e-15‖₂, the doubled batch with z1,
z2 fixed over the T steps, CE and the diversity ratio summed over the T mini-steps,
grad-norm clip 1.0 on both networks in the adversarial phase, one classifier CE over
[x ; x_adv(z1) ; x_adv(z2)], the generator's batch norms with ε 1e-10). Both see the same batches in the same order (the reference
replays the tool's sampler) and are evaluated with the tool's PGD10 and PGD100 on the same
fixed test points.

Budget (as measured against the authors' own trainer): mnist5k, ε 0.3, ε_step ε/4, λ 0.02,
generator width 16, T 5, batch 50, SGD 0.01 / 0.9 / 1e-5, 300 clean + 800 adversarial
iterations, no augmentation, no LR decay, one thread, 500 test points. "escape" is the first
adversarial iteration at which the running mean (10 iterations) of the generator's CE,
averaged over the T steps, exceeds 0.5: the generator starts to fool the classifier.

Targets: the tool's mean PGD100 over the seeds within 3 points of the reference's, and
within 3 points of the authors' trainer at this budget (41.6, the mean of its seeds 0 and 1).

    python bench/l2lda_fidelity.py                          # 3 seeds, ≈ 40 min on one quiet core
    python bench/l2lda_fidelity.py --seeds 0 --only tool --input-norm dataset   # a normalised LeNet
    python bench/l2lda_fidelity.py --seeds 0 --paired   # the reference from the tool's init and z draws

Unpaired, the two rows differ by the draw of the generator's initialisation and its z as well as
by the code; ``--paired`` takes the draws out, so what remains is the method.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import sys
from collections import defaultdict, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `bench` as a package

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from trainable.config import TrialConfig  # noqa: E402
from trainable.generators import losses  # noqa: E402
from trainable.experiment.loop import Experiment  # noqa: E402
from bench.common import accuracy_under  # noqa: E402

EPS, STEP_FRAC, LAM, Z_DIM = 0.3, 0.25, 0.02, 8
COLUMNS = ("natural", "pgd10", "pgd100")
AUTHORS_PGD100 = 41.6  # the authors' trainer at this budget, mean of seeds 0 and 1 (docs/method.md)
ESCAPE_CE, ESCAPE_WINDOW = 0.5, 10
BN_EPS = 1e-10  # the authors' generator builds its batch norms with ε 1e-10 (set by --bn-eps for both runs)


# ----------------------------------------------------------------------------- reference networks
class RefLeNet(nn.Module):
    """LeNet-5 on raw [0, 1] pixels; conv weights N(0, 0.02), linear xavier-uniform, zero biases."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c3, self.c5 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5), nn.Conv2d(16, 120, 5)
        self.f6, self.f7 = nn.Linear(120, 84), nn.Linear(84, 10)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0, 0.02) if isinstance(m, nn.Conv2d) else nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.max_pool2d(F.relu(self.c3(h)), 2)
        return self.f7(F.relu(self.f6(F.relu(self.c5(h)).flatten(1))))


class RefCBN(nn.Module):
    """Batch norm without affine (ε as the authors' generator: BN_EPS), then γ_shared + γ[y] and β_shared + β[y]."""

    def __init__(self, c: int, classes: int = 10) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=BN_EPS, affine=False)
        self.g0, self.b0 = nn.Parameter(torch.randn(c) * 0.02 + 1), nn.Parameter(torch.zeros(c))
        self.g, self.b = nn.Parameter(torch.randn(classes, c) * 0.02), nn.Parameter(torch.zeros(classes, c))

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        return self.bn(h) * (self.g0 + self.g[y])[..., None, None] + (self.b0 + self.b[y])[..., None, None]


class RefGenerator(nn.Module):
    """The U-Net of the paper's Fig. 3 on [x, ĝ, δ]: z through an MLP, tiled onto the inputs of the
    first three convolutions; bias-free convolutions N(0, 0.02); class-conditional BN; tanh out."""

    def __init__(self, w: int, c: int = 1) -> None:
        super().__init__()
        self.z = nn.Sequential(nn.Linear(Z_DIM, Z_DIM), nn.ReLU(), nn.Linear(Z_DIM, Z_DIM), nn.ReLU())
        for m in self.z:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.d0 = nn.Conv2d(3 * c + Z_DIM, w, 3, 1, 1, bias=False)
        self.d1 = nn.Conv2d(w + Z_DIM, w, 4, 2, 1, bias=False)
        self.d2 = nn.Conv2d(w + Z_DIM, 2 * w, 4, 2, 1, bias=False)
        self.u2 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False)
        self.u1 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False)
        self.out = nn.Conv2d(2 * w, c, 3, 1, 1, bias=False)
        self.n1, self.nu2, self.nu1 = RefCBN(w), RefCBN(w), RefCBN(w)
        for m in (self.d0, self.d1, self.d2, self.u2, self.u1, self.out):
            nn.init.normal_(m.weight, 0, 0.02)

    def forward(self, inp: Tensor, y: Tensor, z: Tensor) -> Tensor:
        zf = self.z(z)[..., None, None]

        def tile(h: Tensor) -> Tensor:
            return torch.cat([h, zf.expand(-1, -1, h.shape[2], h.shape[3])], 1)

        d0 = F.leaky_relu(self.d0(tile(inp)), 0.2)
        d1 = F.leaky_relu(self.n1(self.d1(tile(d0)), y), 0.2)
        d2 = F.leaky_relu(self.d2(tile(d1)), 0.2)
        u2 = torch.cat([F.relu(self.nu2(self.u2(d2), y)), d1], 1)
        u1 = torch.cat([F.relu(self.nu1(self.u1(u2), y)), d0], 1)
        return torch.tanh(self.out(u1))


# ----------------------------------------------------------------------------- reference loop
def unit_gradient(f: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇ₓ CE(f(x), y) with f in eval mode, divided per sample and channel by ‖g + 1e-15‖₂ over H×W."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(f(x), y), x)
    return g / (g + 1e-15).flatten(2).norm(dim=2)[..., None, None]


def reference_iteration(f: nn.Module, gnet: nn.Module, f_opt, g_opt, x: Tensor, y: Tensor, T: int,
                        z: Tensor | None = None) -> float:
    """One adversarial iteration of Algorithm 1; returns the generator's CE averaged over the T steps."""
    n, eps, step = len(y), EPS, STEP_FRAC * EPS
    f.eval()
    for p in f.parameters():
        p.requires_grad_(False)  # the generator's loss trains the generator only
    xx, yy = torch.cat([x, x]), torch.cat([y, y])
    z = torch.randn(2 * n, Z_DIM) if z is None else z
    g = unit_gradient(f, xx, yy)
    delta = torch.zeros_like(xx)
    ce_sum = div_sum = 0.0
    gnet.train()
    for t in range(T):
        delta = (delta + step * gnet(torch.cat([xx, g, delta], 1), yy, z)).clamp(-eps, eps)
        x_adv = (xx + delta).clamp(0, 1)
        ce_sum = ce_sum + F.cross_entropy(f(x_adv), yy)
        ratio = (x_adv[:n] - x_adv[n:]).abs().flatten(1).mean(1) / ((z[:n] - z[n:]).abs().mean(1) + 1e-8)
        div_sum = div_sum + ratio.mean()
        if t < T - 1:
            g = unit_gradient(f, x_adv, yy)
    g_opt.zero_grad(set_to_none=True)
    (-(ce_sum + LAM * div_sum)).backward()
    nn.utils.clip_grad_norm_(gnet.parameters(), 1.0)
    g_opt.step()
    for p in f.parameters():
        p.requires_grad_(True)
    f.train()
    x_adv = x_adv.detach()
    loss = F.cross_entropy(f(torch.cat([x, x_adv[:n], x_adv[n:]])), torch.cat([y, y, y]))
    f_opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(f.parameters(), 1.0)
    f_opt.step()
    return float(ce_sum.detach()) / T


def reference_run(batches: list[Tensor], data, clean: int, T: int, width: int, seed: int, paired: dict | None = None):
    """Algorithm 1 on the tool's batches. `paired`: the tool's initial weights and z draws, so the two runs
    differ only in how they compute (a difference in the method shows; seed-to-seed spread does not)."""
    torch.manual_seed(seed)
    f = RefLeNet()
    torch.manual_seed(seed + 2)
    gnet = RefGenerator(width)
    zs = None
    if paired is not None:
        _copy_by_order(f, paired["classifier"])
        _copy_by_order(gnet, paired["generator"])
        zs = iter(paired["z"])
    sgd = dict(lr=0.01, momentum=0.9, weight_decay=1e-5)
    f_opt, g_opt = torch.optim.SGD(f.parameters(), **sgd), torch.optim.SGD(gnet.parameters(), **sgd)
    escape, window, t0 = None, deque(maxlen=ESCAPE_WINDOW), time.perf_counter()
    for it, idx in enumerate(batches):
        x, y = data.train_x[idx], data.train_y[idx]
        if it < clean:  # clean warm-up, no clip
            f.train()
            loss = F.cross_entropy(f(x), y)
            f_opt.zero_grad(set_to_none=True)
            loss.backward()
            f_opt.step()
            continue
        window.append(reference_iteration(f, gnet, f_opt, g_opt, x, y, T, None if zs is None else next(zs)))
        escape = _escape(escape, window, it - clean + 1)
        _progress("reference", it + 1, len(batches), t0)
    return f.eval(), escape, time.perf_counter() - t0, {}


def _copy_by_order(net: nn.Module, state: list[Tensor]) -> None:
    """Load the tool's parameters into a reference network: same order, same shapes (checked)."""
    params = list(net.parameters())
    if [tuple(p.shape) for p in params] != [tuple(t.shape) for t in state]:
        raise SystemExit("paired: the reference network's parameters do not match the tool's in order and shape")
    with torch.no_grad():
        for p, t in zip(params, state):
            p.copy_(t)


# ----------------------------------------------------------------------------- the tool
def _experiment(clean: int, adv: int, T: int, width: int, batch: int, seed: int, cache_dir: str, **extra):
    cfg = TrialConfig.from_dict({"dataset": "mnist5k", "defense": "l2lda", "warmup": clean, "iterations": adv,
                                 "batch_size": batch, "T": T, "gen_width": width, "augment": False,
                                 "lr_decay_at": None, "threads": 1, "steps_per_report": 100, "seed": seed,
                                 "test_subset": 500, "val_subset": 100, "cache_dir": cache_dir, **extra})
    return Experiment(cfg, log=lambda msg: print(f"[tool] {msg}", flush=True), use_cache=False)


def tool_run(clean: int, adv: int, T: int, width: int, batch: int, seed: int, cache_dir: str, **extra):
    exp = _experiment(clean, adv, T, width, batch, seed, cache_dir, **extra)
    cfg = exp.cfg
    batches: list[Tensor] = []
    draw = exp.sampler.next

    def recorded() -> Tensor:  # the reference replays exactly these batches
        idx = draw()
        batches.append(idx.detach().cpu().clone())
        return idx

    exp.sampler.next = recorded
    # What a paired reference starts from and draws: the tool's initial weights and its z per iteration.
    paired = {"classifier": [p.detach().clone() for p in exp.classifier.parameters()],
              "generator": [p.detach().clone() for p in exp.defense.generator.parameters()], "z": []}
    draw_z = losses._randn

    def recorded_z(*args, **kw) -> Tensor:
        z = draw_z(*args, **kw)
        paired["z"].append(z.detach().cpu().clone())
        return z

    losses._randn = recorded_z
    escape, window, t0 = None, deque(maxlen=ESCAPE_WINDOW), time.perf_counter()
    report: dict[str, float] = defaultdict(float)
    while not exp.done:
        start = exp.iteration
        m = exp.train(1)
        if start >= clean:
            window.append(m["train/loss_cls"] / (cfg.gen_steps if cfg.gen_objective == "sum" else 1))
            escape = _escape(escape, window, start - clean + 1)
            for k, v in m.items():
                report[k] += v / cfg.steps_per_report
            if (exp.iteration - clean) % cfg.steps_per_report == 0:  # the tool's collapse check, once per report
                exp.check_health(dict(report), exp.iteration - cfg.steps_per_report)
                report.clear()
        _progress("tool", exp.iteration, cfg.total_iterations, t0)
    losses._randn = draw_z
    flags = {"collapse": exp.health.fired_at}
    return exp, batches, escape, time.perf_counter() - t0, flags, paired


def tool_batches(clean: int, adv: int, T: int, width: int, batch: int, seed: int, cache_dir: str, **extra):
    """The batches :func:`tool_run` would draw, from the tool's own sampler, without training anything."""
    exp = _experiment(clean, adv, T, width, batch, seed, cache_dir, **extra)
    return exp, [exp.sampler.next().detach().cpu().clone() for _ in range(exp.cfg.total_iterations)]


def _escape(escape, window, adv_it: int):
    if escape is None and len(window) == window.maxlen and statistics.fmean(window) > ESCAPE_CE:
        return adv_it
    return escape


def _progress(who: str, it: int, total: int, t0: float) -> None:
    if it % 100 == 0:
        el = time.perf_counter() - t0
        print(f"[{who}] it {it}/{total} {el:.0f} s, about {el / it * (total - it):.0f} s left", flush=True)


def evaluate(model: nn.Module, exp: Experiment) -> dict[str, float]:
    return {c: 100 * v for c, v in accuracy_under(model, exp, COLUMNS, EPS).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--clean", type=int, default=300)
    ap.add_argument("--adv", type=int, default=800)
    ap.add_argument("--T", type=int, default=5)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--only", choices=("tool", "reference"), help="run one side only (no comparison)")
    ap.add_argument("--paired", action="store_true",
                    help="the reference starts from the tool's initial weights and draws the tool's z (seed spread out)")
    ap.add_argument("--gen-objective", default="sum", help="the tool's gen_objective (sum: the authors'; mean)")
    ap.add_argument("--input-norm", default="auto", help="the tool's input_norm (auto: the source's; dataset)")
    ap.add_argument("--bn-eps", type=float, default=BN_EPS,
                    help="ε of both generators' batch norms (default the authors' 1e-10; 1e-5 is PyTorch's)")
    ap.add_argument("--cache-dir", default=".cache/l2lda-tune")
    args = ap.parse_args()
    globals()["BN_EPS"] = args.bn_eps  # read by RefCBN when the reference is built
    if args.paired and args.only:
        ap.error("--paired needs both runs (the reference takes the tool's initial weights and z draws)")
    torch.set_num_threads(1)
    rows: list[dict] = []
    for seed in args.seeds:
        extra = dict(gen_objective=args.gen_objective, input_norm=args.input_norm, gen_bn_eps=args.bn_eps)
        if args.only == "reference":  # the tool's batches without training the tool (its sampler is its own RNG)
            exp, batches = tool_batches(args.clean, args.adv, args.T, args.width, args.batch, seed, args.cache_dir,
                                        **extra)
        else:
            exp, batches, esc, t, flags, paired = tool_run(args.clean, args.adv, args.T, args.width, args.batch,
                                                           seed, args.cache_dir, **extra)
        if args.only != "reference":
            rows.append({"run": "tool", "seed": seed, "escape": esc, "s": t, **flags, **evaluate(exp.classifier, exp)})
            print(rows[-1], flush=True)
        if args.only != "tool":
            model, esc, t, flags = reference_run(batches, exp.data, args.clean, args.T, args.width, seed,
                                                 paired if args.paired else None)
            rows.append({"run": "paired reference" if args.paired else "reference", "seed": seed, "escape": esc,
                         "s": t, **evaluate(model, exp)})
            print(rows[-1], flush=True)
    print(f"\nL2L-DA, LeNet-5, mnist5k, {args.clean} clean + {args.adv} adversarial iterations, batch {args.batch}, "
          f"T {args.T}, width {args.width}, 500 test points, tool gen_objective={args.gen_objective} "
          f"input_norm={args.input_norm}, generator BN ε {args.bn_eps:g}; load {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| run | seed | escape | natural | pgd10 | pgd100 | collapse flag | training s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        flag = "" if r["run"] != "tool" else ("fired at %d" % r["collapse"] if r["collapse"] else "silent")
        print(f"| {r['run']} | {r['seed']} | {r['escape'] or 'never'} | {r['natural']:.1f} | {r['pgd10']:.1f} | "
              f"{r['pgd100']:.1f} | {flag} | {r['s']:.0f} |")
    runs = ("tool", "reference", "paired reference")
    means = {run: statistics.fmean(r["pgd100"] for r in rows if r["run"] == run)
             for run in runs if any(r["run"] == run for r in rows)}
    for run, m in means.items():
        print(f"mean PGD100 {run}: {m:.1f}")
    if "tool" in means:
        for ref in ("reference", "paired reference"):
            if ref in means:
                gap = means["tool"] - means[ref]
                print(f"tool − {ref}: {gap:+.1f} points (target ±3) → {'MET' if abs(gap) <= 3 else 'NOT MET'}")
        gap = means["tool"] - AUTHORS_PGD100
        print(f"tool − authors' trainer ({AUTHORS_PGD100}): {gap:+.1f} points (target ±3) → "
              f"{'MET' if abs(gap) <= 3 else 'NOT MET'}")

if __name__ == "__main__":
    main()
