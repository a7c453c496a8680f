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


CALLBACK = "+hydra.callbacks.mlflow._target_=runner.tracking.callback.MLflowCallback"

# A custom search space that suggests `y`, which the sweep also fixes.
OVERLAPPING = """\
import hydra
from omegaconf import DictConfig
from optuna.trial import Trial


@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg: DictConfig) -> float:
    return float(cfg.x) ** 2 + float(cfg.y) ** 2


def configure(cfg: DictConfig, trial: Trial) -> None:
    trial.suggest_float("y", -1.0, 1.0)


if __name__ == "__main__":
    sphere()
"""


def _runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    return list(c.search_runs([e.experiment_id for e in c.search_experiments()]))


@pytest.mark.parametrize("where", ["params", "command line"])
def test_custom_search_space_overlapping_a_fixed_value_is_refused(
    workdir: Path, where: str
) -> None:
    """As the official plugin ("Overlapping fixed parameters and search space parameters
    found!"): a suggested param that is also fixed stops the sweep with exit 1; the trial is
    voided (not a failure of the task, not counted), the study's parent run ends FAILED."""
    params: dict[str, Any] = {"x": "range(-2, 2)"}
    if where == "params":
        params["y"] = 0.5
    sweeper = {
        "study_name": "overlap",
        "storage": "sqlite:///optuna.db",
        "n_trials": 2,
        "params": params,
        "custom_search_space": ".sphere.configure",
    }
    script = _app(workdir, "random", sweeper, script=OVERLAPPING)
    rc, out = _run(script, CALLBACK, *([] if where == "params" else ["y=0.5"]))
    assert rc == 1, out
    assert (
        "hydra.sweeper.custom_search_space suggested y in trial 0, which the sweep also "
        "fixes: y=0.5 (a plain value in hydra.sweeper.params or on the command line)"
    ) in out, out
    assert "drop the fixed value, or stop suggesting it" in out
    assert "Traceback" not in out, out
    from runner.sweeps.optuna import storage as st

    (trial,) = _study(workdir, "overlap").trials
    assert trial.state.name == "FAIL" and trial.system_attrs["runner.void"] is True
    assert st.counted([trial]) == []  # not one of n_trials: a fixed config runs them all
    runs = _runs(f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = runs  # no job ran, so no child run
    assert parent.info.status == "FAILED"
    assert "custom_search_space suggested y" in parent.data.tags["runner.error"]
    assert not list(workdir.glob("multirun/*/*/optimization_results.yaml"))


# The official example/sphere.py as its test_failure_rate runs it (`error: false` in the
# config, `error=true` on the command line); `error=if_positive` fails some trials only.
SPHERE_ERROR = """\
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg: DictConfig) -> float:
    x: float = cfg.x
    y: float = cfg.y
    if cfg.error is True or (cfg.error == "if_positive" and x > 0):
        raise RuntimeError("cfg.error is True")
    return x**2 + y**2


if __name__ == "__main__":
    sphere()
"""


def _failure_rate_run(workdir: Path, rate: float, error: str, n_trials: int) -> tuple[int, str]:
    """The official test_failure_rate's command, with our plugin and the MLflow callback;
    its sampler (random, seed 123) proposes x = 2.5, 2.5, 0.0, -0.5 as trials 0-3."""
    (workdir / "conf").mkdir()
    config = {
        "defaults": [
            {"override hydra/sweeper": "optuna"},
            {"override hydra/sweeper/sampler": "grid"},
        ],
        "hydra": {
            "sweeper": {
                "direction": "minimize",
                "study_name": "sphere",
                "storage": None,
                "n_trials": 20,
                "n_jobs": 1,
                "params": {"x": "range(-5.5, 5.5, step=0.5)", "y": "choice(-5 ,0 ,5)"},
            }
        },
        "x": 1,
        "y": 1,
        "z": 1,
        "error": False,
    }
    (workdir / "conf" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    script = workdir / "sphere.py"
    script.write_text(SPHERE_ERROR)
    return _run(
        script,
        f"hydra.sweep.dir={workdir / 'sweep'}",
        "hydra.job.chdir=True",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=123",
        f"hydra.sweeper.max_failure_rate={rate}",
        f"error={error}",
        CALLBACK,
    )


def _sweep_runs(workdir: Path) -> tuple[Any, list[Any]]:
    runs = _runs(f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    return parent, children


def test_failure_rate_half_stops_the_sweep(workdir: Path) -> None:
    """The official test_failure_rate at 0.5: the error is named (once, in the stop
    message; once per failed trial, in its traceback); exit 1; results file and summary.
    n_trials=4 (the official 20): the first failure stops it, the other worker's trial
    is let finish, so 2 of 4 run either way."""
    rc, out = _failure_rate_run(workdir, 0.5, "true", n_trials=4)
    assert rc == 1, out
    assert out.count("stopped: ") == 1, out
    assert out.count("Last error: RuntimeError: cfg.error is True.") == 1, out
    parent, children = _sweep_runs(workdir)
    assert parent.info.status == "FAILED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FAILED"}
    assert out.count("Traceback (most recent call last)") == len(children), out
    assert "study sphere: done in " in out and ", 2 trials (2 failed)" in out, out
    results = yaml.safe_load((workdir / "sweep" / "optimization_results.yaml").read_text())
    assert results["message"] == "no trial completed (of 2)" and results["best_value"] is None


def test_failure_rate_one_with_every_trial_failing_is_an_error(workdir: Path) -> None:
    """At 1.0 the official plugin runs all trials, then fails on `study.best_trial`
    without naming the error; ours exits 1 naming the first (docs/sweeps.md, "Failure
    rate"). n_trials=3: every trial runs, one worker runs two."""
    rc, out = _failure_rate_run(workdir, 1.0, "true", n_trials=3)
    assert rc == 1, out
    assert (
        "all 3 trials failed; the first error was (trial 0): RuntimeError: cfg.error is True"
    ) in out, out
    assert "stopped: " not in out, out  # not cut short by the rate
    parent, children = _sweep_runs(workdir)
    assert parent.info.status == "FAILED"
    assert len(children) == 3 and {r.info.status for r in children} == {"FAILED"}
    results = yaml.safe_load((workdir / "sweep" / "optimization_results.yaml").read_text())
    assert results == {
        "name": "optuna",
        "message": "no trial completed (of 3)",
        "best_params": None,
        "best_value": None,
    }


def test_failure_rate_one_with_some_trials_failing_succeeds(workdir: Path) -> None:
    """At 1.0 with the trials at x > 0 failing (trials 0 and 1 of 3): exit 0, the best of
    the others in the results file, the failed trials' runs FAILED."""
    rc, out = _failure_rate_run(workdir, 1.0, "if_positive", n_trials=3)
    assert rc == 0, out
    parent, children = _sweep_runs(workdir)
    assert parent.info.status == "FINISHED"
    assert len(children) == 3
    failed = [r for r in children if r.info.status == "FAILED"]
    done = [r for r in children if r.info.status == "FINISHED"]
    assert failed and done, [(r.data.params, r.info.status) for r in children]
    assert all(float(r.data.params["x"]) > 0 for r in failed)
    assert all(float(r.data.params["x"]) <= 0 for r in done)
    assert all("cfg.error is True" in r.data.tags["runner.error"] for r in failed)
    results = yaml.safe_load((workdir / "sweep" / "optimization_results.yaml").read_text())
    best = min(done, key=lambda r: r.data.metrics["return_value"])
    assert results["best_value"] == best.data.metrics["return_value"]
    assert results["best_params"]["x"] == float(best.data.params["x"])


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
