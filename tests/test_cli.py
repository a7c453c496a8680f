"""The real CLI in subprocesses: runs, sweeps, statuses, redaction, provenance, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from runner.data import Dataset, load_builtin
from tests.conftest import ROOT, run_cli
from tests.helpers import runs_of

SECRETS = ("hunter2", "s3cr3t-token")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tracked grid sweep launched from a dirty git checkout, with two secrets."""
    launch = tmp_path_factory.mktemp("sweep")
    _git(launch, "init", "-q")
    (launch / "notes.txt").write_text("v1\n")
    _git(launch, "add", "notes.txt")
    _git(launch, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    (launch / "notes.txt").write_text("v2\n")  # a dirty tree
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["RUNNER_TEST_TOKEN"] = SECRETS[1]
    # `-m` after an override: stock Hydra rejects this; the runner accepts it anywhere.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "model=xgb",
            "-m",
            "lr=0.01,0.1",
            "model.n_estimators=5",
            f"+db.password={SECRETS[0]}",
            "+db.token=${oc.env:RUNNER_TEST_TOKEN}",
        ],
        cwd=launch,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Callback MLflowCallback" not in proc.stderr
    client = MlflowClient(f"sqlite:///{launch / 'mlflow.db'}")
    return launch, client, runs_of(client, "iris")


