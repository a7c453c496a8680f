"""MLflow's own features on runs of the real runner: system metrics, dataset inputs
(``mlflow.log_input``, read back by replay) and autolog for xgboost.

One store per module, its jobs run once through the CLI: logreg on iris with system
metrics on, xgboost with autolog on, logreg on a CSV file with the default settings (system
metrics off). Each job serves every test that needs what it has: a job that only repeated
another's settings cost 3-4 s of this module's set-up.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner.replay.checks import input_digests, logged_digest
from tests.conftest import run_cli

FAST = ("tracking.log_figures=false", "tracking.log_importances=false")


@dataclass
class Built:
    uri: str
    root: Path
    runs: dict[str, Any]  # name in these tests -> mlflow Run


def _only_run(client: Any, experiment: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> Built:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("features")
    shutil.copy(_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    rows = [f"{(i * 37 % 100) / 100},{(i * 53 % 100) / 100},{i % 2}" for i in range(60)]
    (root / "table.csv").write_text("a,b,label\n" + "\n".join(rows) + "\n")
    jobs = {
        # A 0.1 s interval: the job (fit, model logging) lasts well over one sample.
        "sysmetrics": ("tracking.system_metrics=true", "tracking.system_metrics_interval=0.1"),
        "xgb": ("model=xgb", "model.n_estimators=3", "tracking.autolog=true"),
        "csv": ("dataset=csv", "dataset.path=table.csv", "dataset.target=label"),
    }
    for name, args in jobs.items():
        run_cli(f"experiment_name={name}", *args, *FAST, cwd=root, env=env)
    client = MlflowClient(uri)
    return Built(uri, root, {name: _only_run(client, name) for name in jobs})


# -- system metrics -------------------------------------------------------------------------
def test_system_metrics_on_logs_mlflows_system_metrics(built: Built) -> None:
    metrics = built.runs["sysmetrics"].data.metrics
    system = {k for k in metrics if k.startswith("system/")}
    for key in (
        "system/cpu_utilization_percentage",
        "system/system_memory_usage_megabytes",
        "system/disk_usage_percentage",
        "system/network_receive_megabytes",
    ):
        assert key in system, sorted(system)
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 * 64
    params = built.runs["sysmetrics"].data.params
    assert params["tracking.system_metrics"] == "True"
    assert params["tracking.system_metrics_interval"] == "0.1"


def test_system_metrics_are_off_by_default(built: Built) -> None:
    run = built.runs["csv"]  # no tracking.* override
    assert not [k for k in run.data.metrics if k.startswith("system/")]
    assert run.data.params["tracking.system_metrics"] == "False"


def test_a_bad_interval_is_a_clear_error(workdir: Path, tracking_uri: str) -> None:
    proc = run_cli(
        "tracking.system_metrics=true", "tracking.system_metrics_interval=0", *FAST, check=False
    )
    assert proc.returncode != 0
    assert "tracking.system_metrics_interval is 0" in proc.stdout + proc.stderr


# -- dataset inputs -------------------------------------------------------------------------
def _inputs(run: Any) -> dict[str, Any]:
    out = {}
    for item in run.inputs.dataset_inputs:
        (context,) = [t.value for t in item.tags if t.key == "mlflow.data.context"]
        out[context] = item.dataset
    return out


def test_each_job_logs_its_training_and_validation_data(built: Built) -> None:
    run = built.runs["sysmetrics"]  # logreg on iris
    inputs = _inputs(run)
    assert set(inputs) == {"training", "validation"}
    digest = run.data.tags["runner.dataset_digest"]
    rows = {}
    for context, ds in inputs.items():
        assert ds.name == "iris"
        assert ds.source_type == "code"
        assert json.loads(ds.source) == {"tags": {"loader": "sklearn.datasets.load_iris"}}
        profile = json.loads(ds.profile)
        assert profile["runner_dataset_digest"] == digest
        assert profile["num_features"] == 4
        rows[context] = profile["num_rows"]
        cols = json.loads(ds.schema)["mlflow_colspec"]
        assert [c["name"] for c in cols] == [
            "sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)",
            "target",
        ]  # fmt: skip
        assert [c["type"] for c in cols] == ["double"] * 4 + ["long"]
    assert rows == {"training": 112, "validation": 38}  # iris, test_size=0.25
    # Two datasets, so MLflow keeps both inputs: their digests are their own content's.
    assert inputs["training"].digest != inputs["validation"].digest
    assert len(inputs["training"].digest) <= 36


def test_searches_by_dataset_find_the_runs(built: Built) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(built.uri)
    exps = [client.get_experiment_by_name(n).experiment_id for n in built.runs]
    found = client.search_runs(exps, "dataset.name = 'iris' AND dataset.context = 'validation'")
    assert {r.info.run_id for r in found} == {
        built.runs[n].info.run_id for n in ("sysmetrics", "xgb")
    }
    training = _inputs(built.runs["csv"])["training"].digest
    (hit,) = client.search_runs(exps, f"dataset.digest = '{training}'")
    assert hit.info.run_id == built.runs["csv"].info.run_id


def test_a_file_dataset_names_the_file(built: Built) -> None:
    run = built.runs["csv"]
    inputs = _inputs(run)
    ds = inputs["training"]
    assert (ds.name, ds.source_type) == ("csv", "local")
    assert json.loads(ds.source) == {"uri": (built.root / "table.csv").resolve().as_uri()}
    cols = json.loads(ds.schema)["mlflow_colspec"]
    assert [c["name"] for c in cols] == ["a", "b", "label"]
    assert json.loads(inputs["validation"].profile)["num_rows"] == 15


def test_replay_reads_the_same_digest_from_the_inputs_and_the_tag(
    built: Built, workdir: Path
) -> None:
    from mlflow.tracking import MlflowClient

    for run in built.runs.values():
        tag = run.data.tags["runner.dataset_digest"]
        assert input_digests(run) == {"training": tag, "validation": tag}
        assert logged_digest(run) == tag
    # A run that lost its tag: replay takes the digest from the inputs, and still replays
    # the same data (without it, the replay is refused: "none recorded").
    copy = workdir / "store"
    shutil.copytree(built.root, copy)
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    client = MlflowClient(uri)
    source = built.runs["csv"].info.run_id
    tag = built.runs["csv"].data.tags["runner.dataset_digest"]
    client.delete_tag(source, "runner.dataset_digest")
    bare = client.get_run(source)
    assert "runner.dataset_digest" not in bare.data.tags
    assert logged_digest(bare) == tag
    # From the copy, where the job's table.csv is (the job's dataset.path is relative).
    proc = run_cli(
        source, "--check", "--tracking-uri", uri, module="runner.replay", cwd=copy, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check passed" in proc.stdout


def test_replay_check_of_a_run_with_system_metrics_passes(built: Built, workdir: Path) -> None:
    # CPU and memory samples measure the machine: they differ run to run, as *_time_s do.
    copy = workdir / "store"
    shutil.copytree(built.root, copy)
    source = built.runs["sysmetrics"].info.run_id
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    proc = run_cli(
        source, "--check", "--tracking-uri", uri, module="runner.replay", cwd=copy, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "check passed" in out and "system/* left out" in out, out
    assert "system/cpu_utilization_percentage" not in proc.stdout, out


# -- autolog --------------------------------------------------------------------------------
def test_autolog_covers_xgboost_and_keeps_both_objectives(built: Built) -> None:
    run = built.runs["xgb"]
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert params["objective"] == "val_accuracy"  # the runner's
    assert params["xgboost.objective"] == "multi:softprob"  # xgboost's, via autolog
    assert params["xgboost.num_boost_round"] == "3"
    assert params["xgboost.max_depth"] == params["model.max_depth"] == "6"
    assert "validation_0-mlogloss" in metrics  # autolog's per-round metric
    assert "val_accuracy" in metrics and "boost_val_mlogloss" in metrics  # the runner's
    from mlflow.tracking import MlflowClient

    paths = {a.path for a in MlflowClient(built.uri).list_artifacts(run.info.run_id)}
    assert "feature_importance_weight.json" in paths


def test_autolog_patch_is_undone_after_the_fit() -> None:
    from mlflow.utils.autologging_utils.client import MlflowAutologgingQueueingClient as Q

    from runner.tracking.job import _prefixed_autolog_params

    original = Q.log_params
    with _prefixed_autolog_params("xgboost."):
        assert Q.log_params is not original
    assert Q.log_params is original
