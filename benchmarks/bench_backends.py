"""Tracking backends side by side: runs/s against one server, and per-job overhead.

    python benchmarks/bench_backends.py [--runs 10] [--jobs 6]

Starts its own services on loopback ports (PostgreSQL 15, ``python -m runner.server`` on
PostgreSQL and on SQLite; see tests/services.py) and prints:

1. runs/s logged by 1, 2 and 4 concurrent sweep workers against one server, on PostgreSQL
   and on SQLite. Each worker is a process that logs what a job logs through the runner's
   own ``Store`` (a run with the job's tags, ~30 params, the config files, 10 metrics, end).
2. the per-job tracking overhead of ``backend=server`` against ``backend=local`` on the same
   sweep through the real CLI (``python -m runner -m seed=0,...``), each minus the same
   sweep with ``backend=none``, and the HTTP requests one job makes (from the server's log).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services import start_postgres, start_runner_server

_TAGS = {f"runner.tag{i}": "x" * 40 for i in range(20)}
_PARAMS = {f"model.param{i}": str(i) for i in range(30)}
_FILES = {"config.yaml": "a: 1\n" * 50, ".hydra/config.yaml": "b: 2\n" * 50,
          ".hydra/overrides.yaml": "- seed=0\n"}  # fmt: skip


def _worker(uri: str, runs: int, parent: str, exp: str, barrier, out) -> None:  # type: ignore[no-untyped-def]
    from runner.tracking.store import Store

    store = Store(uri)
    store.client.get_experiment(exp)  # connect before the clock starts
    barrier.wait()
    start = time.perf_counter()
    for i in range(runs):
        rid = store.create_run(exp, name=f"job-{i}", tags=_TAGS, parent_id=parent)
        store.log_batch(rid, params=_PARAMS)
        store.log_files(rid, _FILES)
        store.log_batch(rid, metrics=[(f"m{k}", 0.5, 0, int(time.time() * 1000))
                                      for k in range(10)])  # fmt: skip
        store.end_run(rid, "FINISHED")
    out.put(time.perf_counter() - start)


def throughput(uri: str, workers: int, runs: int) -> float:
    """Runs per second logged by ``workers`` processes, ``runs`` each, against ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(f"bench-{workers}-{time.time_ns()}")
    parent = client.create_run(exp, run_name="sweep").info.run_id
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(uri, runs, parent, exp, barrier, out))
             for _ in range(workers)]  # fmt: skip
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for _ in procs:
        out.get(timeout=600)
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    client.set_terminated(parent)
    return workers * runs / wall


def sweep_seconds(backend: list[str], jobs: int, cwd: Path, env: dict[str, str]) -> float:
    """Wall time of a ``jobs``-job sweep through the real CLI."""
    seeds = ",".join(str(i) for i in range(jobs))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "runner", "-m", f"seed={seeds}", *backend],
        cwd=cwd, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per worker (throughput)")
    parser.add_argument("--jobs", type=int, default=4, help="n: sweeps of n and 2n jobs")
    args = parser.parse_args()
    from runner.tracking.store import no_telemetry

    no_telemetry()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        home = Path(tmp)
        pg = start_postgres()
        servers = {}
        try:
            (home / "sqlite").mkdir()
            servers["SQLite"] = start_runner_server(cwd=home / "sqlite")
            s3root = home / "pg-artifacts"
            servers["PostgreSQL"] = start_runner_server(
                "backend=postgres_s3", f"backend.artifact_root={s3root}", cwd=home, env=pg.env
            )
            print("1. runs/s against one tracking server (job-like runs, workers in parallel)")
            print(f"   {'store':<11} {'1 worker':>9} {'2 workers':>10} {'4 workers':>10}")
            for name, svc in servers.items():
                rates = [throughput(svc.url, n, args.runs) for n in (1, 2, 4)]
                print(f"   {name:<11} " + " ".join(f"{r:>9.1f}" for r in rates))

            print(
                "\n2. per-job tracking overhead (logreg/iris sweep, full logging: configs, "
                "figures, model)"
            )
            sq = servers["SQLite"]
            run_dir = home / "cli"
            run_dir.mkdir()
            local_db = f"sqlite:///{run_dir / 'mlflow.db'}"
            subprocess.run([sys.executable, "-c", "import sys; from runner.tracking.store import "
                            "ensure_store; ensure_store(sys.argv[1])", local_db],
                           check=True, cwd=ROOT)  # fmt: skip
            backends = {
                "none": ["backend=none"],
                "local": [f"backend.uri={local_db}"],
                "server": ["backend=server", f"backend.uri={sq.url}"],
            }
            # T(2n) - T(n): the per-job cost, without start-up (imports, store opening).
            n = args.jobs
            per_job: dict[str, float] = {}
            requests_per_job = 0.0
            for name, overrides in backends.items():
                before = len(sq.output)
                small = sweep_seconds(overrides, n, run_dir, env)
                mid = len(sq.output)
                big = sweep_seconds(overrides, 2 * n, run_dir, env)
                per_job[name] = (big - small) / n
                if name == "server":
                    reqs = lambda lines: sum(  # noqa: E731
                        1 for ln in lines if re.search(r'"(GET|POST|PUT|PATCH|DELETE) ', ln)
                    )
                    requests_per_job = (reqs(sq.output[mid:]) - reqs(sq.output[before:mid])) / n
                print(
                    f"   backend={name:<7} {n} jobs {small:6.1f} s, {2 * n} jobs {big:6.1f} s,"
                    f" {per_job[name] * 1000:6.0f} ms a job"
                )
            local = per_job["local"] - per_job["none"]
            server = per_job["server"] - per_job["none"]
            print(
                f"   tracking overhead a job: local {local * 1000:.0f} ms, server "
                f"{server * 1000:.0f} ms: server/local = {server / local:.2f}x (target <= 3x)"
            )
            print(f"   HTTP requests a job through the server: {requests_per_job:.0f}")
        finally:
            for svc in servers.values():
                svc.stop()
            pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
