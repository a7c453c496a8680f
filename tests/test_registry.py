"""The model registry: ``--register-best`` on ``runner.compare`` and ``runner.lifecycle
tag-best``, and ``runner.tracking.registry.register_best``, on runs made by the real runner.

One store per module (a 2-job logreg grid logging its models, plus one job without a model);
each test registers into its own copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner import compare, lifecycle
from runner.tracking.registry import RegistryError, register_best
from tests.backends.conftest import sqlite_server  # noqa: F401  (the server fixture)
from tests.conftest import run_cli
from tests.services import Service

FAST = ("tracking.log_figures=false", "tracking.log_importances=false")


@dataclass
class Built:
    root: Path
    best: str  # the best run of the grid by val_accuracy
    other: str  # the other run of the grid
    no_model: str  # a run with tracking.log_model=false
    grid: str  # the grid's parent run


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, _template_db: Path) -> Built:
    from runner.tracking.best import rank

    root = tmp_path_factory.mktemp("registry")
    shutil.copy(_template_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    run_cli("-m", "model.C=0.01,1.0", *FAST, cwd=root, env=env)
    run_cli("experiment_name=nomodel", "tracking.log_model=false", *FAST, cwd=root, env=env)
    client = _client(uri)
    exp = client.get_experiment_by_name("iris").experiment_id
    runs = client.search_runs([exp], "tags.`runner.kind` = 'job'")
    assert len(runs) == 2
    ranked = rank(runs, metric="val_accuracy", direction="maximize")
    (parent,) = client.search_runs([exp], "tags.`runner.kind` = 'sweep'")
    nomodel = client.get_experiment_by_name("nomodel").experiment_id
    (bare,) = client.search_runs([nomodel])
    return Built(
        root=root,
        best=ranked[0].info.run_id,
        other=ranked[1].info.run_id,
        no_model=bare.info.run_id,
        grid=parent.info.run_id,
    )


@pytest.fixture
def store(built: Built, workdir: Path) -> Iterator[str]:
    """This test's copy of the built store (database and artifacts), as a URI."""
    copy = workdir / "store"
    shutil.copytree(built.root, copy)
    # The experiments' artifact locations point at the original's mlartifacts: a copy of
    # the database still finds the logged models there, which registration only reads.
    yield f"sqlite:///{copy / 'mlflow.db'}"


def _versions(client: Any, name: str) -> list[Any]:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def test_compare_registers_the_best_run_once(
    built: Built, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--experiment", "iris", "--register-best", "iris-clf", "--tracking-uri", store]
    assert compare.main(argv) == 0
    err = capsys.readouterr().err
    assert "as iris-clf version 1" in err, err
    client = _client(store)
    (v1,) = _versions(client, "iris-clf")
    assert v1.run_id == built.best
    assert str(client.get_model_version_by_alias("iris-clf", "champion").version) == "1"
    # The version is the run's LoggedModel: it loads by its alias.
    import mlflow

    mlflow.set_tracking_uri(store)
    (model,) = client.search_logged_models(
        experiment_ids=[client.get_run(built.best).info.experiment_id],
        filter_string=f"source_run_id = '{built.best}'",
    )
    assert v1.source == f"models:/{model.model_id}"
    loaded = mlflow.sklearn.load_model("models:/iris-clf@champion")
    assert hasattr(loaded, "predict")

    # Idempotent: the best did not change, so no second version.
    assert compare.main(argv) == 0
    err = capsys.readouterr().err
    assert "nothing registered" in err, err
    assert len(_versions(client, "iris-clf")) == 1


def test_alias_moves_to_a_new_best_and_is_configurable(built: Built, store: str) -> None:
    client = _client(store)
    first = register_best(client, built.other, "iris-clf", alias="prod")
    assert (first.version, first.created, first.alias) == ("1", True, "prod")
    again = register_best(client, built.other, "iris-clf", alias="prod")
    assert (again.version, again.created) == ("1", False)
    moved = register_best(client, built.best, "iris-clf", alias="prod")
    assert (moved.version, moved.created, moved.run_id) == ("2", True, built.best)
    assert client.get_model_version_by_alias("iris-clf", "prod").run_id == built.best
    assert [v.run_id for v in _versions(client, "iris-clf")] == [built.other, built.best]


@pytest.mark.parametrize(
    ("name", "alias", "said"),
    [
        ("team/clf", "champion", ["'team/clf'", "cannot contain '/' or ':'"]),
        ("clf", "no spaces", ["'no spaces'", "alphanumerics"]),
        ("clf", "latest", ["'latest'", "reserved"]),
    ],
)
def test_names_mlflow_refuses_are_clear_errors(
    built: Built, store: str, name: str, alias: str, said: list[str]
) -> None:
    client = _client(store)
    with pytest.raises(RegistryError) as e:
        register_best(client, built.best, name, alias=alias)
    for part in said:
        assert part in str(e.value), str(e.value)
    assert client.search_registered_models() == []  # refused before any write


def test_run_without_a_model_says_how_to_log_one(built: Built, store: str) -> None:
    client = _client(store)
    with pytest.raises(RegistryError, match=r"tracking\.log_model=true"):
        register_best(client, built.no_model, "clf")
    with pytest.raises(RegistryError, match="is not in this tracking store"):
        register_best(client, "0" * 32, "clf")
    assert client.search_registered_models() == []


def test_compare_register_best_error_exits_2(
    built: Built, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = compare.main(
        ["--experiment", "nomodel", "--register-best", "clf", "--tracking-uri", store]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "tracking.log_model=true" in err


def test_lifecycle_tag_best_registers_too(
    built: Built, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "tag-best", "--experiment", "iris", "--metric", "val_accuracy", "--sweep", built.grid,
        "--register-best", "iris-clf", "--alias", "staging", "--tracking-uri", store,
    ]  # fmt: skip
    assert lifecycle.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"register run {built.best}'s model as iris-clf, alias 'staging'" in out, out
    client = _client(store)
    assert client.search_registered_models() == []
    assert lifecycle.main(argv) == 0
    out = capsys.readouterr().out
    assert "as iris-clf version 1" in out, out
    assert client.get_model_version_by_alias("iris-clf", "staging").run_id == built.best
    assert client.get_run(built.best).data.tags["runner.best"] == "true"
    # Again: nothing to tag, nothing to register.
    assert lifecycle.main(argv) == 0
    out = capsys.readouterr().out
    assert "iris-clf@staging already is version 1" in out, out
    assert len(_versions(client, "iris-clf")) == 1


def test_register_best_through_a_tracking_server(
    workdir: Path,
    sqlite_server: Service,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = sqlite_server.url
    run_cli(
        "-m", "backend=server", f"backend.uri={url}", "experiment_name=registry_server",
        "model.C=0.01,1.0", *FAST,
    )  # fmt: skip
    argv = ["--experiment", "registry_server", "--register-best", "served-clf"]
    assert compare.main([*argv, "--tracking-uri", url]) == 0
    client = _client(url)
    (v1,) = _versions(client, "served-clf")
    best = client.get_model_version_by_alias("served-clf", "champion")
    assert str(best.version) == str(v1.version) == "1"
    assert client.get_run(best.run_id).data.tags["runner.kind"] == "job"
    assert compare.main([*argv, "--tracking-uri", url]) == 0
    assert "nothing registered" in capsys.readouterr().err
    assert len(_versions(client, "served-clf")) == 1
