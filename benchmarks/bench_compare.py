"""Benchmark: ``runner.compare``'s table against ``mlflow.search_runs`` over 5,000 runs.

    python benchmarks/bench_compare.py [--runs 5000] [--repeat 3] [--db /tmp/...db]

Builds (once, cached under /tmp) a SQLite store with one sweep parent and N child runs shaped
like the runner's (22 params, 10 metrics, 23 tags each), written with bulk SQL inserts into
MLflow's own schema (the store's API would take minutes). Then, in one process and after a
warm-up of each, times alternately:

- ``mlflow.search_runs(experiment_ids=[...])``: MLflow's own paged search into a DataFrame;
- ``runner.compare.main(["--experiment", ...])``: selection, ranking and the rich table
  rendered to a file (what a user waits for);

and prints the medians and their ratio (target: at most 1.3). It also times the command as
a user runs it (``python -m runner.compare``, a fresh process, imports included).

``--sweeps K`` (K > 1) spreads the runs over K sweep parents (Optuna-like: study name,
sampler) and also times ``--experiment ... --all-sweeps`` (the table of sweeps, one search
per sweep) against the experiment-wide command, side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

EXPERIMENT = "bench-compare"


def _build(db: Path, n: int, sweeps: int = 1) -> None:
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels import models as m
    from mlflow.tracking import MlflowClient

    tmp = db.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    uri = f"sqlite:///{tmp}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(db.parent / "art").as_uri())
    parents = []
    for k in range(sweeps):
        if k == 0:
            parent = client.create_run(
                exp_id, run_name="sweep bench", tags={"runner.kind": "sweep"}
            )
        else:
            parent = client.create_run(
                exp_id,
                run_name=f"bench-{k}",
                tags={"runner.kind": "sweep", "runner.sweeper": "optuna"},
            )
            client.log_param(parent.info.run_id, "study_name", f"bench-{k}")
            client.log_param(parent.info.run_id, "sampler", ("tpe", "random")[k % 2])
            client.log_param(parent.info.run_id, "pruner", "none")
        client.set_terminated(parent.info.run_id)
        parents.append(parent)
    rng = random.Random(0)
    now = int(time.time() * 1000) - n * 1000
    runs, params, metrics, tags = [], [], [], []
    for i in range(n):
        rid = uuid.uuid4().hex
        start = now + i * 1000
        failed = i % 50 == 49
        runs.append(
            {
                "run_uuid": rid,
                "name": f"logreg-iris-{i}",
                "source_type": "LOCAL",
                "source_name": "runner",
                "entry_point_name": "",
                "user_id": "bench",
                "status": "FAILED" if failed else "FINISHED",
                "start_time": start,
                "end_time": start + 900,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": f"{(db.parent / 'art').as_uri()}/{rid}/artifacts",
                "experiment_id": int(exp_id),
            }
        )
        c = 10 ** rng.uniform(-3, 3)
        lr = rng.choice(["0.001", "0.01", "0.1"])
        p = {
            "dataset": "iris",
            "dataset._target_": "runner.data.load_builtin",
            "dataset.name": "iris",
            "dataset.seed": "0",
            "dataset.task": "classification",
            "dataset.test_size": "0.25",
            "direction": "maximize",
            "experiment_name": EXPERIMENT,
            "lr": lr,
            "model": "logreg",
            "model.C": str(c),
            "model._target_": "models.linear.linear_model",
            "model.max_iter": "1000",
            "model.random_state": str(i % 3),
            "model.task": "classification",
            "objective": "val_accuracy",
            "seed": str(i % 3),
            "tracking.autolog": "False",
            "tracking.flush_every_s": "10.0",
            "tracking.log_figures": "True",
            "tracking.log_importances": "True",
            "tracking.log_model": "False",
        }
        params += [{"key": k, "value": v, "run_uuid": rid} for k, v in p.items()]
        t = {
            "mlflow.parentRunId": parents[i % sweeps].info.run_id,
            "mlflow.runName": f"logreg-iris-{i}",
            "mlflow.source.name": "runner",
            "runner.backend": "local",
            "runner.dataset_digest": "sha256:" + "ab" * 32,
            "runner.job_num": str(i),
            "runner.kind": "job",
            "runner.output_dir": f"/tmp/multirun/2026-01-01/00-00-00/{i}",
            "runner.overrides": f'["model=logreg", "model.C={c}", "lr={lr}"]',
            "runner.python": "3.11.2",
            "runner.seed": str(i % 3),
            "runner.task": "classification",
            "runner.tracking_uri": f"sqlite:///{db}",
        }
        for dist in ("hydra-core", "mlflow", "numpy", "omegaconf", "optuna", "pandas", "torch"):
            t[f"runner.pkg.{dist}"] = "1.0.0"
        if failed:
            t["runner.error"] = "ValueError: diverged"
        tags += [{"key": k, "value": v, "run_uuid": rid} for k, v in t.items()]
        if failed:
            continue
        acc = min(1.0, 0.6 + 0.1 * (3 + min(2.0, abs(rng.gauss(0, 1)))) * 0.9)
        mvals = {
            "val_accuracy": acc,
            "val_f1": acc - 0.01,
            "val_log_loss": 1 - acc,
            "val_roc_auc": min(1.0, acc + 0.02),
            "train_accuracy": acc,
            "train_f1": acc,
            "train_log_loss": 1 - acc,
            "train_roc_auc": acc,
            "fit_time_s": rng.uniform(0.1, 1.0),
            "eval_time_s": rng.uniform(0.01, 0.2),
        }
        for k, v in mvals.items():
            row = {
                "key": k,
                "value": v,
                "timestamp": start + 800,
                "step": 0,
                "is_nan": False,
                "run_uuid": rid,
            }
            metrics.append(row)
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.insert(m.SqlRun.__table__), runs)
        conn.execute(sa.insert(m.SqlParam.__table__), params)
        conn.execute(sa.insert(m.SqlTag.__table__), tags)
        conn.execute(sa.insert(m.SqlMetric.__table__), metrics)
        conn.execute(sa.insert(m.SqlLatestMetric.__table__), metrics)
    engine.dispose()
    tmp.replace(db)


def _time(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    """Build the store if needed, time both sides, print the figures and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", type=Path, default=None)
    ap.add_argument("--sweeps", type=int, default=1, help="sweep parents the runs are spread over")
    ap.add_argument(
        "--all-rows", action="store_true", help="also time rendering every run (--limit 0)"
    )
    args = ap.parse_args()
    shape = f"{args.runs}" + (f"-{args.sweeps}sweeps" if args.sweeps > 1 else "")
    db = args.db or Path(f"/tmp/runner-bench-compare-{shape}/mlflow.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        t = time.perf_counter()
        _build(db, args.runs, max(1, args.sweeps))
        print(f"built {db} with {args.runs} runs in {time.perf_counter() - t:.1f} s")
    uri = f"sqlite:///{db}"

    import mlflow

    from runner import compare

    mlflow.set_tracking_uri(uri)
    exp_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    sink = io.StringIO()

    def ours(*extra: str) -> None:
        sink.seek(0)
        sink.truncate()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(io.StringIO()):
            rc = compare.main(["--experiment", EXPERIMENT, "--tracking-uri", uri, *extra])
        assert rc == 0, rc

    def theirs() -> None:
        df = mlflow.search_runs(experiment_ids=[exp_id])
        assert len(df) == args.runs + max(1, args.sweeps), len(df)

    def ours_all() -> None:
        ours("--limit", "0")

    ours()
    theirs()  # warm-up: imports, SQLAlchemy engine, caches
    assert "more (--limit 0" in sink.getvalue(), sink.getvalue()[-300:]
    t_ours, t_theirs, t_all = [], [], []
    for _ in range(args.repeat):
        t_theirs.append(_time(theirs))
        t_ours.append(_time(lambda: ours()))
    if args.all_rows:
        for _ in range(args.repeat):
            t_all.append(_time(ours_all))
        rows = sink.getvalue().count("logreg-iris-")
        assert rows == args.runs, rows
    t_sweeps: list[float] = []
    if args.sweeps > 1:
        ours("--all-sweeps")  # warm-up
        assert f"{args.sweeps} sweeps, by best" in sink.getvalue(), sink.getvalue()[:300]
        for _ in range(args.repeat):
            t_sweeps.append(_time(lambda: ours("--all-sweeps")))
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)

    def line(label: str, ts: list[float]) -> str:
        return (
            f"{label:<44} median {statistics.median(ts):6.2f} s  {sorted(round(x, 2) for x in ts)}"
        )

    print(f"runs: {args.runs} (store {uri})")
    print(line("mlflow.search_runs (DataFrame)", t_theirs))
    print(line("runner.compare (ranked, top 50 rows shown)", t_ours))
    print(f"ratio compare / search_runs: {mo / mt:.2f}  (target <= 1.3)")
    if t_sweeps:
        print(line(f"runner.compare --all-sweeps ({args.sweeps} sweeps)", t_sweeps))
        print(f"ratio --all-sweeps / experiment-wide: {statistics.median(t_sweeps) / mo:.2f}")
    if t_all:
        ma = statistics.median(t_all)
        print(line(f"runner.compare --limit 0 ({args.runs} rows)", t_all))
        print(f"ratio (all rows rendered) / search_runs: {ma / mt:.2f}")
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "runner.compare", "--experiment", EXPERIMENT, "--tracking-uri", uri],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    print(f"python -m runner.compare (fresh process, imports included): {wall:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
