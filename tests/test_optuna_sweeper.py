"""The Optuna sweeper (hydra/sweeper=optuna) through the real CLI, on real stores.

Each sweep is a `python -m runner -m ...` subprocess with a seeded sampler, a fresh SQLite
MLflow store (fixture `tracking_uri`) and `optuna.db` in the test's launch directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_cli, run_python

FAST = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")


def _study(workdir: Path, name: str | None = None) -> Any:
    import optuna

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    if name is None:
        (summary,) = optuna.get_all_study_summaries(storage)
        name = summary.study_name
    return optuna.load_study(study_name=name, storage=storage)


def _parent_and_children(client: Any, experiment: str = "iris") -> tuple[Any, list[Any]]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("runner.kind") == "sweep"]
    assert len(parents) == 1, [p.info.run_name for p in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) + 1 == len(runs)
    return parents[0], children


def _results(workdir: Path) -> dict[str, Any]:
    (path,) = workdir.glob("multirun/*/*/optimization_results.yaml")
    return yaml.safe_load(path.read_text())


def _start(workdir: Path, args: list[str]) -> subprocess.Popen[str]:
    """``python -m runner *args`` in the background (to signal it), output in one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_parent_children_best_and_plots(workdir: Path, client: Any) -> None:
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=4",
        "model.C=tag(log, interval(0.001, 10.0))",
        *FAST,
    )
    study = _study(workdir)
    assert len(study.trials) == 4
    # Not a terminal: one plain progress line per finished trial.
    assert "trial 3 COMPLETE" in proc.stdout + proc.stderr
    assert (
        f"{study.study_name}: 4/4 done, 0 running, 0 failed, 0 pruned" in proc.stdout + proc.stderr
    )
    parent, children = _parent_and_children(client)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == study.study_name
    assert parent.data.params["study_name"] == study.study_name
    assert parent.data.params["sampler"] == "tpe"
    assert json.loads(parent.data.params["space"]) == {"model.C": "tag(log, interval(0.001, 10.0))"}
    assert "n_trials" not in parent.data.params  # it changes on resume: a tag
    assert parent.data.tags["runner.n_trials"] == "4"
    assert sorted(int(c.data.tags["runner.trial_number"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["runner.trial_state"] for c in children} == {"COMPLETE"}
    assert all(c.info.status == "FINISHED" for c in children)
    best = [c for c in children if c.data.tags.get("runner.best") == "true"]
    assert len(best) == 1
    assert int(best[0].data.tags["runner.trial_number"]) == study.best_trial.number
    assert parent.data.tags["runner.best_run_id"] == best[0].info.run_id
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert json.loads(parent.data.tags["runner.best_params"]) == study.best_params
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {
        "plots/optimization_history.html",
        "plots/param_importances.html",
        "plots/parallel_coordinate.html",
    }
    results = _results(workdir)
    assert results["name"] == "optuna"
    assert results["best_params"] == study.best_params
    assert results["best_value"] == pytest.approx(study.best_value)


def test_resume_after_sigterm(workdir: Path, client: Any, tracking_uri: str) -> None:
    # 300 boosting rounds: a trial lasts long enough for the signal to land inside it.
    args = ["-m", "sweep=xgb_iris", "hydra.sweeper.n_trials=6", "model.n_estimators=300", *FAST]
    proc = _start(workdir, args)
    from optuna.trial import TrialState

    # Trial k's job directory appears when trial k starts (n_jobs=1): once "2" exists,
    # trials 0 and 1 are done and 2 is running. (Opening optuna.db here could race the
    # sweep's own schema creation.)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list(workdir.glob("multirun/*/*/2/.hydra/overrides.yaml")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    first = _study(workdir)
    assert any(t.state == TrialState.FAIL for t in first.trials), out  # the interrupted one
    assert not any(t.state == TrialState.RUNNING for t in first.trials)
    parent, _ = _parent_and_children(client)
    assert parent.info.status == "KILLED"
    proposed = [t.params for t in first.trials if t.state == TrialState.COMPLETE]

    run_cli(*args)
    study = _study(workdir)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    parent, children = _parent_and_children(client)
    assert parent.info.status == "FINISHED"
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 6
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    # The interrupted trial is retried with its params; fresh samples never repeat old ones.
    retried = [t for t in study.trials if "runner.retry_of" in t.user_attrs]
    assert retried
    fresh = [t.params for t in complete[len(proposed) :] if "runner.retry_of" not in t.user_attrs]
    assert fresh and not [p for p in fresh if p in proposed]


def test_pruning_mlp(workdir: Path, client: Any) -> None:
    run_cli(
        "-m",
        "sweep=mlp_pruned",
        "hydra.sweeper.n_trials=8",
        "model.epochs=6",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=8",
        *FAST,
    )
    from optuna.trial import TrialState

    study = _study(workdir)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.state, t.intermediate_values) for t in study.trials]
    _, children = _parent_and_children(client, "breast_cancer")
    by_number = {int(c.data.tags["runner.trial_number"]): c for c in children}
    for t in pruned:
        run = by_number[t.number]
        assert run.data.tags["runner.trial_state"] == "PRUNED"
        assert run.info.status == "FINISHED"  # pruned is not a failure
        assert len(t.intermediate_values) < 6
    assert not [c for c in children if c.info.status == "FAILED"]


