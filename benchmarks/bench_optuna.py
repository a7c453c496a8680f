"""Optuna sweeper benchmarks, both sides measured in one run; prints the ratios.

1. Overhead: a 30-trial TPE sweep of logreg on iris through ``python -m runner -m
   sweep=logreg_iris`` (nested MLflow runs, Optuna RDB storage) against a plain script
   that runs the same Optuna study (same sampler, seed, space, storage kind) with the same
   fits and the same MLflow nested-run logging (params, metrics, tags, model, importances,
   feature-importance file and figure, parent summary and plots). Target: tracked / plain
   <= 1.15.
2. Parallel trials: ``hydra.sweeper.n_jobs=2`` against ``n_jobs=1`` for CPU-bound trials of
   uneven length (random forests of 50-400 trees on digits, random sampler, same seed so
   both sides run the same trials). Target: throughput ratio >= 1.7. Throughput is shown
   over the whole command and over the trial window (first trial started to last trial
   finished, from Optuna's own timestamps: the fixed start-up of worker processes left out).

    python benchmarks/bench_optuna.py [--trials 30] [--parallel-trials 24] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fresh_store, timed_subprocess

PLAIN = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import optuna
    from mlflow.tracking import MlflowClient
    import mlflow, mlflow.sklearn
    from mlflow.entities import Metric, Param, RunTag
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
    from sklearn.model_selection import train_test_split

    n_trials, uri, storage = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("iris")
    from runner import figures
    iris = load_iris()
    X, y, feature_names = iris.data, iris.target, list(iris.feature_names)
    Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    study = optuna.create_study(
        study_name="plain", storage=storage, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    study.enqueue_trial({"model.C": 1.0})
    parent = client.create_run(exp, run_name="plain", tags={"runner.kind": "sweep"}).info.run_id
    client.log_batch(parent, params=[Param("study_name", "plain"), Param("sampler", "tpe")])
    dist = {"model.C": optuna.distributions.FloatDistribution(0.001, 100.0, log=True)}
    for _ in range(n_trials):
        trial = study.ask(dist)
        C = trial.params["model.C"]
        run = client.create_run(exp, run_name=f"logreg-iris-{trial.number}", tags={
            "mlflow.parentRunId": parent, "runner.kind": "job",
            "runner.trial_number": str(trial.number)}).info.run_id
        params = {"model.C": C, "model.max_iter": 1000, "model.task": "classification",
                  "model.random_state": 0, "seed": 0, "lr": 0.1, "dataset.name": "iris",
                  "dataset.test_size": 0.25, "objective": "val_accuracy",
                  "direction": "maximize", "experiment_name": "iris", "model": "logreg",
                  "dataset": "iris"}
        client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()])
        client.log_dict(run, params, "config.yaml")
        mlflow.start_run(run_id=run)
        t0 = time.perf_counter()
        model = LogisticRegression(C=C, max_iter=1000, random_state=0).fit(Xtr, ytr)
        fit = time.perf_counter() - t0
        m = {"fit_time_s": fit}
        for split, Xs, ys in (("train", Xtr, ytr), ("val", Xva, yva)):
            p, pp = model.predict(Xs), model.predict_proba(Xs)
            m[f"{split}_accuracy"] = accuracy_score(ys, p)
            m[f"{split}_f1"] = f1_score(ys, p, average="macro")
            m[f"{split}_log_loss"] = log_loss(ys, pp)
            m[f"{split}_roc_auc"] = roc_auc_score(ys, pp, multi_class="ovr")
        ts = int(time.time() * 1000)
        client.log_batch(run, metrics=[Metric(k, float(v), ts, 0) for k, v in m.items()])
        # The same importances file and figure the runner logs (runner.figures).
        values = figures.importances(model, feature_names)
        client.log_dict(run, values, "feature_importances.json")
        fig = figures.importance_figure(values)
        client.log_figure(run, fig, "figures/feature_importances.png")
        mlflow.sklearn.log_model(model, name="model", input_example=Xva[:5],
            serialization_format="cloudpickle",
            pip_requirements=mlflow.sklearn.get_default_pip_requirements())
        client.set_tag(run, "runner.trial_state", "COMPLETE")
        mlflow.end_run()
        study.tell(trial, m["val_accuracy"])
    best = study.best_trial
    client.log_batch(parent, metrics=[Metric("best_value", best.value, 0, 0)],
                     tags=[RunTag("runner.best_params", json.dumps(best.params))])
    from optuna import visualization as vis
    for name, plot in (("optimization_history", vis.plot_optimization_history),
                       ("param_importances", vis.plot_param_importances),
                       ("parallel_coordinate", vis.plot_parallel_coordinate)):
        client.log_text(parent, plot(study).to_html(include_plotlyjs="cdn"),
                        f"plots/{name}.html")
    client.set_terminated(parent, "FINISHED")
    """
)


