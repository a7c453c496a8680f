"""Optuna sweeps through Hydra launchers: workers as launcher jobs on one shared study.

Real launchers (hydra-joblib-launcher, hydra-submitit-launcher's local executor), the real
CLI in subprocesses, a real SQLite MLflow store and Optuna storage (PostgreSQL where the
count-and-ask lock is the database's).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.backends.conftest import postgres  # noqa: F401  - the fixture, for the SLURM test
from tests.conftest import run_cli, sigint_as_in_a_terminal
from tests.launchers.conftest import assert_one_thread_each, threads_probe
from tests.services import Service

#: Keep the jobs cheap: no model, figures or importances.
CHEAP = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")
SPACE = "model.C=tag(log, interval(0.01, 10))"


def _storage(url: str, name: str) -> Any:
    import optuna
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool})
    return optuna.load_study(study_name=name, storage=storage)


def _runs(tracking_uri: str, experiment: str) -> tuple[list[Any], list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("runner.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("runner.kind") != "sweep"]
    return parents, children


def _assert_exact(storage: str, name: str, tracking_uri: str, n: int) -> Any:
    """Exactly ``n`` trials, numbers 0..n-1, all COMPLETE; one parent, ``n`` children."""
    from optuna.trial import TrialState

    study = _storage(storage, name)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, trials
    assert sorted(t.number for t in trials) == list(range(n))
    parents, children = _runs(tracking_uri, name)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    assert parents[0].info.status == "FINISHED"
    # Every run is a trial's: a worker job logs no run of its own.
    assert len(children) == n, [c.info.run_name for c in children]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.tags["runner.trial_number"]) for c in children) == list(range(n))
    return study


def _workers(study: Any) -> set[str]:
    """The workers that registered with the study (``host:pid``), all of them done."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    workers = {k.split(":", 1)[1]: v for k, v in attrs.items() if k.startswith("runner.worker:")}
    assert set(workers.values()) <= {"done"}, workers
    return set(workers)


#: A model module that stamps when each process imports it (the worker's first trial
#: imported it there before the workers imported ahead).
STAMPED_MODEL = """\
import os
import time
from pathlib import Path

from sklearn.linear_model import LogisticRegression

Path(os.environ["STAMP_DIR"], f"{os.getpid()}.imported").write_text(repr(time.time()))


def make(task, **kwargs):
    return LogisticRegression(**kwargs)
"""


@pytest.mark.parametrize(
    "launcher",
    [
        ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
        ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"),
    ],
    ids=["joblib", "submitit_local"],
)
def test_workers_run_the_trials_through_the_launcher(
    workdir: Path, tracking_uri: str, launcher: tuple[str, ...]
) -> None:
    (workdir / "stamped.py").write_text(STAMPED_MODEL)
    stamps = workdir / "stamps"
    stamps.mkdir()
    path = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
    proc = run_cli(
        "-m", "hydra/sweeper=optuna", *launcher, "hydra.sweeper.n_workers=2",
        "hydra.sweeper.n_trials=6", "hydra.sweeper.study_name=launched",
        "experiment_name=launched", "model=logreg", "model._target_=stamped.make", SPACE,
        *CHEAP, env={"PYTHONPATH": path, "STAMP_DIR": str(stamps)},
    )  # fmt: skip
    study = _assert_exact(f"sqlite:///{workdir / 'optuna.db'}", "launched", tracking_uri, 6)
    workers = _workers(study)
    assert len(workers) == 2, workers  # both worker jobs ran the sweep loop
    owners = {str(t.system_attrs["runner.owner"]) for t in study.trials}
    assert owners <= workers, (owners, workers)  # no trial ran in the launching process
    # Each worker imported the job's modules before it asked a trial, so a trial's Optuna
    # start is its own, not the worker's start-up (MLflow, the model's library: seconds).
    imported = {p.name.split(".")[0]: float(p.read_text()) for p in stamps.iterdir()}
    for t in study.trials:
        pid = str(t.system_attrs["runner.owner"]).rsplit(":", 1)[1]
        assert pid in imported, (t.number, pid, imported)
        assert imported[pid] < t.datetime_start.timestamp(), (t.number, imported[pid])
    # Objectives are named for optuna-dashboard and plots.
    assert study.metric_names == ["val_accuracy"]
    # The launching process showed the progress and wrote the results.
    (results,) = workdir.glob("multirun/*/*/optimization_results.yaml")
    assert "best_value" in results.read_text()
    assert "6/6 done" in proc.stdout + proc.stderr
    # Each worker's own Hydra output is apart from the trials' job dirs.
    sweep = results.parent
    assert sorted(p.name for p in (sweep / ".runner" / "workers").iterdir()) == [
        "worker-0",
        "worker-1",
    ]