def test_sweep_has_one_parent_and_nested_children(sweep) -> None:  # type: ignore[no-untyped-def]
    _, _, runs = sweep
    parents = [r for r in runs if r.data.tags.get("runner.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("runner.kind") == "job"]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["lr"] for r in children) == ["0.01", "0.1"]
    for r in children:
        p = r.data.params
        assert p["model.learning_rate"] == p["lr"]
        assert (p["model"], p["dataset"]) == ("xgb", "iris")
        assert p["model._target_"] == "xgboost.XGBClassifier"
        assert not any(k.startswith("backend") for k in p)
        assert r.data.tags["runner.backend"] == "local"
        assert "val_accuracy" in r.data.metrics and "fit_time_s" in r.data.metrics


def test_secrets_are_redacted_everywhere(sweep) -> None:  # type: ignore[no-untyped-def]
    launch, _client, runs = sweep
    for r in runs:
        text = str(r.data.params) + str(r.data.tags)
        assert not any(s in text for s in SECRETS)
    child = next(r for r in runs if r.data.tags.get("runner.kind") == "job")
    assert child.data.params["db.password"] == "***"
    assert child.data.params["db.token"] == "${oc.env:RUNNER_TEST_TOKEN}"
    # Every file the runner or Hydra left on disk, the store and the artifacts included.
    for path in launch.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in SECRETS), path


def test_artifacts_and_provenance(sweep) -> None:  # type: ignore[no-untyped-def]
    launch, client, runs = sweep
    child = next(r for r in runs if r.data.tags.get("runner.kind") == "job")
    rid = child.info.run_id
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", ".hydra", "figures", "provenance", "feature_importances.json"} <= top
    hydra_files = {a.path for a in client.list_artifacts(rid, ".hydra")}
    assert hydra_files == {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}
    assert "figures/confusion_matrix.png" in {a.path for a in client.list_artifacts(rid, "figures")}
    tags = child.data.tags
    assert tags["runner.git.commit"] == _git(launch, "rev-parse", "HEAD")
    assert tags["runner.git.dirty"] == "true"
    assert "+v2" in Path(client.download_artifacts(rid, "provenance/git_diff.patch")).read_text()
    assert tags["runner.pkg.mlflow"] and tags["runner.pkg.xgboost"] and tags["runner.python"]
    assert tags["runner.seed"] == "0" and tags["runner.dataset_digest"].startswith("sha256:")
    assert len(client.get_metric_history(rid, "boost_val_mlogloss")) == 5
    # The default store is mlflow.db in the launch dir; artifacts beside it, not in ./mlruns.
    assert (launch / "mlartifacts").is_dir() and not (launch / "mlruns").exists()


def test_logged_xgboost_model_loads_with_pyfunc(sweep) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    _launch, client, runs = sweep
    child = next(r for r in runs if r.data.tags.get("runner.kind") == "job")
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{child.info.run_id}/model")
    assert model.metadata.signature is not None
    pred = model.predict(load_builtin(name="iris", task="classification").X_val[:4])
    assert len(pred) == 4


def test_mlp_regression_logs_epochs_and_a_torch_model(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    run_cli("model=mlp", "dataset=diabetes", "model.epochs=4")
    (run,) = runs_of(client, "diabetes")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [
        0,
        1,
        2,
        3,
    ]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 4
    assert {"val_rmse", "val_mae", "val_r2"} <= set(run.data.metrics)
    figs = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/residuals.png" in figs
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    x = load_builtin(name="diabetes", task="regression").X_val[:3].astype(np.float32)
    assert np.asarray(model.predict(x)).shape[0] == 3


def test_failed_job_does_not_stop_the_grid(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    proc = run_cli("-m", "dataset=csv,iris", "tracking.log_model=false", check=False)
    assert proc.returncode == 1
    assert "required config values are missing: dataset.path" in proc.stderr
    assert "Traceback" not in proc.stderr
    failed = runs_of(client, "csv")
    ok = runs_of(client, "iris")
    statuses = {r.data.tags["runner.kind"] + ":" + r.info.status for r in failed + ok}
    # Each experiment has its own parent; the iris job still ran after the csv job failed.
    assert statuses == {"sweep:FAILED", "job:FAILED", "job:FINISHED"}
    job = next(r for r in failed if r.data.tags["runner.kind"] == "job")
    assert job.data.tags["runner.error"].startswith("ConfigError: required config values")


def test_a_grid_run_again_in_its_sweep_dir_has_its_own_parent(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    # A fixed hydra.sweep.dir (or the default one, started within the same second): the
    # second sweep's jobs nested under the first's ended parent, which stayed as it was.
    grid = ("-m", "model.C=0.1,1.0", "hydra.sweep.dir=sweeps/c", "tracking.log_model=false")
    run_cli(*grid)
    (first,) = [r for r in runs_of(client, "iris") if r.data.tags["runner.kind"] == "sweep"]
    run_cli(*grid)
    runs = runs_of(client, "iris")
    parents = [r for r in runs if r.data.tags["runner.kind"] == "sweep"]
    assert len(parents) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    children: dict[str, list[str]] = {p.info.run_id: [] for p in parents}
    for r in runs:
        if r.data.tags["runner.kind"] == "job":
            children[r.data.tags["mlflow.parentRunId"]].append(r.data.params["model.C"])
    assert {k: sorted(v) for k, v in children.items()} == {
        p.info.run_id: ["0.1", "1.0"] for p in parents
    }
    assert first.info.run_id in children


def test_sigterm_ends_runs_killed(tracking_uri: str, client, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", "model=mlp", "model.epochs=100000", "seed=0,1"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the first job is training
        lines.append(line)
        if "fitting MLPClassifier" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    runs = runs_of(client, "iris")
    assert {r.info.status for r in runs} == {"KILLED"}
    assert {r.data.tags["runner.kind"] for r in runs} == {"sweep", "job"}


def test_bad_input_fails_fast_and_clearly(tracking_uri: str, client) -> None:  # type: ignore[no-untyped-def]
    cases = {
        ("model=nope",): "Available options in 'model'",
        ("seed=abc",): "Value 'abc' of type 'str' could not be converted to Integer",
        ("foo=1",): "Could not override 'foo'",
    }
    for args, message in cases.items():
        proc = run_cli(*args, check=False)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    start = time.monotonic()
    proc = run_cli(
        "backend.uri=http://127.0.0.1:9", "tracking.log_model=false", check=False, timeout=120
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "http://127.0.0.1:9 does not answer" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 60  # not minutes of retries (process start-up dominates this figure)
    exp = client.get_experiment_by_name("iris")
    assert exp is None or not client.search_runs([exp.experiment_id])


def test_hydra_flags_work(workdir: Path) -> None:
    assert "Powered by Hydra" in run_cli("--help").stdout
    out = run_cli("model=xgb", "--cfg", "job").stdout
    assert "learning_rate: ${lr}" in out and "hydra:" not in out
    assert "Defaults List" in run_cli("--info", "defaults").stdout
    assert "complete" in run_cli("-sc", "install=bash").stdout
    script = Path(sys.executable).parent / "runner"
    proc = subprocess.run(
        [str(script), "--cfg", "job"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "experiment_name: ${dataset.name}" in proc.stdout


def test_heavy_libraries_are_imported_only_when_chosen(tracking_uri: str) -> None:
    def imported(*args: str) -> set[str]:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "runner", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}

    untracked = imported("model=logreg", "backend=none")
    assert not {"torch", "xgboost", "mlflow"} & untracked
    tracked = imported("model=logreg", "tracking.log_model=true")
    assert "mlflow" in tracked and not {"torch", "xgboost"} & tracked


class MajorityClassifier:
    """A user's own model: predicts the most frequent class."""

    def __init__(self, *, bias: float = 0.0) -> None:
        self.bias = bias

    def get_params(self, deep: bool = True) -> dict[str, float]:
        return {"bias": self.bias}

    def fit(self, X: np.ndarray, y: np.ndarray) -> MajorityClassifier:
        values, counts = np.unique(y, return_counts=True)
        self.classes_ = values
        self.label_ = values[counts.argmax()]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.label_)


class ExecWaitClassifier(MajorityClassifier):
    """Fits inside an ``exec`` of a string, as a module import that builds a dataclass does."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> ExecWaitClassifier:
        print("fitting in exec", flush=True)
        exec("import time\nwhile True:\n    time.sleep(0.01)")
        return self


def load_tiny(*, name: str = "tiny", task: str = "classification", seed: int = 0) -> Dataset:
    """A user's own dataset loader."""
    data = load_builtin(name="iris", task=task, seed=seed)
    data.name = name
    return data


def test_user_model_and_dataset_from_config_dir(tracking_uri: str, client, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    conf = workdir / "myconf"
    (conf / "model").mkdir(parents=True)
    (conf / "dataset").mkdir()
    (conf / "model" / "majority.yaml").write_text(
        f"_target_: {__name__}.MajorityClassifier\nbias: 0.5\n"
    )
    (conf / "dataset" / "tiny.yaml").write_text(
        f"_target_: {__name__}.load_tiny\nname: tiny\ntask: classification\nseed: ${{seed}}\n"
    )
    run_cli(
        "--config-dir",
        str(conf),
        "model=majority",
        "dataset=tiny",
        env={"PYTHONPATH": str(ROOT)},
    )
    (run,) = runs_of(client, "tiny")
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "majority" and run.data.params["model.bias"] == "0.5"
    assert 0.2 < run.data.metrics["val_accuracy"] < 0.5


def test_sigterm_inside_exec_still_exits_130(tracking_uri: str, client, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    # CPython would end the process by SIGINT (-2) after a KeyboardInterrupt left an exec()
    # frame, even though the runner caught it and chose 130 (a CI failure, once).
    conf = workdir / "myconf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "wait.yaml").write_text(f"_target_: {__name__}.ExecWaitClassifier\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "--config-dir", str(conf), "model=wait"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "fitting in exec" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + rest
    (run,) = runs_of(client, "iris")
    assert run.info.status == "KILLED"
