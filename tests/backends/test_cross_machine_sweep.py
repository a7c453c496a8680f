"""Sweep processes sharing one Optuna study in PostgreSQL and one MLflow tracking server.

Two ``python -m runner -m hydra/sweeper=optuna`` processes stand for two machines: the only
things they share are the PostgreSQL study and the tracking server (each has its own launch
directory, so no file lock is shared). Reuses the session's PostgreSQL and server fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cli
from tests.services import Service

#: Keep the jobs cheap: no model, figures or importances.
CHEAP = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")
SPACE = "model.C=tag(log, interval(0.01, 10))"


def _database(postgres: Service, name: str) -> str:
    """A fresh database on the session's PostgreSQL server, as a SQLAlchemy URL."""
    import psycopg

    conninfo = postgres.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + "/" + name


def _sweep(cwd: Path, server: Service, *args: str) -> subprocess.Popen[str]:
    """One sweep process ("machine") in its own launch directory."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", "hydra/sweeper=optuna", "backend=server",
         f"backend.uri={server.url}", *CHEAP, *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # Imports find the project's packages (runner, models) from any launch directory.
        start_new_session=True,
    )  # fmt: skip


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return outputs


def _trials(url: str, name: str, states: tuple[Any, ...] | None = None) -> list[Any]:
    """The study's trials, read without leaving a pooled connection open."""
    import optuna
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(states=states)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _children(client: Any, experiment: str) -> tuple[list[Any], list[Any]]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("runner.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("runner.kind") != "sweep"]
    return parents, children


def test_two_processes_share_one_study_and_one_parent(
    workdir: Path, postgres: Service, sqlite_server: Service
) -> None:
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    url = _database(postgres, "xm_share")
    common = (
        "hydra.sweeper.n_trials=6", f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=xm-share", "experiment_name=xm-share", "model=logreg",
        "model.C=tag(log, interval(0.01, 10))",
    )  # fmt: skip
    procs = [_sweep(workdir / f"machine-{m}", sqlite_server, *common) for m in "ab"]
    outputs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)

    trials = _trials(url, "xm-share")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, trials
    assert sorted(t.number for t in trials) == list(range(6))
    owners = {t.system_attrs["runner.owner"] for t in trials}
    assert len(owners) == 2, owners  # both processes ran trials

    parents, children = _children(MlflowClient(sqlite_server.url), "xm-share")
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(children) == 6
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    numbers = sorted(int(c.data.tags["runner.trial_number"]) for c in children)
    assert numbers == list(range(6))  # none duplicated, none missing
    assert parent.data.metrics["n_complete"] == 6


def _running_trial_of(url: str, name: str, pid: int) -> bool:
    """Whether process ``pid`` has a RUNNING trial in study ``name``.

    Plain SQL: opening the database with Optuna's RDBStorage while a sweep creates its
    tables would race that sweep (outside its schema lock).
    """
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT a.value_json FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
                "WHERE s.study_name = %s AND t.state = 'RUNNING' AND a.key = 'runner.owner'",
                (name,),
            ).fetchall()
    except psycopg.Error:  # its tables are not made yet
        return False
    return any(str(json.loads(v)).endswith(f":{pid}") for (v,) in rows)