def test_failure_rate_cutoff(workdir: Path, client: Any) -> None:
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.max_failure_rate=0.5",
        "model.C=choice(-1.0, -2.0)",  # scikit-learn rejects C <= 0: every trial fails
        *FAST,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "max_failure_rate=0.5" in out
    from optuna.trial import TrialState

    study = _study(workdir)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    parent, children = _parent_and_children(client)
    assert parent.info.status == "FAILED"
    assert "max_failure_rate" in parent.data.tags["runner.error"]
    assert [c.info.status for c in children] == ["FAILED"]
    assert children[0].data.tags["runner.trial_state"] == "FAIL"
    assert "C" in children[0].data.tags["runner.error"]


def test_multi_objective(workdir: Path, client: Any) -> None:
    run_cli("-m", "sweep=logreg_multi", "hydra.sweeper.n_trials=4", *FAST)
    study = _study(workdir)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 4
    parent, children = _parent_and_children(client, "wine")
    assert parent.info.status == "FINISHED"
    assert {"best_value_0", "best_value_1"} <= set(parent.data.metrics)
    front = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "pareto_front.json")).read_text()
    )
    assert sorted(p["trial"] for p in front) == sorted(t.number for t in study.best_trials)
    assert set(front[0]["values"]) == {"val_accuracy", "val_log_loss"}
    best = sorted(
        int(c.data.tags["runner.trial_number"])
        for c in children
        if c.data.tags.get("runner.best") == "true"
    )
    assert best == sorted(t.number for t in study.best_trials)
    assert len(_results(workdir)["solutions"]) == len(study.best_trials)


