"""Ray Tune beside the runner's Optuna sweep: the same 30-trial search, all in one run.

The search: logistic regression on iris, ``C`` log-uniform in [0.01, 10], maximize
val_accuracy, TPE (seed 0), 30 trials, every trial logged to MLflow.

- Ray Tune (the peer a user would pick to scale out): ``OptunaSearch`` and MLflow's
  ``MLflowLoggerCallback``, one trial at a time and two at once.
- The runner: ``python -m runner -m hydra/sweeper=optuna ...`` with ``n_jobs=1`` (inline),
  and with ``hydra.sweeper.n_workers=2`` through ``hydra/launcher=ray``.

Every side runs on one local Ray cluster that this script starts first (2 CPUs, as CI's
machine; its start-up is printed apart, and counted on neither side), against a fresh
SQLite MLflow store of its own. Printed: the wall time of each command, the ratios, and
what each logged (Ray Tune: one flat run per trial, no parent; the runner: one parent with
a nested child per trial).

Needs Ray Tune (``pip install -e '.[ray]'``: ``ray[tune]==2.60.0``). Not part of the tests.

    python benchmarks/bench_raytune.py [--trials 30] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import fresh_store, timed_subprocess

from tests.services import free_port

#: The Ray Tune side, run as its own driver (``python -c``): argv = address, uri, k, trials.
TUNE = textwrap.dedent(
    """
    import sys
    import optuna
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    address, uri, k, trials, storage = sys.argv[1:6]
    k, trials = int(k), int(trials)


    def trainable(config):
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        X, y = load_iris(return_X_y=True)
        Xtr, Xva, ytr, yva = train_test_split(
            X, y, test_size=0.25, random_state=0, stratify=y
        )
        model = LogisticRegression(C=config["model.C"], max_iter=1000).fit(Xtr, ytr)
        tune.report({"val_accuracy": float(model.score(Xva, yva))})


    ray.init(address=address, log_to_driver=False)
    search = OptunaSearch(
        metric="val_accuracy", mode="max", sampler=optuna.samplers.TPESampler(seed=0)
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"model.C": tune.loguniform(0.01, 10.0)},
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(search, max_concurrent=k),
            num_samples=trials,
            max_concurrent_trials=k,
        ),
        run_config=tune.RunConfig(
            name="raytune",
            storage_path=storage,
            verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name="raytune")],
        ),
    )
    results = tuner.fit()
    assert len(results) == trials and not results.errors, results.errors
    print("best", results.get_best_result("val_accuracy", "max").metrics["val_accuracy"])
    """
)


def _logged(uri: str, experiment: str) -> str:
    """What a side logged: runs, parents, nested children, and their statuses."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return "nothing"
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    flat = len(runs) - len(children) - len(parents)
    statuses = sorted({r.info.status for r in runs})
    return (
        f"{len(runs)} runs: {len(parents)} parent(s), {len(children)} nested "
        f"child(ren), {flat} flat; statuses {statuses}"
    )


class Cluster:
    """A local Ray head node (its own temp dir and session), stopped at the end."""

    def __init__(self, cpus: int) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        # Token auth as in tests/launchers/conftest.py: a token left in ~/.ray by an earlier
        # cluster would otherwise be required by the head and unknown to the drivers.
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        ray_bin = Path(sys.executable).parent / "ray"
        self.log = self.temp / "ray-start.log"
        argv = [
            str(ray_bin), "start", "--head", "--block", f"--port={port}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--include-dashboard=false",
            "--object-store-memory=200000000", f"--temp-dir={self.temp}",
            "--disable-usage-stats",
        ]  # fmt: skip
        start = time.perf_counter()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, cwd=self.temp, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"Ray did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        self.start_s = time.perf_counter() - start

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    args = parser.parse_args(argv)
    n = args.trials

    cluster = Cluster(args.cpus)
    print(f"Ray cluster at {cluster.address}: started in {cluster.start_s:.1f} s", flush=True)
    walls: dict[str, float] = {}
    logged: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k in (1, 2):
                name = f"Ray Tune, {k} at once"
                d = Path(tmp, f"tune{k}")
                d.mkdir()
                uri = fresh_store(d)
                cmd = [sys.executable, "-c", TUNE, cluster.address, uri, str(k), str(n), str(d)]
                walls[name] = timed_subprocess(cmd, cwd=d, env=cluster.env, inherit=False)
                logged[name] = _logged(uri, "raytune")
                print(f"{name}: {walls[name]:.1f} s; {logged[name]}", flush=True)

            ours = [
                "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=tpe",
                "hydra.sweeper.sampler.seed=0", f"hydra.sweeper.n_trials={n}",
                "hydra.sweeper.progress=none", "hydra.sweeper.study_name=runner",
                "experiment_name=runner", "model=logreg", "dataset=iris",
                "tracking.log_figures=false", "model.C=tag(log, interval(0.01, 10.0))",
            ]  # fmt: skip
            sides = {
                "runner, n_jobs=1": [],
                "runner, n_workers=2 on Ray": [
                    "hydra/launcher=ray", f"hydra.launcher.address={cluster.address}",
                    "hydra.sweeper.n_workers=2",
                ],
            }  # fmt: skip
            for name, extra in sides.items():
                d = Path(tmp, name.replace(" ", "_").replace(",", "").replace("=", ""))
                d.mkdir()
                uri = fresh_store(d)
                cmd = [
                    sys.executable, "-m", "runner", *ours, *extra,
                    f"hydra.sweeper.storage=sqlite:///{d / 'optuna.db'}",
                ]  # fmt: skip
                env = {**cluster.env, "MLFLOW_TRACKING_URI": uri}
                walls[name] = timed_subprocess(cmd, cwd=d, env=env, inherit=False)
                logged[name] = _logged(uri, "runner")
                print(f"{name}: {walls[name]:.1f} s; {logged[name]}", flush=True)
    finally:
        cluster.stop()

    base = walls["runner, n_jobs=1"]
    print(f"\n{n} trials, wall time (ratio to the runner with n_jobs=1):")
    for name, wall in walls.items():
        print(f"  {name:28s} {wall:6.1f} s  x{wall / base:.2f}   {logged[name]}")
    tune1, tune2 = walls["Ray Tune, 1 at once"], walls["Ray Tune, 2 at once"]
    ray2 = walls["runner, n_workers=2 on Ray"]
    print(f"Ray Tune 1 at once / runner n_jobs=1: {tune1 / base:.2f}")
    print(f"Ray Tune 2 at once / runner n_workers=2 on Ray: {tune2 / ray2:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