def _running_run_in(client: Any, experiment: str, launch_dir: Path) -> bool:
    """Whether a job run of ``experiment`` launched from ``launch_dir`` is RUNNING."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return any(
        r.data.tags.get("runner.output_dir", "").startswith(str(launch_dir))
        and r.data.tags.get("runner.kind") == "job"
        for r in runs
    )


def test_a_killed_worker_is_retried_and_closed(
    workdir: Path, postgres: Service, sqlite_server: Service
) -> None:
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    url = _database(postgres, "xm_kill")
    common = (
        "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={url}",
        "hydra.sweeper.study_name=xm-kill", "experiment_name=xm-kill",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
        # Trials of a few seconds: the kill lands mid-trial.
        "model=mlp", "model.epochs=60", "dataset=synthetic", "dataset.n_samples=400",
        "lr=tag(log, interval(0.001, 0.1))",
    )  # fmt: skip
    victim = _sweep(workdir / "machine-b", sqlite_server, *common)
    survivor = _sweep(workdir / "machine-a", sqlite_server, *common)
    client = MlflowClient(sqlite_server.url)
    deadline = time.monotonic() + 120
    # Kill it mid-trial: its Optuna trial RUNNING and its job's MLflow run open.
    while not (
        _running_trial_of(url, "xm-kill", victim.pid)
        and _running_run_in(client, "xm-kill", workdir / "machine-b")
    ):
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "the victim never started a trial"
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=30)
    out = _finish([survivor])[0]
    assert survivor.returncode == 0, out

    trials = _trials(url, "xm-kill")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, trials  # the killed trial, failed by the survivor (heartbeat)
    assert str(failed[0].system_attrs["runner.owner"]).endswith(f":{victim.pid}")
    others = [t for t in trials if t.state != TrialState.FAIL]
    assert [t.state for t in others] == [TrialState.COMPLETE] * 3, trials
    retry = [t for t in others if t.user_attrs.get("runner.retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params  # re-tried by the survivor

    parents, children = _children(client, "xm-kill")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    # No close-stale needed: the survivor that re-queued the dead trial ended its run KILLED.
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3 + ["KILLED"], out
    (killed,) = [c for c in children if c.info.status == "KILLED"]
    assert killed.data.tags["runner.trial_number"] == str(failed[0].number)
    assert killed.data.tags["runner.trial_state"] == "FAIL"
    assert "died" in killed.data.tags["runner.closed_reason"]


def _quad(workdir: Path, storage: str, name: str, tracking_uri: str) -> list[Any]:
    """Four sweep processes on one study, each from its own launch directory.

    Every ``Study.ask`` waits 0.2 s first (``tests/faults.py --slow``): without the study
    lock around count-and-ask, processes that count the same last free trial then all ask,
    every time, instead of once in a while.
    """
    from optuna.trial import TrialState

    common = (
        "hydra.sweeper.n_trials=12", f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={name}", f"experiment_name={name}", "model=logreg",
        "model.C=tag(log, interval(0.01, 10))", f"backend.uri={tracking_uri}", *CHEAP,
    )  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for m in range(4):
        cwd = workdir / f"process-{m}"
        cwd.mkdir()
        slow_ask = (str(ROOT / "tests" / "faults.py"), "--slow", "optuna.study.study:Study.ask")
        command = [sys.executable, *slow_ask, "0.2", "--", "-m", "hydra/sweeper=optuna", *common]
        procs.append(
            subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = _finish(procs)
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    trials = _trials(storage, name)
    # Exactly n_trials: no surplus trial asked for and FAILed for bookkeeping.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12, trials
    assert sorted(t.number for t in trials) == list(range(12))
    return trials


def _assert_one_parent_twelve_children(tracking_uri: str, name: str) -> None:
    from mlflow.tracking import MlflowClient

    parents, children = _children(MlflowClient(tracking_uri), name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sorted(int(c.data.tags["runner.trial_number"]) for c in children) == list(range(12))


def test_four_processes_ask_exactly_n_trials_on_postgres(
    workdir: Path, postgres: Service, tracking_uri: str
) -> None:
    url = _database(postgres, "quad")
    _quad(workdir, url, "quad-pg", tracking_uri)
    _assert_one_parent_twelve_children(tracking_uri, "quad-pg")


def test_four_processes_ask_exactly_n_trials_on_sqlite(workdir: Path, tracking_uri: str) -> None:
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    _quad(workdir, storage, "quad-sqlite", tracking_uri)
    _assert_one_parent_twelve_children(tracking_uri, "quad-sqlite")


def _assert_forty(storage: str, name: str, tracking_uri: str) -> None:
    """Exactly 40 trials, numbers 0..39 once each, none FAIL; one parent, 40 children."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    trials = _trials(storage, name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 40, trials
    assert sorted(t.number for t in trials) == list(range(40))
    parents, children = _children(MlflowClient(tracking_uri), name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 40
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.tags["runner.trial_number"]) for c in children) == list(range(40))


#: The stress test's repetitions per storage (each: 4 workers x 40 trials, 25 s on two
#: cores, up to 95 s when they are shared); RUNNER_STRESS_REPEATS=10 for a longer soak.
REPEATS = int(os.environ.get("RUNNER_STRESS_REPEATS", "3"))


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_four_workers_ask_exactly_forty_trials(
    workdir: Path, tracking_uri: str, backend: str, request: pytest.FixtureRequest
) -> None:
    """4 workers x 40 trials, several times: exactly 40, numbers 0..39, none FAIL."""
    for rep in range(REPEATS):
        name = f"stress-{backend}-{rep}"
        if backend == "postgres":
            postgres = request.getfixturevalue("postgres")
            storage = _database(postgres, name.replace("-", "_"))
        else:
            storage = f"sqlite:///{workdir / f'{name}.db'}"
        run_cli(
            "-m", "hydra/sweeper=optuna", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
            "hydra.sweeper.n_workers=4", "hydra.sweeper.n_trials=40",
            f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={name}",
            f"experiment_name={name}", "hydra/sweeper/sampler=random", "model=logreg", SPACE,
            *CHEAP, timeout=600,
        )  # fmt: skip
        _assert_forty(storage, name, tracking_uri)