def test_two_processes_share_one_study(workdir: Path, client: Any) -> None:
    args = [
        "-m",
        "runner",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=6",
        # Trials of about a second each (an MLP on digits), so that both processes are
        # sure to be sampling before either could finish the study alone.
        "model=mlp",
        "dataset=digits",
        "model.epochs=15",
        "lr=tag(log, interval(0.01, 0.1))",
        *FAST,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    from optuna.trial import TrialState

    study = _study(workdir)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6, [(t.number, t.state, t.system_attrs) for t in study.trials]
    owners = {t.system_attrs["runner.owner"] for t in complete}
    assert len(owners) == 2  # both processes ran trials
    parent, children = _parent_and_children(client, "digits")
    numbers = [int(c.data.tags["runner.trial_number"]) for c in children]
    assert sorted(numbers) == sorted(t.number for t in complete)  # none twice
    assert parent.info.run_id == study.user_attrs["runner.mlflow.parent_run_id"]


@pytest.mark.parametrize("callback", [False, True])
def test_plain_hydra_app(workdir: Path, callback: bool) -> None:
    """An existing app with `override hydra/sweeper: optuna` runs unchanged."""
    conf = workdir / "conf"
    conf.mkdir()
    cb = (
        "  callbacks:\n    mlflow:\n      _target_: runner.tracking.callback.MLflowCallback\n"
        if callback
        else ""
    )
    (conf / "config.yaml").write_text(
        textwrap.dedent(
            """\
            defaults:
              - override hydra/sweeper: optuna
            x: 0.0
            y: a
            hydra:
              sweeper:
                direction: minimize
                n_trials: 3
                storage: null
                sampler:
                  seed: 123
                params:
                  x: interval(-2.0, 2.0)
                  y: choice(a, b)
            """
        )
        + cb
    )
    (workdir / "app.py").write_text(
        textwrap.dedent(
            """\
            import hydra

            @hydra.main(version_base=None, config_path="conf", config_name="config")
            def main(cfg):
                return cfg.x ** 2 + (0.5 if cfg.y == "b" else 0.0)

            if __name__ == "__main__":
                main()
            """
        )
    )
    proc = run_python(
        ["app.py", "-m"], cwd=workdir, env={"PYTHONPATH": str(ROOT)}, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _results(workdir)
    assert set(results["best_params"]) == {"x", "y"}
    assert results["best_value"] >= 0
    assert not (workdir / "optuna.db").exists()  # storage: null is in-memory


NONE = "backend=none"  # tracking off where it plays no part: each case runs in a few s
BAD = {
    # Hydra itself rejects a malformed override on the command line; a preset's (or
    # hydra.sweeper.params') text is parsed by the sweeper with Hydra's parser.
    "malformed": (['hydra.sweeper.params={model.C: "interval(1"}', NONE], "grammar is"),
    "unsupported": (["model.C=tag(log, choice(1, 2))", NONE], "interval(...) and range(...)"),
    "unknown_key": (["model.nope=interval(1.0, 2.0)", NONE], "does not fit the config"),
    "directions": (
        ["model.C=interval(1.0, 2.0)", "hydra.sweeper.direction=[maximize,minimize]"],
        "one direction per objective",
    ),
    "storage": (
        ["model.C=interval(1.0, 2.0)", "hydra.sweeper.storage=sqlite:////nonexistent/x/o.db"],
        "does not exist",
    ),
    "bad_url": (
        ["model.C=interval(1.0, 2.0)", "hydra.sweeper.storage=nosuchdb://x", NONE],
        "cannot be opened",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_before_any_trial(workdir: Path, client: Any, case: str) -> None:
    overrides, message = BAD[case]
    proc = run_cli("-m", "hydra/sweeper=optuna", *overrides, *FAST, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert message in out
    assert "Traceback" not in out
    exp = client.get_experiment_by_name("iris")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    assert not list(workdir.glob("multirun/*/*/0"))  # no job started


def test_existing_study_with_other_direction(workdir: Path, client: Any) -> None:
    import optuna

    optuna.create_study(
        study_name="fixed", storage=f"sqlite:///{workdir / 'optuna.db'}", direction="minimize"
    )
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.study_name=fixed",
        "model.C=interval(1.0, 2.0)",
        *FAST,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "already exists with direction(s) ['minimize']" in out, out
    assert len(_study(workdir, "fixed").trials) == 0


PRESETS = sorted(p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset: str) -> None:
    """Every preset composes with the optuna sweeper, a seeded sampler and a valid space.

    One preset per model family also runs for real above (logreg_iris, logreg_multi,
    xgb_iris, mlp_pruned) and rf_wine below.
    """
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from hydra_plugins.runner_optuna_sweeper.config import SWEEPER_TARGET
    from runner.config import CONFIG_MODULE, register
    from runner.sweeps.optuna.space import parse_space

    register()
    with initialize_config_module(CONFIG_MODULE.removeprefix("pkg://"), version_base="1.3"):
        cfg = compose("config", overrides=[f"sweep={preset}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == SWEEPER_TARGET
    space = parse_space(OmegaConf.to_container(sweeper.params), [])
    assert space.distributions
    for key in space.distributions:
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
    sampler = OmegaConf.to_container(sweeper.sampler, resolve=True)
    assert sampler["seed"] is not None
    instantiate(sweeper.pruner)
    multi = OmegaConf.is_list(sweeper.direction)
    assert multi == OmegaConf.is_list(cfg.objective)
    if multi:
        assert len(sweeper.direction) == len(cfg.objective)


def test_rf_preset_with_two_jobs(workdir: Path, client: Any) -> None:
    """n_jobs=2: trials run in two worker processes, nested under the study's parent."""
    run_cli(
        "-m",
        "sweep=rf_wine",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        "model.n_estimators=10",
        *FAST,
    )
    parent, children = _parent_and_children(client, "wine")
    assert parent.data.params["sampler"] == "random"
    assert len(children) == 3
    assert {c.info.status for c in children} == {"FINISHED"}
    study = _study(workdir)
    assert len({t.system_attrs["runner.owner"] for t in study.trials}) == 1


def test_sigterm_with_two_jobs_ends_every_run(workdir: Path, client: Any) -> None:
    """SIGTERM to an n_jobs=2 sweep: both workers' runs end KILLED, their trials re-queued."""
    from optuna.trial import TrialState

    args = ["-m", "sweep=rf_wine", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2"]
    # 3000 trees: each trial lasts seconds, so both are running when the signal lands.
    args += ["model.n_estimators=3000", *FAST]
    proc = _start(workdir, args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("wine")
        running = exp and client.search_runs(
            [exp.experiment_id], "tags.runner.kind = 'job' and attributes.status = 'RUNNING'"
        )
        if running and len(running) == 2:  # both workers are inside their jobs
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    parent, children = _parent_and_children(client, "wine")
    assert parent.info.status == "KILLED"
    assert len(children) == 2, out
    assert {c.info.status for c in children} == {"KILLED"}, out
    study = _study(workdir)
    assert not any(t.state == TrialState.RUNNING for t in study.trials)
    assert not any(t.state == TrialState.COMPLETE for t in study.trials)


def test_space_follows_hydra_grammar() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from runner.errors import ConfigError
    from runner.sweeps.optuna.space import parse_space

    space = parse_space(
        {"a": "range(2, 10)", "b": "range(0, 10, 3)", "c": "tag(log, interval(0.001, 0.3))"},
        [
            "d=int(interval(1, 5))",
            "e=choice(x, y)",
            "f=range(0.1, 0.4, 0.1)",
            "a=range(2, 5)",  # the command line wins over params
            "seed=3",
        ],
    )
    d = space.distributions
    # The stop included, as the official hydra-optuna-sweeper maps range (the last point
    # the steps reach); a float range stays a stepped float.
    assert d["a"] == IntDistribution(2, 5)
    assert d["b"] == IntDistribution(0, 9, step=3)
    assert d["c"] == FloatDistribution(0.001, 0.3, log=True)
    assert d["d"] == IntDistribution(1, 5)
    assert d["e"] == CategoricalDistribution(["x", "y"])
    assert d["f"] == FloatDistribution(0.1, 0.4, step=0.1)
    assert space.fixed == ["seed=3"]
    grid = parse_space({}, ["a=range(2, 5)", "e=x,y", "f=range(-5.5, 5.5, step=0.5)"]).grid()
    assert grid["a"] == [2, 3, 4, 5] and grid["e"] == ["x", "y"]
    assert len(grid["f"]) == 23 and grid["f"][0] == -5.5 and grid["f"][-1] == 5.5
    with pytest.raises(ConfigError, match="grid sampler needs a discrete space"):
        parse_space({"c": "interval(0.0, 1.0)"}, []).grid()
    with pytest.raises(ConfigError, match=r"'x=interval\(1'.*grammar is"):
        parse_space({}, ["x=interval(1"])
    with pytest.raises(ConfigError, match=r"low .* must be below high"):
        parse_space({"x": "interval(2.0, 1.0)"}, [])


def test_pruning_xgb_rounds(workdir: Path, client: Any) -> None:
    """xgboost reports each boosting round; a pruned trial stops boosting early."""
    proc = run_cli(
        "-m", "sweep=xgb_pruned", "hydra.sweeper.n_trials=8", "model.n_estimators=60", *FAST
    )
    from optuna.trial import TrialState

    study = _study(workdir)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.state) for t in study.trials]
    assert all(len(t.intermediate_values) < 60 for t in pruned)
    assert "Error executing job" not in proc.stdout + proc.stderr  # pruned is no error
    _, children = _parent_and_children(client, "breast_cancer")
    states = {c.data.tags["runner.trial_state"]: c.info.status for c in children}
    assert states == {"COMPLETE": "FINISHED", "PRUNED": "FINISHED"}
