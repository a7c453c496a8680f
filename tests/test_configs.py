"""Every option of every config group composes and instantiates."""

from __future__ import annotations

import importlib.resources

import pytest
from hydra.utils import instantiate

from tests.helpers import compose_cfg

CONF = importlib.resources.files("runner.conf")


def _options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_every_group_has_its_options() -> None:
    assert _options("model") == ["logreg", "mlp", "rf", "xgb"]
    assert set(_options("dataset")) >= {
        "iris",
        "wine",
        "digits",
        "breast_cancer",
        "diabetes",
        "synthetic",
        "csv",
    }
    assert set(_options("backend")) >= {"local", "none"}


@pytest.mark.parametrize("dataset", [d for d in _options("dataset") if d != "csv"])
def test_dataset_instantiates(dataset: str) -> None:
    cfg = compose_cfg([f"dataset={dataset}", "dataset.seed=1"])
    data = instantiate(cfg.dataset)
    assert data.task == cfg.dataset.task
    assert len(data.X_train) > len(data.X_val) > 0
    assert data.digest.startswith("sha256:")
    assert cfg.experiment_name == data.name


def test_csv_dataset_instantiates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "data.csv"
    path.write_text(
        "a,b,color,label\n"
        + "".join(
            f"{i},{i % 3},{'red' if i % 2 else 'blue'},{'yes' if i % 2 else 'no'}\n"
            for i in range(40)
        )
    )
    cfg = compose_cfg(["dataset=csv", f"dataset.path={path}", "dataset.target=label"])
    data = instantiate(cfg.dataset)
    assert data.target_names == ["no", "yes"]
    assert data.feature_names == ["a", "b", "color_blue", "color_red"]


@pytest.mark.parametrize("model", _options("model"))
@pytest.mark.parametrize("dataset", ["iris", "diabetes"])
def test_model_instantiates_for_each_task(model: str, dataset: str) -> None:
    cfg = compose_cfg([f"model={model}", f"dataset={dataset}"])
    est = instantiate(cfg.model, _convert_="all")
    task = cfg.dataset.task
    from sklearn.base import is_classifier, is_regressor

    assert is_classifier(est) if task == "classification" else is_regressor(est), est
    # sklearn and xgboost estimators are instantiated directly, not wrapped.
    if model in ("rf", "xgb", "logreg"):
        assert type(est).__module__.split(".")[0] in ("sklearn", "xgboost")


@pytest.mark.parametrize("backend", _options("backend"))
def test_backend_composes(backend: str) -> None:
    cfg = compose_cfg([f"backend={backend}"])
    assert cfg.backend.name == backend


def test_task_defaults_follow_the_dataset() -> None:
    cls = compose_cfg([])
    reg = compose_cfg(["dataset=diabetes"])
    assert (cls.objective, cls.direction) == ("val_accuracy", "maximize")
    assert (reg.objective, reg.direction) == ("val_rmse", "minimize")
    assert cls.experiment_name == "iris"


def test_lr_is_shared_by_models_with_a_learning_rate() -> None:
    assert compose_cfg(["model=xgb", "lr=0.05"]).model.learning_rate == 0.05
    assert compose_cfg(["model=mlp", "lr=0.05"]).model.lr == 0.05