def overhead(trials: int) -> tuple[float, float]:
    """Seconds for the tracked sweep and for the plain script."""
    with tempfile.TemporaryDirectory() as tmp:
        tracked, plain = Path(tmp, "tracked"), Path(tmp, "plain")
        tracked.mkdir()
        plain.mkdir()
        env = {"MLFLOW_TRACKING_URI": fresh_store(tracked)}
        t_tracked = timed_subprocess(
            [
                sys.executable,
                "-m",
                "runner",
                "-m",
                "sweep=logreg_iris",
                f"hydra.sweeper.n_trials={trials}",
                "hydra.sweeper.progress=none",
            ],
            cwd=tracked,
            env=env,
        )
        (plain / "plain.py").write_text(PLAIN)
        uri = fresh_store(plain)
        t_plain = timed_subprocess(
            [sys.executable, "plain.py", str(trials), uri, f"sqlite:///{plain / 'optuna.db'}"],
            cwd=plain,
            env={"MLFLOW_TRACKING_URI": uri},
        )
    return t_tracked, t_plain


def parallel(trials: int, n_jobs: int) -> tuple[float, float]:
    """(wall seconds, trial-window seconds) for ``trials`` uneven rf trials."""
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        wall = timed_subprocess(
            [
                sys.executable,
                "-m",
                "runner",
                "-m",
                "hydra/sweeper=optuna",
                "hydra/sweeper/sampler=random",
                "hydra.sweeper.sampler.seed=3",
                f"hydra.sweeper.n_trials={trials}",
                f"hydra.sweeper.n_jobs={n_jobs}",
                "hydra.sweeper.progress=none",
                "model=rf",
                "dataset=digits",
                "backend=none",
                "model.n_estimators=int(interval(50, 400))",
                "model.max_depth=range(8, 20)",
            ],
            cwd=Path(tmp),
        )
        (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp}/optuna.db")
        study = optuna.load_study(
            study_name=summary.study_name, storage=f"sqlite:///{tmp}/optuna.db"
        )
        start = min(t.datetime_start for t in study.trials)
        end = max(t.datetime_complete for t in study.trials)
        return wall, (end - start).total_seconds()


_SPIN = "sum(i * i for i in range(2 * 10**7))"
# The trials' own work without the runner: random forests on digits, one tree at a time.
_FORESTS = textwrap.dedent(
    """
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    X, y = load_digits(return_X_y=True)
    for n in (243, 152, 363, 94, 68, 60, 277, 287):
        RandomForestClassifier(n_estimators=n, max_depth=15, n_jobs=1, random_state=0).fit(X, y)
    """
)


def control(code: str = _SPIN) -> float:
    """Throughput ratio of two processes running ``code`` at once against one: the
    machine's own ceiling for ``n_jobs=2`` (2.0 for pure arithmetic on two idle cores; less
    for memory-heavy work such as tree building, or when others share the cores)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    one = time.perf_counter() - start
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    for proc in procs:
        proc.wait()
    two = time.perf_counter() - start
    return 2 * one / two


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks, alternating the two sides, and print the figures.

    The machine is shared and its speed drifts: each repeat runs both sides back to back,
    and the median of those paired ratios is reported (every sample is printed).
    """
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--parallel-trials", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-parallel", action="store_true")
    args = ap.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    if not args.skip_overhead:
        tracked, plain = [], []
        for _ in range(args.repeat):
            t, p = overhead(args.trials)
            tracked.append(t)
            plain.append(p)
            print(f"  overhead sample: tracked {t:.1f} s, plain {p:.1f} s", flush=True)
        ratio = statistics.median(t / p for t, p in zip(tracked, plain, strict=True))
        print(
            f"overhead ({args.trials} TPE trials, logreg/iris, {args.repeat} pairs): tracked "
            f"sweep {statistics.median(tracked):.1f} s, plain script "
            f"{statistics.median(plain):.1f} s (medians); ratio {ratio:.2f} (median of the "
            "paired ratios; target <= 1.15)",
            flush=True,
        )
    if not args.skip_parallel:
        one, two, ceiling, forests = [], [], [], []
        for _ in range(args.repeat):
            ceiling.append(control())
            forests.append(control(_FORESTS))
            one.append(parallel(args.parallel_trials, 1))
            two.append(parallel(args.parallel_trials, 2))
            print(
                f"  parallel sample: n_jobs=1 {one[-1][0]:.1f}/{one[-1][1]:.1f} s, n_jobs=2 "
                f"{two[-1][0]:.1f}/{two[-1][1]:.1f} s (wall/trials); two bare processes: "
                f"{ceiling[-1]:.2f}x one (arithmetic), {forests[-1]:.2f}x (the forests alone)",
                flush=True,
            )
        # Each sample runs both sides back to back: paired ratios, as in _common.compare.
        wall = statistics.median(a[0] / b[0] for a, b in zip(one, two, strict=True))
        window = statistics.median(a[1] / b[1] for a, b in zip(one, two, strict=True))
        print(
            f"parallel ({args.parallel_trials} uneven rf/digits trials, {args.repeat} pairs): "
            f"throughput ratio n_jobs=2 / n_jobs=1 {wall:.2f} wall, {window:.2f} trial "
            "window (medians of the paired ratios; target >= 1.7)"
        )
        print(
            f"machine ceiling for 2 processes (medians): {statistics.median(ceiling):.2f}x "
            f"for arithmetic (2.00 on two idle cores), {statistics.median(forests):.2f}x for "
            "the trials' forests without the runner"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
