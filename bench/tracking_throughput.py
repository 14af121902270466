"""Tracking throughput: simulated trials reporting through the real MLflow callback, into sqlite and into a server.

The driver's side of a big sweep: N concurrent trials each hand Tune a result per report, and
Tune's controller thread calls ``MLflowCallback.on_trial_result`` for each. Here one thread
plays the controller and feeds results round-robin over N trials as fast as the callback takes
them (so the writer, not the trials, is the limit); the callback's writer thread delivers them
into (a) a sqlite store and (b) a local ``mlflow server`` on 127.0.0.1. Each result carries the
metric keys a real L2L-DA trial reports. Afterwards every metric history of every run is read
back and checked complete (no record lost, no step twice).

Figures per store and trial count:
  * start-up  — seconds until every trial's run exists (params, dataset input) with its first
                report written;
  * sustained — results per second from the second report on until the writer has written
                the last one (a barrier through its queue): the headline, target ≥ 200
                results/s into the server;
  * hand-off  — results per second the controller thread got rid of them (it only waits when
                the writer's bounded queue is full);
  * end       — seconds from the trials' completion to ``on_experiment_end`` returning: every
                trial's loss curves rendered and uploaded, the sweep table and Pareto plot.

    python bench/tracking_throughput.py [--trials 8,16,32,64] [--reports 50] [--stores sqlite,server]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from orchestrator.store import make_client  # noqa: E402
from orchestrator.tracking import MLflowCallback  # noqa: E402

# The keys one L2L-DA report carries (trainable.training.trainer), besides Ray's own bookkeeping.
METRICS = ["train/loss", "train/acc_clean", "train/acc_adv", "train/lr", "train/adv_spread", "train/gen_loss",
           "train/div_loss", "train/gen_grad_norm", "train/clf_grad_norm", "val/natural", "val/pgd10", "val/worst",
           "time/iter_s", "time/samples_per_s", "time/train_total_s", "time/val_s", "node/threads", "iteration",
           "node/gpu_mem_mb", "time/data_s"]


class Trial:
    def __init__(self, i: int) -> None:
        self.trial_id = f"bench_{i:05d}"
        self.trial_name = f"L2LDATrainable_{self.trial_id}"
        self.config = {"defense": "l2lda", "dataset": "mnist5k", "seed": i, "T": 5, "lam": 0.02}
        self.checkpoint = None
        self.error_file = None
        self.status = "RUNNING"
        self.placement_group_factory = None
        self.num_failures = 0

    def __str__(self) -> str:
        return self.trial_name


def result(step: int, trial: Trial) -> dict:
    r = {k: 0.5 + 0.001 * step + 1e-6 * j for j, k in enumerate(METRICS)}
    r.update({"training_iteration": step, "trial_id": trial.trial_id, "hostname": "node-a", "node_ip": "127.0.0.2",
              "pid": 1, "time_this_iter_s": 0.1, "time_total_s": 0.1 * step, "timestamp": int(time.time()),
              "done": False, "config": trial.config})
    return r


class Requests:
    """Every REST call the client makes (a server store), by endpoint: where the time goes."""

    def __init__(self) -> None:
        from mlflow.store.tracking import rest_store
        from mlflow.utils import rest_utils

        self.calls: dict[str, list[float]] = {}
        orig = rest_utils.call_endpoint

        def timed(host_creds, endpoint, *a, **k):
            t = time.perf_counter()
            try:
                return orig(host_creds, endpoint, *a, **k)
            finally:
                c = self.calls.setdefault(endpoint.rsplit("/", 1)[-1], [0, 0.0])
                c[0] += 1
                c[1] += time.perf_counter() - t

        rest_utils.call_endpoint = rest_store.call_endpoint = timed

    def take(self) -> dict[str, list[float]]:
        out, self.calls = self.calls, {}
        return out


REQUESTS: Requests | None = None


def sweep(uri: str, n: int, reports: int, tag: str) -> dict[str, float]:
    spec = {"name": "bench-tracking", "space": {"seed": {"kind": "grid", "values": list(range(n))}},
            "search": {"metric": "val/worst", "mode": "max"}}
    lines: list[str] = []
    cb = MLflowCallback(uri, "bench-tracking", spec, "", f"sweep-{tag}", log_models=False, log=lines.append)
    cb.setup(total_num_samples=n)
    trials = [Trial(i) for i in range(n)]
    t_start = time.perf_counter()
    for t in trials:  # start-up: each trial's run created with its params and dataset, one first report
        cb.on_trial_start(iteration=0, trials=trials, trial=t)
        cb.on_trial_result(iteration=1, trials=trials, trial=t, result=result(1, t))
    cb.sync()
    startup = time.perf_counter() - t_start
    if REQUESTS is not None:
        REQUESTS.take()
    t0 = time.perf_counter()
    handed = 0.0
    for step in range(2, reports + 1):
        for t in trials:
            s = time.perf_counter()
            cb.on_trial_result(iteration=step, trials=trials, trial=t, result=result(step, t))
            handed += time.perf_counter() - s
    cb.sync()  # the writer applied every result and wrote it (a barrier forces a write)
    wall = time.perf_counter() - t0
    requests = REQUESTS.take() if REQUESTS is not None else {}
    t1 = time.perf_counter()
    for t in trials:
        t.status = "TERMINATED"
        cb.on_trial_complete(iteration=0, trials=trials, trial=t)
    cb.on_experiment_end(trials=trials)  # loss curves of every trial, sweep table, Pareto plot
    end = time.perf_counter() - t1
    if cb.lost or any("lost" in ln or "rejected" in ln for ln in lines):
        raise SystemExit(f"{tag}: records lost: {cb.lost} ({lines})")
    check(uri, f"sweep-{tag}", n, reports)
    total = n * (reports - 1)
    return {"startup": startup, "sustained": total / wall, "handoff": total / handed if handed else float("inf"), "wall": wall,
            "end": end, "requests": requests}


def check(uri: str, sweep_name: str, n: int, reports: int) -> None:
    """Every run of the sweep holds every step of every metric once."""
    client = make_client(uri)
    exp = client.get_experiment_by_name("bench-tracking")
    runs = client.search_runs([exp.experiment_id], f"tags.sweep_name = '{sweep_name}' and tags.role = 'trial'",
                              max_results=1000)
    if len(runs) != n:
        raise SystemExit(f"{sweep_name}: {len(runs)} child runs, expected {n}")
    want = list(range(1, reports + 1))
    for r in runs:
        if r.info.status != "FINISHED":
            raise SystemExit(f"{sweep_name}: run {r.info.run_name} is {r.info.status}")
        for k in METRICS:
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, k))
            if steps != want:
                raise SystemExit(f"{sweep_name}: run {r.info.run_name} metric {k}: steps {steps[:5]}… "
                                 f"({len(steps)}), expected 1..{reports}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--artifacts-destination", str(root / "art")], cwd=root, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited: {(root / 'server.log').read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("mlflow server did not start within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default="8,16,32,64", help="concurrent trial counts, comma-separated")
    ap.add_argument("--reports", type=int, default=50, help="results per trial")
    ap.add_argument("--stores", default="sqlite,server")
    args = ap.parse_args()
    if args.reports < 2:
        ap.error("--reports must be at least 2 (the first report belongs to the start-up)")
    counts = [int(x) for x in args.trials.split(",") if x.strip()]
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="l2lda-tracking-bench-"))
    server = None
    rows: list[tuple[str, int, dict]] = []
    try:
        uris = {}
        if "sqlite" in stores:
            uris["sqlite"] = f"sqlite:///{root / 'bench.db'}"
            make_client(uris["sqlite"]).search_experiments()  # MLflow's schema, created before timing
        if "server" in stores:
            global REQUESTS
            server, uris["server"] = start_server(root)
            REQUESTS = Requests()
        for store, uri in uris.items():
            sweep(uri, 2, 2, f"{store}-warmup")  # a fresh store/server pays its first requests here, untimed
            for n in counts:
                rows.append((store, n, sweep(uri, n, args.reports, f"{store}-{n}")))
                print(f"[bench] {store:6s} {n:3d} trials: {rows[-1][2]['sustained']:8.1f} results/s", flush=True)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    print(f"config: {args.reports} results per trial, {len(METRICS)} metrics per result, default flush interval "
          f"and queue; every metric history read back complete")
    print(f"{'store':8s} {'trials':>6s} {'start-up s':>10s} {'results':>8s} {'sustained/s':>12s} {'hand-off/s':>11s} "
          f"{'wall s':>7s} {'end s':>6s}")
    for store, n, f in rows:
        print(f"{store:8s} {n:6d} {f['startup']:10.1f} {n * (args.reports - 1):8d} {f['sustained']:12.1f} "
              f"{f['handoff']:11.1f} {f['wall']:7.1f} {f['end']:6.1f}")
    for store, n, f in rows:
        if f.get("requests"):
            print(f"{store} {n} trials, requests while sustained ({f['wall']:.1f} s): " + "; ".join(
                f"{k} {int(c)} × {1000 * t / c:.0f} ms" for k, (c, t) in sorted(f["requests"].items(),
                                                                                 key=lambda kv: -kv[1][1])))
    server_rows = [f["sustained"] for s, _, f in rows if s == "server"]
    if server_rows:
        low = min(server_rows)
        print(f"lowest sustained into the server: {low:.1f} results/s (target ≥ 200: {'met' if low >= 200 else 'MISSED'})")


if __name__ == "__main__":
    main()
