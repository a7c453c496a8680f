"""``runner.sweeps.hydra_job.run_job`` does what Hydra's ``run_job`` does, job for job."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, setup_globals
from hydra.core.utils import run_job as hydra_run_job
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config import register
from runner.sweeps.hydra_job import run_job, task_config


class Recorder:
    """Stands in for Hydra's callbacks; records what each job showed them and its task."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.events.append(("start", config.hydra.runtime.output_dir))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self.events.append(("end", job_return.status))


def task(cfg: DictConfig) -> dict[str, Any]:
    """What a task can observe of its job."""
    if cfg.model.get("C") == -1:
        raise ValueError("bad C")
    return {
        "yaml": OmegaConf.to_yaml(cfg),
        "type": OmegaConf.get_type(cfg),
        "struct": OmegaConf.is_struct(cfg),
        "hydra_output_dir": HydraConfig.get().runtime.output_dir,
        "job_num": HydraConfig.get().job.num,
        "cwd": os.getcwd(),
        "env": os.environ.get("RUNNER_TEST_ENV"),
        "now": cfg.stamp,
    }


@pytest.fixture
def loader() -> Iterator[Any]:
    register()
    setup_globals()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with initialize_config_module("runner.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()
    # Each job configured logging (a file handler in its output dir): put pytest's back.
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def _job(loader: Any, sweep_dir: Path, *overrides: str) -> DictConfig:
    master = loader.load_configuration(
        "config",
        [f"hydra.sweep.dir={sweep_dir}", "+hydra.job.env_set.RUNNER_TEST_ENV=on"],
        RunMode.MULTIRUN,
    )
    config = loader.load_sweep_config(master, ["+stamp=${now:%H-%M-%S-%f}", *overrides])
    with open_dict(config):
        config.hydra.job.id = 3
        config.hydra.job.num = 3
    return config


def _run(runner: Any, loader: Any, sweep_dir: Path, *overrides: str) -> tuple[JobReturn, Recorder]:
    callbacks = Recorder()
    ret = runner(
        hydra_context=HydraContext(config_loader=loader, callbacks=callbacks),  # type: ignore[arg-type]
        task_function=task,
        config=_job(loader, sweep_dir, *overrides),
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    return ret, callbacks


def _dehome(text: str, sweep_dir: Path) -> str:
    return text.replace(str(sweep_dir), "<sweep>")


@pytest.mark.parametrize("overrides", [(), ("hydra.job.chdir=true",)])
def test_a_job_is_what_hydra_makes_of_it(
    loader: Any, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    cwd = os.getcwd()
    theirs, their_calls = _run(hydra_run_job, loader, tmp_path / "hydra", *overrides)
    assert os.getcwd() == cwd
    ours, our_calls = _run(run_job, loader, tmp_path / "ours", *overrides)
    assert os.getcwd() == cwd and not HydraConfig.initialized()
    assert ours.status == theirs.status == JobStatus.COMPLETED
    a, b = theirs.return_value, ours.return_value
    assert a.pop("now") != "" and b.pop("now") != ""
    assert {k: _dehome(str(v), tmp_path / "hydra") for k, v in a.items()} == {
        k: _dehome(str(v), tmp_path / "ours") for k, v in b.items()
    }
    assert b["env"] == "on" and b["struct"] and b["hydra_output_dir"].endswith("/3")
    assert (b["cwd"] == b["hydra_output_dir"]) == bool(overrides)
    for field in ("overrides", "task_name"):
        assert getattr(ours, field) == getattr(theirs, field)
    assert ours.working_dir == (b["cwd"] if overrides else cwd)
    for part in ("cfg", "hydra_cfg"):
        assert _dehome(OmegaConf.to_yaml(getattr(ours, part)), tmp_path / "ours") == _dehome(
            OmegaConf.to_yaml(getattr(theirs, part)), tmp_path / "hydra"
        )
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        mine = (tmp_path / "ours" / "3" / ".hydra" / name).read_text()
        hydras = (tmp_path / "hydra" / "3" / ".hydra" / name).read_text()
        # The ${now:} stamp differs between the two jobs; everything else is the same.
        strip = lambda t: "\n".join(x for x in t.splitlines() if "stamp" not in x)  # noqa: E731
        assert _dehome(strip(mine), tmp_path / "ours") == _dehome(strip(hydras), tmp_path / "hydra")
    assert [e[0] for e in our_calls.events] == [e[0] for e in their_calls.events]
    assert our_calls.events[0][1] == b["hydra_output_dir"]


def test_a_failing_job_fails_as_in_hydra(loader: Any, tmp_path: Path) -> None:
    theirs, _ = _run(hydra_run_job, loader, tmp_path / "hydra", "model.C=-1")
    ours, calls = _run(run_job, loader, tmp_path / "ours", "model.C=-1")
    assert ours.status == theirs.status == JobStatus.FAILED
    assert isinstance(ours._return_value, ValueError) and calls.events[-1] == (
        "end",
        JobStatus.FAILED,
    )


def test_task_config_leaves_the_config_whole(loader: Any, tmp_path: Path) -> None:
    config = _job(loader, tmp_path)
    stamp = config.stamp  # resolved (and cached) before the copy, as the sweep dir is
    before = OmegaConf.to_yaml(config)
    copied = task_config(config)
    assert "hydra" not in copied and "hydra" in config
    assert OmegaConf.to_yaml(config) == before
    copied.model.C = 123.0
    assert config.model.C != 123.0
    # The copy keeps the root's resolver cache: ${now:} reads the same time in both.
    assert copied.stamp == config.stamp == stamp