def test_metric_names_without_a_launcher(workdir: Path, tracking_uri: str) -> None:
    run_cli(
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=named", "model=logreg", SPACE, *CHEAP,
    )  # fmt: skip
    assert _storage(f"sqlite:///{workdir / 'optuna.db'}", "named").metric_names == ["val_accuracy"]


@pytest.mark.parametrize(
    ("launcher", "storage", "says"),
    [
        ("submitit_slurm", "sqlite:///optuna.db", "relative to the launch directory"),
        ("submitit_slurm", "null", "in-memory"),
        ("joblib", "null", "in-memory"),
        ("submitit_local", "sqlite:///:memory:", "in-memory"),
    ],
)
def test_a_storage_the_workers_cannot_reach_is_refused_before_submitting(
    workdir: Path, tracking_uri: str, launcher: str, storage: str, says: str
) -> None:
    proc = run_cli(
        "-m", "hydra/sweeper=optuna", f"hydra/launcher={launcher}",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_workers=2",
        "hydra.sweeper.n_trials=2", "model=logreg", SPACE, *CHEAP, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert says in out and "PostgreSQL" in out, out
    assert not list(workdir.glob("multirun/*/*/.submitit")), "a job was submitted"
    assert not (workdir / "optuna.db").exists()  # refused before the study was made
    parents, children = _runs(tracking_uri, "iris") if _has_experiment(tracking_uri) else ([], [])
    assert not parents and not children


def _has_experiment(tracking_uri: str) -> bool:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri).get_experiment_by_name("iris") is not None


def test_an_absolute_sqlite_file_is_fine_on_this_host(workdir: Path, tracking_uri: str) -> None:
    db = workdir / "shared" / "study.db"
    db.parent.mkdir()
    run_cli(
        "-m", "hydra/sweeper=optuna", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_workers=2",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=abs",
        "experiment_name=abs", "model=logreg", SPACE, *CHEAP,
    )  # fmt: skip
    _assert_exact(f"sqlite:///{db}", "abs", tracking_uri, 3)


