"""Configs written for the official hydra-optuna-sweeper run unchanged on hydra/sweeper=optuna.

The apps and configs are small equivalents of the official plugin's `example/` apps (sphere,
custom search space) and `tests/conf/test_grid.yaml`, run as a user runs them: the script
in a subprocess, with `--multirun`.
"""

from __future__ import annotations

import inspect
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli, run_python

SPHERE = """\
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg: DictConfig) -> float:
    return float(cfg.x) ** 2 + float(cfg.y) ** 2


if __name__ == "__main__":
    sphere()
"""

# The official example/custom-search-space-objective.py, as its test runs it (`+w`).
CUSTOM = """\
import hydra
from omegaconf import DictConfig
from optuna.trial import Trial


@hydra.main(version_base=None, config_path="custom-search-space", config_name="config")
def multi_dimensional_sphere(cfg: DictConfig) -> float:
    return cfg.w**2 + cfg.x**2 + cfg.y**2 + cfg.z**2


def configure(cfg: DictConfig, trial: Trial) -> None:
    x_value = trial.params["x"]
    trial.suggest_float(
        "z",
        x_value - cfg.max_z_difference_from_x,
        x_value + cfg.max_z_difference_from_x,
    )
    trial.suggest_float("+w", 0.0, 1.0)


if __name__ == "__main__":
    multi_dimensional_sphere()
"""


