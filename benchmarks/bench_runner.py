"""Runner overhead, measured side by side against hand-written equivalents.

    python benchmarks/bench_runner.py [--repeats 3]

1. start-up, tracking off: `python -m runner model=logreg backend=none` against a bare
   script that loads iris and fits the same model (target ratio <= 1.3);
2. start-up, tracking on: `python -m runner model=logreg` (local SQLite) against a bare
   script logging the same params, metrics, figures, files and model with MLflow directly
   (target <= 1.3);
3. sweep: a 20-job logreg grid on iris, tracked, against a plain loop with the same fits and
   the same nested-run logging (target <= 1.15);
4. step metrics: 500 epochs x 4 metrics through the runner's JobRun against one
   `log_batch` of the same points (target <= 1.2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compare, fresh_store, python, timed_subprocess

FIT = """
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
X, y = load_iris(return_X_y=True)
Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
def fit(C=1.0):
    m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000, random_state=0))
    m.fit(Xtr, ytr)
    metrics = {}
    for p, (A, b) in {"train": (Xtr, ytr), "val": (Xva, yva)}.items():
        pr = m.predict(A); pp = m.predict_proba(A)
        metrics.update({f"{p}_accuracy": accuracy_score(b, pr),
                        f"{p}_f1": f1_score(b, pr, average="macro"),
                        f"{p}_log_loss": log_loss(b, pp),
                        f"{p}_roc_auc": roc_auc_score(b, pp, multi_class="ovr")})
    return m, metrics
"""

LOG = """
import json, mlflow, numpy as np, yaml
from runner import figures
from mlflow.tracking import MlflowClient
from mlflow.entities import Param, Metric
client = MlflowClient(URI)
mlflow.set_tracking_uri(URI)
exp = client.get_experiment_by_name("iris")
exp_id = exp.experiment_id if exp else client.create_experiment("iris")
def log_job(m, metrics, params, parent=None):
    tags = {"mlflow.parentRunId": parent} if parent else {}
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    for name in ("config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"):
        client.log_text(rid, yaml.safe_dump(params), name)
    # The same figure code as the runner's: the benchmark measures orchestration, not plots.
    client.log_figure(rid, figures.confusion_matrix_figure(yva, m.predict(Xva), ["a", "b", "c"]),
                      "figures/confusion_matrix.png")
    imp = dict(zip("abcd", np.abs(m[-1].coef_).mean(0).tolist()))
    client.log_dict(rid, imp, "feature_importances.json")
    client.log_figure(rid, figures.importance_figure(imp), "figures/feature_importances.png")
    with mlflow.start_run(run_id=rid):
        mlflow.sklearn.log_model(m, name="model", input_example=Xva[:5], serialization_format="cloudpickle",
                                 pip_requirements=mlflow.sklearn.get_default_pip_requirements())
    client.set_terminated(rid)
    return rid
PARAMS = {f"param_{i}": i for i in range(22)}
"""


def startup_untracked(repeats: int) -> float:
    return compare(
        "start-up, tracking off (backend=none)",
        lambda d: timed_subprocess(
            [sys.executable, "-m", "runner", "model=logreg", "backend=none"], cwd=d
        ),
        lambda d: timed_subprocess(python(FIT + "fit()"), cwd=d),
        repeats=repeats,
        target=1.3,
    )


def startup_tracked(repeats: int) -> float:
    def ours(d: Path) -> float:
        uri = fresh_store(d)
        return timed_subprocess(
            [sys.executable, "-m", "runner", "model=logreg"],
            cwd=d,
            env={"MLFLOW_TRACKING_URI": uri},
        )

    def base(d: Path) -> float:
        uri = fresh_store(d)
        return timed_subprocess(
            python(f"URI={uri!r}\n" + FIT + LOG + "m, met = fit(); log_job(m, met, PARAMS)"), cwd=d
        )

    return compare("start-up, tracking on (local SQLite)", ours, base, repeats=repeats, target=1.3)


def sweep(repeats: int) -> float:
    grid = [f"{c:.3f}" for c in [0.05 * (i + 1) for i in range(20)]]

    def ours(d: Path) -> float:
        uri = fresh_store(d)
        return timed_subprocess(
            [sys.executable, "-m", "runner", "model=logreg", "-m", "model.C=" + ",".join(grid)],
            cwd=d,
            env={"MLFLOW_TRACKING_URI": uri},
        )

    def base(d: Path) -> float:
        uri = fresh_store(d)
        loop = (
            "parent = client.create_run(exp_id).info.run_id\n"
            f"for c in {grid!r}:\n"
            "    m, met = fit(float(c)); log_job(m, met, {**PARAMS, 'model.C': c}, parent)\n"
            "client.set_terminated(parent)\n"
        )
        return timed_subprocess(python(f"URI={uri!r}\n" + FIT + LOG + loop), cwd=d)

    return compare("20-job grid sweep, tracked", ours, base, repeats=repeats, target=1.15)


def step_metrics(repeats: int) -> float:
    def ours(d: Path) -> float:
        uri = fresh_store(d)
        code = (
            "import time\n"
            "from runner.tracking.store import Store\n"
            "from runner.tracking.job import JobRun\n"
            f"s = Store({uri!r}); e = s.experiment_id('bench'); rid = s.create_run(e, name='b', tags={{}})\n"
            "job = JobRun(s, rid)\n"
            "t = time.perf_counter()\n"
            "for epoch in range(500):\n"
            "    job.log_metrics({'train_loss': 1.0 / (epoch + 1), 'val_loss': 2.0, 'val_acc': 0.5,"
            " 'epoch_time_s': 0.01}, step=epoch)\n"
            "job.flush()\n"
            "print(time.perf_counter() - t)\n"
        )
        return _inner_time(code, d)

    def base(d: Path) -> float:
        uri = fresh_store(d)
        code = (
            "import time\n"
            "from mlflow.tracking import MlflowClient\n"
            "from mlflow.entities import Metric\n"
            f"c = MlflowClient({uri!r}); e = c.create_experiment('bench'); rid = c.create_run(e).info.run_id\n"
            "t = time.perf_counter()\n"
            "ts = int(time.time() * 1000)\n"
            "pts = [Metric(k, v, ts, epoch) for epoch in range(500) for k, v in"
            " {'train_loss': 1.0 / (epoch + 1), 'val_loss': 2.0, 'val_acc': 0.5, 'epoch_time_s': 0.01}.items()]\n"
            "c.log_batch(rid, metrics=pts)\n"
            "print(time.perf_counter() - t)\n"
        )
        return _inner_time(code, d)

    return compare("step metrics, 500 epochs x 4", ours, base, repeats=repeats, target=1.2)


def _inner_time(code: str, cwd: Path) -> float:
    import subprocess

    out = subprocess.run(python(code), cwd=cwd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["untracked", "tracked", "sweep", "steps"])
    args = parser.parse_args()
    start = time.perf_counter()
    benches = {
        "untracked": startup_untracked,
        "tracked": startup_tracked,
        "sweep": sweep,
        "steps": step_metrics,
    }
    for name, fn in benches.items():
        if args.only in (None, name):
            fn(args.repeats)
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