def test_failing_workers_stop_the_study_and_fail_the_parent(
    workdir: Path, tracking_uri: str
) -> None:
    from optuna.trial import TrialState

    proc = run_cli(
        "-m", "hydra/sweeper=optuna", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_workers=2", "hydra.sweeper.n_trials=6",
        "hydra.sweeper.study_name=failing", "experiment_name=failing", "model=logreg",
        "model.C=choice(-1.0, -2.0)",  # scikit-learn rejects C <= 0: every trial fails
        *CHEAP, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "study 'failing'" in out and "failed" in out, out
    study = _storage(f"sqlite:///{workdir / 'optuna.db'}", "failing")
    trials = study.get_trials()
    # Stopped: no worker went on to the study's six trials after the first failures.
    assert 1 <= len(trials) < 6 and {t.state for t in trials} == {TrialState.FAIL}, trials
    parents, children = _runs(tracking_uri, "failing")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert "runner.error" in parents[0].data.tags
    assert {c.info.status for c in children} == {"FAILED"}


def _running_trial_of_a_worker(storage: str, launcher_pid: int) -> int | None:
    """The pid of a worker with a RUNNING trial, if any.

    Read with plain SQL on a read-only connection: opening the file with Optuna's
    RDBStorage while the sweep creates its tables would race it (``table ... already
    exists`` in the sweep).
    """
    import sqlite3

    path = Path(storage[len("sqlite:///") :])
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute(
                "SELECT a.value_json FROM trials t JOIN trial_system_attributes a "
                "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' AND a.key = 'runner.owner'"
            ).fetchall()
    except sqlite3.Error:  # its tables are not made yet
        return None
    for (value,) in rows:
        pid = int(str(json.loads(value)).rpartition(":")[2] or 0)
        if pid and pid != launcher_pid:
            return pid
    return None


def _open_trial_runs(tracking_uri: str, experiment: str) -> int:
    """How many trials' runs of ``experiment`` are RUNNING."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    return sum(r.data.tags.get("runner.kind") == "job" for r in runs)


def test_a_sigkilled_worker_leaves_nothing_running(workdir: Path, tracking_uri: str) -> None:
    from optuna.trial import TrialState

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", "hydra/sweeper=optuna",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         "hydra.sweeper.n_workers=2", "hydra.sweeper.n_trials=3",
         "hydra.sweeper.study_name=killed", "experiment_name=killed",
         "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
         # Trials of a few seconds: the kill lands mid-trial.
         "model=mlp", "model.epochs=60", "dataset=synthetic", "dataset.n_samples=400",
         "lr=tag(log, interval(0.001, 0.1))", *CHEAP],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no worker ever started a trial"
            pid = _running_trial_of_a_worker(storage, proc.pid)
            if pid is not None and _open_trial_runs(tracking_uri, "killed"):
                victim = pid
            else:
                time.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out  # the survivor re-ran the dead worker's trial

    trials = _storage(storage, "killed").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, trials
    assert str(failed[0].system_attrs["runner.owner"]).endswith(f":{victim}")
    done = [t for t in trials if t.state != TrialState.FAIL]
    assert [t.state for t in done] == [TrialState.COMPLETE] * 3, trials
    assert [t.user_attrs.get("runner.retry_of") for t in done].count(failed[0].number) == 1

    parents, children = _runs(tracking_uri, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    # No close-stale needed: the dead trial's run was ended KILLED by whoever re-queued it.
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3 + ["KILLED"], out
    (killed,) = [c for c in children if c.info.status == "KILLED"]
    assert killed.data.tags["runner.trial_number"] == str(failed[0].number)
    assert "died" in killed.data.tags["runner.closed_reason"]


def _postgres_study(server: Service, database: str) -> str:
    """The Optuna storage URL of ``database``, made empty on the PostgreSQL ``server``."""
    import psycopg

    conninfo = server.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database}")
        conn.execute(f"CREATE DATABASE {database}")
    return server.url.rsplit("/", 1)[0] + "/" + database


def _two_workers(storage: str, name: str, n_trials: int, tracking_uri: str) -> tuple[str, ...]:
    """A study ``name`` of ``n_trials`` logreg trials on ``storage``, run by two workers."""
    return (
        "hydra.sweeper.n_workers=2", f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.heartbeat_interval=5",
        f"hydra.sweeper.study_name={name}", f"experiment_name={name}",
        "backend=server", f"backend.uri={tracking_uri}", "model=logreg", SPACE, *CHEAP,
    )  # fmt: skip


def test_workers_run_as_slurm_jobs_on_one_postgres_study(
    workdir: Path,
    slurm: str,
    postgres: Service,  # noqa: F811  - the fixture imported above
    sqlite_server: Service,
) -> None:
    storage = _postgres_study(postgres, "optuna_slurm")
    sweep_dir = workdir / "sweep"
    probe_env, read_probes = threads_probe(workdir)
    run_cli(
        "-m", "hydra/sweeper=optuna", "hydra/launcher=slurm", f"hydra.launcher.partition={slurm}",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}",
        *_two_workers(storage, "on-slurm", 4, sqlite_server.url), "model._target_=probe.make",
        env=probe_env,
    )  # fmt: skip
    study = _assert_exact(storage, "on-slurm", sqlite_server.url, 4)
    workers = _workers(study)
    assert len(workers) == 2, workers
    assert {str(t.system_attrs["runner.owner"]) for t in study.trials} <= workers
    # Each job's pools have the one CPU it was allocated, not one thread per CPU of the
    # node: this cluster's TaskPlugin=task/none leaves every job free to run on all of them.
    assert_one_thread_each(read_probes())
    # One job array of two tasks, each with submitit's pickled result.
    folder = sweep_dir / ".submitit"
    tasks = sorted(p.name for p in folder.iterdir() if p.name.count("_") == 1)
    assert len(tasks) == 2, sorted(p.name for p in folder.iterdir())
    for task in tasks:
        assert (folder / task / f"{task}_0_result.pkl").is_file()


def test_workers_run_as_ray_tasks_on_one_postgres_study(
    workdir: Path,
    ray_cluster: str,
    postgres: Service,  # noqa: F811  - the fixture imported above
    sqlite_server: Service,
) -> None:
    storage = _postgres_study(postgres, "optuna_ray")
    # A relative sweep dir: the launcher runs each worker job in the launching directory.
    proc = run_cli(
        "-m", "hydra/sweeper=optuna", "hydra/launcher=ray",
        f"hydra.launcher.address={ray_cluster}", "hydra.sweep.dir=sweep",
        *_two_workers(storage, "on-ray", 6, sqlite_server.url),
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    # The fixture's cluster ran the workers, not a local one started by the launcher.
    port = ray_cluster.rsplit(":", 1)[1]
    assert f":{port}" in out and "Ray: connected to" in out, out
    study = _assert_exact(storage, "on-ray", sqlite_server.url, 6)
    workers = _workers(study)
    assert len(workers) == 2, workers  # both worker jobs ran the sweep loop, as Ray tasks
    # Every trial ran in one of the two worker jobs (Ray worker processes), none in the
    # launching process.
    owners = {str(t.system_attrs["runner.owner"]) for t in study.trials}
    assert owners <= workers, (owners, workers)
    assert "6/6 done" in out, out
    (results,) = (workdir / "sweep").glob("optimization_results.yaml")
    assert "best_value" in results.read_text()
    assert sorted(p.name for p in (workdir / "sweep" / ".runner" / "workers").iterdir()) == [
        "worker-0",
        "worker-1",
    ]


@pytest.mark.parametrize("engine", ["ray", "joblib", "submitit_local"])
def test_ctrl_c_mid_trial_leaves_nothing_running(
    engine: str, workdir: Path, tracking_uri: str, request: pytest.FixtureRequest
) -> None:
    """Ctrl-C (SIGINT to the launching terminal's process group) while both workers are in
    a trial: exit 130, the parent KILLED, every trial's run KILLED or FINISHED, and every
    interrupted trial voided (FAIL) and queued again for a resume; nothing RUNNING."""
    from optuna.trial import TrialState

    if engine == "ray":
        # The session's cluster: its workers are not in the terminal's process group, so
        # only the launching process's cancel reaches their trials.
        address = request.getfixturevalue("ray_cluster")
        # A long wait: the cancel itself must stop the trials (the cluster's workers have
        # SIGINT ignored), not a force-cancel after it, nor their own end.
        launcher = ["hydra/launcher=ray", f"hydra.launcher.address={address}",
                    "hydra.launcher.cancel_wait_s=120"]  # fmt: skip
    elif engine == "joblib":
        launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    else:
        launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with sigint_as_in_a_terminal():  # not ignored, as a background suite has it
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "-m", "hydra/sweeper=optuna", *launcher,
             "hydra.sweeper.n_workers=2", "hydra.sweeper.n_trials=4",
             f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=stopped",
             "experiment_name=stopped",
             # Trials of a minute: the interrupt lands mid-trial.
             "model=mlp", "model.epochs=3000", "dataset=synthetic", "dataset.n_samples=400",
             "lr=tag(log, interval(0.001, 0.1))", *CHEAP],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own group, as a terminal's foreground job
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while _open_trial_runs(tracking_uri, "stopped") < 2:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the two workers never were in a trial"
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, out
    if engine == "ray":
        assert "force-cancelled" not in out, out

    trials = _storage(storage, "stopped").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING], trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2, trials  # the two interrupted ones, voided ...
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs.get("runner.retry_of") for t in queued) == sorted(
        t.number for t in failed
    ), trials  # ... and queued again with their params
    parents, children = _runs(tracking_uri, "stopped")
    assert [p.info.status for p in parents] == ["KILLED"], out
    assert sorted(c.info.status for c in children) == ["KILLED", "KILLED"], out
