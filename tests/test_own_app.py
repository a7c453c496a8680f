"""The MLflow callback in a Hydra app of the user's own (tests/apps/tutorial: Hydra's
tutorial shape, `version_base=None`, so `chdir=True` and a relative sweep dir), run through
its real CLI: one run, a grid, an Optuna sweep, the joblib and submitit launchers, chdir
true and false, relative and absolute sweep dirs, bad settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_python
from tests.services import free_port

APP = Path(__file__).parent / "apps" / "tutorial"
CALLBACK = "+hydra.callbacks.mlflow._target_=runner.tracking.callback.MLflowCallback"


@pytest.fixture
def app(workdir: Path) -> Path:
    """A copy of the tutorial app in the test's own directory (its launch directory)."""
    dest = workdir / "app"
    shutil.copytree(APP, dest)
    return dest


def run_app(
    app: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    script: str = "my_app.py",
) -> subprocess.CompletedProcess[str]:
    """``python <script> *args`` from the app's directory, as its user runs it (the
    ``workdir`` fixture has taken MLflow's variables out of the environment)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return run_python(
        [script, *args], cwd=app, env={"PYTHONPATH": path, **(env or {})}, check=check
    )


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def all_runs(uri: str) -> list[Any]:
    c = client(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    return list(c.search_runs(exps, max_results=1000)) if exps else []


def test_one_run_logs_params_metrics_and_the_return_value(app: Path) -> None:
    run_app(app, CALLBACK, "+hydra.callbacks.mlflow.experiment_name=tutorial", "x=0.5")
    # In the launch directory, not in the job's (chdir=True) output folder.
    assert (app / "mlflow.db").is_file()
    assert not list((app / "outputs").rglob("mlflow.db"))
    (run,) = all_runs(f"sqlite:///{app / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert (
        client(f"sqlite:///{app / 'mlflow.db'}").get_experiment(run.info.experiment_id).name
        == "tutorial"
    )
    params = run.data.params
    assert params["x"] == "0.5" and params["db"] == "mysql" and params["db.driver"] == "mysql"
    assert params["db.pass"] == "***"  # Hydra's tutorial's own secret key
    assert run.data.metrics["return_value"] == pytest.approx(0.04)
    history = client(f"sqlite:///{app / 'mlflow.db'}").get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.tags["app"] == "tutorial"
    assert b"hunter2-tutorial" not in (app / "mlflow.db").read_bytes()


def test_settings_in_the_config_and_the_environment(app: Path) -> None:
    config = yaml.safe_load((app / "conf" / "config.yaml").read_text())
    config["hydra"] = {
        "callbacks": {
            "mlflow": {
                "_target_": "runner.tracking.callback.MLflowCallback",
                "tracking_uri": "sqlite:///stores/team.db",  # relative: the launch dir's
                "exclude": ["db.timeout"],
                "secret_keys": ["^db\\.user$"],
            }
        }
    }
    (app / "conf" / "config.yaml").write_text(yaml.safe_dump(config))
    (app / "stores").mkdir()
    env_store = app / "env.db"
    run_app(app, "db=postgresql", env={"MLFLOW_TRACKING_URI": f"sqlite:///{env_store}"})
    assert not env_store.exists()  # the callback's own argument wins
    (run,) = all_runs(f"sqlite:///{app / 'stores' / 'team.db'}")
    assert "db.timeout" not in run.data.params
    assert run.data.params["db.user"] == "***"
    # No argument: MLFLOW_TRACKING_URI, and the experiment is the app's job name.
    (app / "conf" / "config.yaml").write_text(yaml.safe_dump({**config, "hydra": {}}))
    run_app(app, CALLBACK, env={"MLFLOW_TRACKING_URI": f"sqlite:///{env_store}"})
    (run,) = all_runs(f"sqlite:///{env_store}")
    assert client(f"sqlite:///{env_store}").get_experiment(run.info.experiment_id).name == "my_app"


@pytest.mark.parametrize(
    "sweep",
    [
        pytest.param([], id="basic-sweeper"),
        pytest.param(["hydra/sweeper=grid"], id="grid-sweeper"),
        pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], id="joblib"),
    ],
)
def test_a_grid_nests_every_job_under_one_parent(app: Path, sweep: list[str]) -> None:
    run_app(app, "-m", CALLBACK, *sweep, "x=0.1,0.2", "db=mysql,postgresql")
    runs = all_runs(f"sqlite:///{app / 'mlflow.db'}")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in parents]
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("return_value" in r.data.metrics for r in children)


#: The other combinations a Hydra user meets, a pairwise cover (an L9 orthogonal array) of
#: sweeper x launcher x ``hydra.job.chdir`` x sweep dir, with the grid test above as its
#: other two rows: every pair of choices is run at least once.
COMBINATIONS = [
    ("basic", "joblib", False, "absolute"),
    ("basic", "submitit_local", True, "relative"),
    ("grid", "basic", False, "relative"),
    ("grid", "submitit_local", True, "absolute"),
    ("optuna", "basic", True, "absolute"),
    ("optuna", "joblib", True, "relative"),
    ("optuna", "submitit_local", False, "relative"),
]


@pytest.mark.parametrize(
    ("sweeper", "launcher", "chdir", "sweep_dir"),
    [pytest.param(*c, id="-".join(map(str, c))) for c in COMBINATIONS],
)
def test_every_combination_nests_under_one_parent_and_ends(
    app: Path, sweeper: str, launcher: str, chdir: bool, sweep_dir: str
) -> None:
    """One parent, one FINISHED child per job or trial, nothing RUNNING, in the launch dir."""
    args = ["-m", CALLBACK, f"hydra.job.chdir={str(chdir).lower()}"]
    if sweep_dir == "absolute":
        args.append(f"hydra.sweep.dir={app.parent / 'sweeps' / 'one'}")
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    elif launcher == "submitit_local":
        args += ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    if sweeper == "optuna":
        args += ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "x=interval(0,1)"]
        args += ["hydra.sweeper.direction=minimize", "hydra/sweeper/sampler=random"]
        if launcher != "basic":  # workers through the launcher share a study file
            args += [f"hydra.sweeper.storage=sqlite:///{app / 'optuna.db'}"]
            args += ["hydra.sweeper.n_workers=2"]
    else:
        args += [] if sweeper == "basic" else [f"hydra/sweeper={sweeper}"]
        args += ["x=0.1,0.2"]
    run_app(app, *args)
    runs = all_runs(f"sqlite:///{app / 'mlflow.db'}")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in parents]
    assert len(children) == 2, [r.data.tags for r in children]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("return_value" in r.data.metrics for r in children)


def test_an_optuna_sweep_nests_its_trials_under_the_study(app: Path) -> None:
    run_app(
        app,
        "-m",
        CALLBACK,
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.direction=minimize",
        "x=interval(0,1)",
    )
    runs = all_runs(f"sqlite:///{app / 'mlflow.db'}")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_failing_task_ends_its_run_failed(app: Path) -> None:
    proc = run_app(app, CALLBACK, "+fail=true", check=False)
    assert proc.returncode != 0
    (run,) = all_runs(f"sqlite:///{app / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    assert "the task failed on purpose" in run.data.tags["runner.error"]


def test_a_misconfigured_callback_is_never_silent(app: Path) -> None:
    proc = run_app(app, CALLBACK, "+hydra.callbacks.mlflow.bogus=1", check=False)
    assert proc.returncode != 0
    assert "unknown argument(s) bogus" in proc.stderr and "tracking_uri" in proc.stderr
    down = f"http://127.0.0.1:{free_port()}"
    for args in ([], ["-m", "x=0.1,0.2"]):
        # Stock Hydra's argparse wants `-m` before the overrides.
        proc = run_app(
            app,
            *args[:1],
            CALLBACK,
            f"+hydra.callbacks.mlflow.tracking_uri={down}",
            *args[1:],
            check=False,
        )
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert "the MLflow callback cannot track this job" in proc.stderr, proc.stderr
        assert down in proc.stderr


def test_return_values_become_metrics() -> None:
    import numpy as np

    from runner.tracking.callback import return_value_metrics

    assert return_value_metrics(0.5) == {"return_value": 0.5}
    assert return_value_metrics(np.float32(2.0)) == {"return_value": 2.0}
    assert return_value_metrics({"acc": 1, "loss": 0.5}) == {"acc": 1.0, "loss": 0.5}
    assert return_value_metrics((1, 2.5)) == {"return_value_0": 1.0, "return_value_1": 2.5}
    for other in (None, True, "x", [], {"a": "b"}, [1, "x"], np.zeros(3)):
        assert return_value_metrics(other) is None


def test_the_callback_target_names_the_class() -> None:
    from runner.tracking.callback import MLflowCallback
    from runner.tracking.settings import CALLBACK_TARGET

    assert f"{MLflowCallback.__module__}.{MLflowCallback.__qualname__}" == CALLBACK_TARGET


STRUCTURED = Path(__file__).parent / "apps" / "structured"


def test_a_structured_config_torch_app_sweeps_and_prunes(workdir: Path) -> None:
    # A dataclass-schema app whose torch loop reports per-epoch losses and prunes.
    app = workdir / "structured"
    shutil.copytree(STRUCTURED, app)
    args = [
        "-m",
        CALLBACK,
        "hydra/sweeper=optuna",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=1",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.direction=minimize",
        "hydra.sweeper.sampler.seed=0",
        "optim.lr=tag(log, interval(0.0001, 0.3))",
    ]
    run_app(app, *args, script="train.py")
    uri = f"sqlite:///{app / 'mlflow.db'}"
    runs = all_runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    assert {r.info.status for r in runs} == {"FINISHED"}
    states = [r.data.tags.get("runner.trial_state") for r in children]
    assert "PRUNED" in states and "COMPLETE" in states, states
    done = next(r for r in children if r.data.tags["runner.trial_state"] == "COMPLETE")
    assert "optim.lr" in done.data.params and "epochs" in done.data.params
    assert len(client(uri).get_metric_history(done.info.run_id, "train_loss")) == 6
    assert "return_value" in done.data.metrics


def test_a_structured_config_torch_app_runs_once_and_as_a_joblib_grid(workdir: Path) -> None:
    app = workdir / "structured"
    shutil.copytree(STRUCTURED, app)
    uri = f"sqlite:///{app / 'mlflow.db'}"
    run_app(app, CALLBACK, "optim.lr=0.01", script="train.py")
    (single,) = all_runs(uri)
    assert single.info.status == "FINISHED"
    assert single.data.params["optim.lr"] == "0.01" and "return_value" in single.data.metrics
    assert len(client(uri).get_metric_history(single.info.run_id, "train_loss")) == 6
    grid = ["-m", CALLBACK, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    run_app(app, *grid, "optim.lr=0.01,0.1", script="train.py")
    runs = [r for r in all_runs(uri) if r.info.run_id != single.info.run_id]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, [r.data.tags for r in runs]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["optim.lr"] for r in children) == ["0.01", "0.1"]


def test_the_official_multi_objective_example_runs_unchanged(workdir: Path) -> None:
    # hydra-optuna-sweeper's example/multi-objective.py and its config (n_trials cut to 6),
    # with our sweeper and the callback added on the command line.
    app = workdir / "mo"
    (app / "multi-objective-conf").mkdir(parents=True)
    (app / "multi-objective.py").write_text(
        "from typing import Tuple\n\nimport hydra\nfrom omegaconf import DictConfig\n\n\n"
        '@hydra.main(config_path="multi-objective-conf", config_name="config")\n'
        "def binh_and_korn(cfg: DictConfig) -> Tuple[float, float]:\n"
        "    x: float = cfg.x\n    y: float = cfg.y\n\n"
        "    v0 = 4 * x**2 + 4 * y**2\n    v1 = (x - 5) ** 2 + (y - 5) ** 2\n"
        "    return v0, v1\n\n\nif __name__ == '__main__':\n    binh_and_korn()\n"
    )
    (app / "multi-objective-conf" / "config.yaml").write_text(
        "defaults:\n  - override hydra/sweeper: optuna\n"
        "  - override hydra/sweeper/sampler: nsgaii\n\n"
        "hydra:\n  sweeper:\n    sampler:\n      seed: 123\n"
        "    direction: [minimize, minimize]\n    study_name: multi-objective\n"
        "    storage: null\n    n_trials: 6\n    n_jobs: 1\n    params:\n"
        "      x: range(0, 5, step=0.5)\n      y: range(0, 3, step=0.5)\n\nx: 1\ny: 1\n"
    )
    run_app(app, "--multirun", CALLBACK, script="multi-objective.py")
    runs = all_runs(f"sqlite:///{app / 'mlflow.db'}")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 7 and len(children) == 6
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in children:
        x, y = float(r.data.params["x"]), float(r.data.params["y"])
        assert r.data.metrics["return_value_0"] == 4 * x**2 + 4 * y**2
        assert r.data.metrics["return_value_1"] == (x - 5) ** 2 + (y - 5) ** 2
    (results,) = (app / "multirun").glob("*/*/optimization_results.yaml")
    assert len(yaml.safe_load(results.read_text())["solutions"]) >= 1