def _app(workdir: Path, sampler: str, sweeper: dict[str, Any], script: str = SPHERE) -> Path:
    (workdir / "conf").mkdir(exist_ok=True)
    config = {
        "defaults": [{"override hydra/sweeper": "optuna"}],
        "hydra": {"sweeper": sweeper},
        "x": 1,
        "y": 1,
    }
    config["defaults"].append({"override hydra/sweeper/sampler": sampler})
    (workdir / "conf" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    path = workdir / "sphere.py"
    path.write_text(script)
    return path


def _run(script: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = run_python(
        [str(script), "--multirun", *args], cwd=script.parent, env=env, timeout=120, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


def _study(workdir: Path, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


def test_schemas_take_every_constructor_argument() -> None:
    """Each offered sampler/pruner node has exactly its class's arguments, with Optuna's
    defaults except where the schema says why not; a new Optuna release fails this test."""
    from hydra.utils import get_class

    from hydra_plugins.runner_optuna_sweeper import config

    # Defaults that differ from Optuna's on purpose (the official plugin's, or seeded).
    ours = {
        "TPESampler": {"seed", "multivariate", "constant_liar"},
        "CmaEsSampler": {"seed", "inc_popsize"},
        "QMCSampler": {"seed", "scramble"},
        "PercentilePruner": {"percentile"},  # required by Optuna
        "PatientPruner": {"wrapped_pruner", "patience"},  # required by Optuna
    }
    built = {"GridSampler": {"search_space"}}  # made by the sweep from the space
    for node in [*config.SAMPLERS.values(), *config.PRUNERS.values()]:
        fields = {k: v for k, v in vars(node()).items() if k != "_target_"}
        cls = get_class(node._target_)
        params = {
            n: p
            for n, p in inspect.signature(cls).parameters.items()
            if n not in built.get(cls.__name__, set())
        }
        assert set(fields) == set(params), (cls.__name__, set(fields) ^ set(params))
        for name, param in params.items():
            if name == "seed" or name in ours.get(cls.__name__, set()):
                continue
            assert fields[name] == param.default, (cls.__name__, name)


# Arguments the official plugin's configs set, that the old schema refused.
OFFICIAL_ARGS = {
    "tpe": {
        "seed": 123,
        "consider_endpoints": True,
        "warn_independent_sampling": False,
        "n_ei_candidates": 12,
    },
    "cmaes": {"seed": 123, "source_trials": None, "warn_independent_sampling": True},
    "qmc": {"seed": 123, "warn_asynchronous_seeding": False},
    "nsgaii": {"seed": 123, "constraints_func": None, "population_size": 2},
}


@pytest.mark.parametrize("sampler", list(OFFICIAL_ARGS))
def test_official_sampler_arguments_run(workdir: Path, sampler: str) -> None:
    """The official plugin's sphere example: a stepped float range and an int range, with
    sampler arguments; CMA-ES and QMC sample the space jointly (no independent fallback)."""
    script = _app(
        workdir,
        sampler,
        {
            "sampler": OFFICIAL_ARGS[sampler],
            "study_name": "sphere",
            "storage": "sqlite:///optuna.db",
            "n_trials": 3,
            "params": {"x": "range(-5.5, 5.5, step=0.5)", "y": "range(-5, 5)"},
        },
    )
    rc, out = _run(script)
    assert rc == 0, out
    assert "sampled independently" not in out, out
    study = _study(workdir, "sphere")
    assert len(study.trials) == 3
    from optuna.distributions import FloatDistribution, IntDistribution

    dists = study.trials[0].distributions
    # As the official plugin maps them: the end included, a float range stays a float.
    assert dists["x"] == FloatDistribution(-5.5, 5.5, step=0.5)
    assert dists["y"] == IntDistribution(-5, 5)


def test_unknown_sampler_argument_is_named(workdir: Path) -> None:
    script = _app(workdir, "cmaes", {"sampler": {"consider_endpoints": True}, "n_trials": 1})
    rc, out = _run(script, "hydra.sweeper.storage=null")
    assert rc != 0
    assert "hydra.sweeper.sampler.consider_endpoints is not an argument of " in out, out
    assert "optuna.samplers.CmaEsSampler. It accepts: x0, sigma0," in out, out
    assert "source_trials" in out


def test_grid_smaller_than_n_trials_runs_once(workdir: Path, client: Any) -> None:
    """The grid runs each point once and the sweep ends cleanly; a re-run adds nothing."""
    args = (
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=5",
        "model.C=choice(0.5, 1.0)",
        "tracking.log_model=false",
        "tracking.log_figures=false",
        "tracking.log_importances=false",
    )
    run_cli(*args)
    import optuna

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert sorted(t.params["model.C"] for t in study.trials) == [0.5, 1.0]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    exp = client.get_experiment_by_name("iris")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("runner.kind") == "sweep"]
    assert parent.info.status == "FINISHED"
    proc = run_cli(*args)  # exit 0 (run_cli checks it), nothing added
    assert "0 of 2 trials to go" in proc.stdout + proc.stderr
    assert len(optuna.load_study(study_name=summary.study_name, storage=storage).trials) == 2


def test_official_grid_config(workdir: Path) -> None:
    """The official tests/conf/test_grid.yaml (a float range in a grid), on a stored study."""
    script = _app(
        workdir,
        "grid",
        {
            "direction": "minimize",
            "study_name": "sphere",
            "storage": "sqlite:///optuna.db",
            "n_trials": 20,
            "params": {"x": "choice(-1, 1)", "y": "range(-1.0, 1.0, step=1)"},
        },
    )
    rc, out = _run(script)
    assert rc == 0, out
    points = sorted((t.params["x"], t.params["y"]) for t in _study(workdir, "sphere").trials)
    assert points == [(x, y) for x in (-1, 1) for y in (-1.0, 0.0, 1.0)]


def test_custom_search_space(workdir: Path) -> None:
    """The official custom-search-space example: its config's relative dotted path, a
    conditional param (z near x) and a `+w` param the config lacks."""
    (workdir / "custom-search-space").mkdir()
    (workdir / "custom-search-space" / "config.yaml").write_text(
        textwrap.dedent(
            """\
            defaults:
              - override hydra/sweeper: optuna

            hydra:
              sweeper:
                sampler:
                  seed: 123
                direction: minimize
                study_name: custom-search-space
                storage: null
                n_trials: 4
                n_jobs: 1

                params:
                  x: range(-5.5, 5.5, 0.5)
                  y: choice(-5, 0, 5)
                custom_search_space: .custom-search-space-objective.configure

            x: 1
            y: 1
            z: 100
            max_z_difference_from_x: 0.3
            """
        )
    )
    script = workdir / "custom-search-space-objective.py"
    script.write_text(CUSTOM)
    rc, out = _run(script, "hydra/sweeper/sampler=random")
    assert rc == 0, out
    (path,) = workdir.glob("multirun/*/*/optimization_results.yaml")
    best = yaml.safe_load(path.read_text())["best_params"]
    assert abs(best["x"] - best["z"]) <= 0.3
    assert 0 <= best["+w"] <= 1


def test_both_plugins_installed_is_said(workdir: Path) -> None:
    """With the official plugin importable too, the clash is reported, and
    hydra/sweeper=runner_optuna still picks this project's sweeper."""
    fake = workdir / "fake" / "hydra_plugins" / "hydra_optuna_sweeper"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    script = _app(workdir, "random", {"n_trials": 1, "storage": None})
    paths = [str(workdir / "fake"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(paths)}
    rc, out = _run(script, "hydra/sweeper=runner_optuna", env=env)
    assert rc == 0, out
    assert "two Optuna sweeper plugins are installed" in out, out
    assert "hydra/sweeper=runner_optuna" in out
    assert "1/1 done" in out
    rc, out = _run(script)
    assert "two Optuna sweeper plugins are installed" not in out


@pytest.mark.parametrize("name", ["threshold", "patient", "wilcoxon"])
def test_every_optuna_pruner_is_offered(name: str) -> None:
    """Threshold, Patient (wrapping a median pruner) and Wilcoxon: chosen by name, tunable."""
    from hydra.utils import get_class

    from hydra_plugins.runner_optuna_sweeper import config
    from runner.errors import ConfigError
    from runner.sweeps.optuna import setup
    from tests.helpers import compose_cfg

    extra = {
        "threshold": ["hydra.sweeper.pruner.lower=0.5"],
        "patient": ["hydra.sweeper.pruner.patience=5", "hydra.sweeper.pruner.min_delta=0.01"],
        "wilcoxon": ["hydra.sweeper.pruner.p_threshold=0.05"],
    }[name]
    cfg = compose_cfg(["hydra/sweeper=optuna", f"hydra/sweeper/pruner={name}", *extra], hydra=True)
    pruner = setup.pruner(cfg)
    assert type(pruner) is get_class(config.PRUNERS[name]._target_)
    if name == "patient":
        assert pruner._patience == 5 and type(pruner._wrapped_pruner).__name__ == "MedianPruner"
    bad = compose_cfg(
        ["hydra/sweeper=optuna", f"hydra/sweeper/pruner={name}", "+hydra.sweeper.pruner.nope=1"],
        hydra=True,
    )
    with pytest.raises(ConfigError, match="nope is not an argument"):
        setup.pruner(bad)


def test_hydra_1_1_search_space_is_read_as_params(workdir: Path) -> None:
    """Hydra 1.1's deprecated ``search_space`` (the upgrade page's example, unchanged) runs,
    with a warning that prints the ``params`` it equals; the distributions are the same."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    script = _app(
        workdir,
        "random",
        {
            "direction": "minimize",
            "study_name": "legacy",
            "storage": "sqlite:///optuna.db",
            "n_trials": 3,
            "search_space": {
                "x": {"type": "float", "low": -5.5, "high": 5.5, "step": 0.5},
                "y": {"type": "categorical", "choices": [-5, 0, 5]},
            },
        },
    )
    rc, out = _run(script)
    assert rc == 0, out
    assert "hydra.sweeper.search_space is Hydra 1.1's (deprecated)" in out
    assert "x: 'range(-5.5, 5.5, 0.5)'" in out and "y: 'choice(-5, 0, 5)'" in out
    trials = _study(workdir, "legacy").trials
    assert len(trials) == 3
    assert trials[0].distributions == {
        "x": FloatDistribution(-5.5, 5.5, step=0.5),
        "y": CategoricalDistribution([-5, 0, 5]),
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "normal", "low": 0, "high": 1}, "is not a distribution"),
        ({"type": "float", "low": 0}, "needs low and high"),
        ({"type": "int", "low": 0, "high": 3, "q": 1}, "has key(s) ['q']"),
        ({"type": "categorical"}, "needs a list of choices"),
    ],
)
def test_bad_search_space_entries_are_named(entry: dict[str, Any], message: str) -> None:
    from runner.errors import ConfigError
    from runner.sweeps.optuna.space import legacy_params

    with pytest.raises(ConfigError, match=re.escape(message)):
        legacy_params({"x": entry})
    good = legacy_params(
        {
            "a": {"type": "int", "low": 1, "high": 8, "log": True},
            "b": {"type": "int", "low": 0, "high": 10, "step": 2},
            "c": {"type": "float", "low": 0.001, "high": 1.0, "log": True},
        }
    )
    assert good == {
        "a": "tag(log, int(interval(1, 8)))",
        "b": "range(0, 10, 2)",
        "c": "tag(log, interval(0.001, 1.0))",
    }
