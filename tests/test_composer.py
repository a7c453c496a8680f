"""Job configs from :class:`runner.composer.JobComposer` equal Hydra's own composition.

Each case composes a sweep's master config as Hydra does for ``-m``, then the job config
twice: with Hydra's ``load_sweep_config`` and with the composer (templates); both must be
the same config, Hydra's bookkeeping (overrides, choices, override_dirname) included.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner.config import register
from runner.sweeps.composer import ComposingLoader, JobComposer


@pytest.fixture
def loader() -> Iterator[Any]:
    register()
    with initialize_config_module("runner.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def _master(loader: Any, overrides: list[str]) -> DictConfig:
    return loader.load_configuration("config", overrides, RunMode.MULTIRUN)


def _resolved(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _same(a: DictConfig, b: DictConfig) -> None:
    assert OmegaConf.to_container(a) == OmegaConf.to_container(b)
    # Resolved as the job sees it (the hydra node resolves only inside a running job).
    for key in a:
        if key != "hydra":
            assert _resolved(a[key]) == _resolved(b[key]), key
    assert OmegaConf.is_struct(a) == OmegaConf.is_struct(b)


CASES = [
    # (the sweep's command line, one job's overrides)
    (["model.C=0.1,0.2"], ["model.C=0.1"]),
    (["model=logreg", "model.C=0.1,0.2"], ["model=logreg", "model.C=0.2"]),
    # A plain value before a group choice: Hydra keeps the command-line order.
    (["model.C=0.3", "dataset=iris,wine"], ["model.C=0.3", "dataset=wine"]),
    (
        ["model=rf", "model.n_estimators=5,10", "seed=3"],
        ["model=rf", "model.n_estimators=10", "seed=3"],
    ),
    (["lr=0.01,0.1", "backend=none"], ["lr=0.01", "backend=none"]),
    (["+extra.knob=1,2"], ["+extra.knob=2"]),
    (["~model.max_iter", "lr=0.5,0.6"], ["~model.max_iter", "lr=0.6"]),
    (["+hydra.job.env_set.FOO=bar", "lr=0.5,0.6"], ["lr=0.6"]),
    (["++tracking={autolog: true}", "lr=0.5,0.6"], ["++tracking={autolog: true}", "lr=0.5"]),
    (["hydra.job.config.override_dirname.exclude_keys=[seed]", "seed=1,2"], ["seed=2"]),
]


@pytest.mark.parametrize(("command", "job"), CASES)
def test_same_config_as_hydra(loader: Any, command: list[str], job: list[str]) -> None:
    master = _master(loader, command)
    composer = JobComposer(loader, master)
    _same(composer.compose(job), loader.load_sweep_config(master, job))
    # Again from the template this time, on another job of the same sweep.
    _same(composer.compose(job), loader.load_sweep_config(master, job))


def test_jobs_get_their_own_copy(loader: Any) -> None:
    master = _master(loader, ["lr=0.1,0.2"])
    composer = JobComposer(loader, master)
    a, b = composer.compose(["lr=0.1"]), composer.compose(["lr=0.2"])
    assert (a.lr, b.lr) == (0.1, 0.2)
    assert a.hydra.overrides.task == ["lr=0.1"] and b.hydra.job.override_dirname == "lr=0.2"
    assert len(composer._templates) == 1


def test_groups_from_the_sweeps_own_search_path(tmp_path: Path) -> None:
    # A group that only a --config-dir (or hydra.searchpath) provides, added with +group=:
    # it must be composed as a group, not set as a string key.
    conf = tmp_path / "myconf"
    (conf / "extra").mkdir(parents=True)
    for name, value in (("a", 1), ("b", 2)):
        (conf / "extra" / f"{name}.yaml").write_text(f"# @package model\nknob: {value}\n")
    with initialize_config_module("runner.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", [f"hydra.searchpath=[file://{conf}]", "+extra=a,b"], RunMode.MULTIRUN
        )
        composed = JobComposer(loader, master).compose(["+extra=b"])
        _same(composed, loader.load_sweep_config(master, ["+extra=b"]))
        assert composed.model.knob == 2


def test_unknown_key_fails_as_in_hydra(loader: Any) -> None:
    master = _master(loader, ["model.nope=1,2"])
    with pytest.raises(Exception, match="nope") as hydra_error:
        loader.load_sweep_config(master, ["model.nope=1"])
    with pytest.raises(type(hydra_error.value), match="nope"):
        JobComposer(loader, master).compose(["model.nope=1"])


def test_loader_delegates_other_sweeps_and_pickles_without_templates(loader: Any) -> None:
    master = _master(loader, ["lr=0.1,0.2"])
    wrapped = ComposingLoader(loader, master)
    wrapped.load_sweep_config(master, ["lr=0.1"])
    assert wrapped.composer._templates
    other = _master(loader, ["seed=1,2"])
    _same(wrapped.load_sweep_config(other, ["seed=2"]), loader.load_sweep_config(other, ["seed=2"]))
    restored = pickle.loads(pickle.dumps(wrapped))
    assert restored.composer._templates == {}
    _same(
        restored.load_sweep_config(restored.composer.master, ["lr=0.2"]),
        loader.load_sweep_config(master, ["lr=0.2"]),
    )


def test_a_validated_job_is_composed_once(loader: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    master = _master(loader, ["lr=0.1,0.2", "dataset=iris,wine"])
    wrapped = ComposingLoader(loader, master)
    full = []
    compose = type(loader).load_sweep_config

    def counted(self: Any, master_config: DictConfig, overrides: list[str]) -> DictConfig:
        full.append(list(overrides))
        return compose(self, master_config, overrides)

    monkeypatch.setattr(type(loader), "load_sweep_config", counted)
    batch = [[f"lr={lr}", f"dataset={d}"] for lr in (0.1, 0.2) for d in ("iris", "wine")]
    for job in batch:
        wrapped.validate(job)
    launched = [wrapped.load_sweep_config(master, job) for job in batch]
    # One full compose per dataset (the templates); none for the launch.
    assert full == [["dataset=iris"], ["dataset=wine"]]
    assert [(c.lr, c.dataset.name) for c in launched] == [
        (0.1, "iris"),
        (0.1, "wine"),
        (0.2, "iris"),
        (0.2, "wine"),
    ]
    assert wrapped._validated == {}


def test_grid_is_the_default_sweeper() -> None:
    from tests.helpers import compose_cfg

    cfg = compose_cfg(hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("runner_grid_sweeper.grid_sweeper.GridSweeper")
    basic = compose_cfg(["hydra/sweeper=basic"], hydra=True)
    assert basic.hydra.sweeper._target_.endswith("basic_sweeper.BasicSweeper")


@pytest.mark.parametrize(
    ("launcher", "expected"), [("basic", "_Launcher"), ("joblib", "JoblibLauncher")]
)
def test_grid_jobs_run_through_the_runners_run_job_under_the_basic_launcher(
    loader: Any, launcher: str, expected: str
) -> None:
    from hydra.types import HydraContext

    from hydra_plugins.runner_grid_sweeper.grid_sweeper import GridSweeper

    master = _master(loader, [f"hydra/launcher={launcher}", "lr=0.1,0.2"])
    sweeper = GridSweeper(max_batch_size=None, params=None)
    sweeper.setup(
        hydra_context=HydraContext(config_loader=loader, callbacks=None),  # type: ignore[arg-type]
        task_function=lambda cfg: 0.0,
        config=master,
    )
    # Hydra's basic launcher becomes ours (runner.sweeps.hydra_job.run_job); others stay Hydra's.
    assert type(sweeper.launcher).__name__ == expected
