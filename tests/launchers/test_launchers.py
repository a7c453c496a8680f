"""Grid sweeps through each launcher engine, for real: SLURM, Ray, submitit's local executor.

Each sweep is the real CLI in a subprocess; the checks read the tracking store: one parent
per sweep, one child per job nested under it, every run FINISHED. The joblib launcher's grid
is tested in tests/backends/test_backend_services.py (``test_joblib_workers_share_a_fresh_
sqlite_store``) and tests/test_own_app.py (``test_a_grid_nests_every_job_under_one_parent``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_python
from tests.launchers.conftest import assert_one_thread_each, threads_probe
from tests.services import Service, free_port

#: Keep the jobs cheap: no model, figures or importances (configs are still logged).
CHEAP = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")


def _sweep_runs(uri: str, experiment: str) -> tuple[object, list[object]]:  # (parent, jobs)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} in {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in parents]
    for job in jobs:
        assert job.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert job.data.tags["runner.kind"] == "job"
    assert parents[0].data.tags["runner.kind"] == "sweep"
    return parents[0], jobs


def _assert_grid(uri: str, experiment: str, sweep_dir: Path) -> list[object]:
    """One parent, a child per ``lr`` value, all FINISHED, each job's outputs in the sweep dir."""
    parent, jobs = _sweep_runs(uri, experiment)
    assert sorted(r.data.params["lr"] for r in jobs) == ["0.01", "0.1"]  # type: ignore[attr-defined]
    assert {r.info.status for r in [parent, *jobs]} == {"FINISHED"}  # type: ignore[attr-defined]
    assert {r.data.tags["runner.job_num"] for r in jobs} == {"0", "1"}  # type: ignore[attr-defined]
    for num in ("0", "1"):
        assert (sweep_dir / num / ".hydra" / "overrides.yaml").is_file()
    return jobs


def test_a_grid_runs_its_jobs_as_slurm_jobs(
    workdir: Path, slurm: str, sqlite_server: Service
) -> None:
    sweep_dir = workdir / "sweep"
    probe_env, read_probes = threads_probe(workdir)
    run_cli(
        "-m", "hydra/launcher=slurm", f"hydra.launcher.partition={slurm}",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}",
        "backend=server", f"backend.uri={sqlite_server.url}", "experiment_name=on_slurm",
        "lr=0.01,0.1", "model._target_=probe.make", *CHEAP, env=probe_env,
    )  # fmt: skip
    _assert_grid(sqlite_server.url, "on_slurm", sweep_dir)
    assert_one_thread_each(read_probes())  # the runner's job sized them to its allocation
    # submitit submits the batch as one job array, a folder per task (`<array>_<task>`, from
    # hydra.launcher.submitit_folder=.../.submitit/%j): two, each known to slurmctld as
    # COMPLETED in our partition (MinJobAge=300 keeps finished jobs there; accounting, hence
    # sacct, is off), each with submitit's pickled result.
    folder = sweep_dir / ".submitit"
    job_ids = sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(job_ids) == 2, sorted(p.name for p in folder.iterdir())
    for job_id in job_ids:
        shown = _ended_slurm_job(job_id)
        assert "JobState=COMPLETED" in shown and f"Partition={slurm}" in shown, shown
        assert (folder / job_id / f"{job_id}_0_result.pkl").is_file()


def _ended_slurm_job(job_id: str, timeout: float = 60.0) -> str:
    """``scontrol show job``, once slurmctld no longer shows the job RUNNING or COMPLETING.

    submitit's result comes back as the job writes its pickle; the batch script then still
    ends its Python and slurmd reports the end: slurmctld showed a job RUNNING 5 s into it,
    the sweep already returned (CI, on a loaded machine).
    """
    deadline = time.monotonic() + timeout
    while True:
        shown = subprocess.run(
            ["scontrol", "show", "job", job_id],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        state = re.search(r"JobState=(\w+)", shown)
        if state is None or state[1] not in ("RUNNING", "COMPLETING"):
            return shown
        if time.monotonic() > deadline:
            return shown  # still running: the caller's assertion shows it
        time.sleep(0.5)


def test_a_grid_runs_its_jobs_as_ray_tasks(
    workdir: Path, ray_cluster: str, tracking_uri: str
) -> None:
    # A relative sweep dir: Ray's workers run elsewhere (the cluster's own directory), and the
    # launcher runs each job in the launching directory, as Hydra's other launchers do.
    proc = run_cli(
        "-m", "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster}",
        "hydra.sweep.dir=sweep", f"backend.uri={tracking_uri}", "experiment_name=on_ray",
        "lr=0.01,0.1", *CHEAP,
    )  # fmt: skip
    # The fixture's cluster, not a local one (Ray names it by this machine's address).
    port = ray_cluster.rsplit(":", 1)[1]
    assert re.search(rf"Ray: connected to \S+:{port}\b", proc.stdout + proc.stderr), proc.stdout
    jobs = _assert_grid(tracking_uri, "on_ray", workdir / "sweep")
    assert {Path(r.data.tags["runner.output_dir"]).parent for r in jobs} == {  # type: ignore[attr-defined]
        workdir / "sweep"
    }


def test_a_failing_ray_job_is_reported_failed(
    workdir: Path, ray_cluster: str, tracking_uri: str
) -> None:
    proc = run_cli(
        "-m", "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster}",
        "hydra.sweep.dir=sweep", f"backend.uri={tracking_uri}", "experiment_name=ray_fails",
        "model.C=1.0,-1.0", *CHEAP, check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "C must be positive, got -1.0" in output
    parent, jobs = _sweep_runs(tracking_uri, "ray_fails")
    status = {r.data.params["model.C"]: r.info.status for r in jobs}  # type: ignore[attr-defined]
    assert status == {"1.0": "FINISHED", "-1.0": "FAILED"}
    assert parent.info.status == "FAILED"  # type: ignore[attr-defined]


def _training_jobs(uri: str, experiment: str) -> int:
    """How many of the sweep's job runs are RUNNING and have logged an epoch."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    jobs = [r for r in runs if r.data.tags.get("runner.kind") == "job"]
    return sum(bool(client.get_metric_history(r.info.run_id, "train_loss")) for r in jobs)


def _statuses(uri: str, experiment: str) -> tuple[str, list[str]]:
    parent, jobs = _sweep_runs(uri, experiment)
    return parent.info.status, sorted(r.info.status for r in jobs)  # type: ignore[attr-defined]


def _interrupted(workdir: Path, argv: list[str], uri: str, experiment: str) -> str:
    """Run ``python -m runner -m hydra/launcher=ray argv``; SIGTERM it once two of its jobs
    train (the cluster's 2 CPUs, their runs open mid-epoch); its output (exit status 130)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "-m", "hydra/launcher=ray", *argv],
        cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _training_jobs(uri, experiment) < 2:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the jobs never started training"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, out
    return out


#: MLP jobs that would train for hours: only the interrupt ends them. Every epoch's metrics
#: go to the store at once (flush_every_s=0): much of a job's time is then in store calls,
#: where the runner holds an interrupt back (hydra_plugins/runner_ray_launcher/_core.py,
#: _cancel_reaches_the_job).
ENDLESS = (
    "model=mlp", "model.epochs=1000000", "dataset=synthetic", "dataset.n_samples=400",
    "tracking.flush_every_s=0", *CHEAP,
)  # fmt: skip
#: The tag the launching process writes on a run it ended for a job it cancelled.
CLOSED_BY_LAUNCHER = "ended KILLED by the process that launched it on Ray"


@pytest.mark.parametrize(
    "cancel_wait_s", [120, 0], ids=["jobs-end-their-runs", "jobs-killed-at-once"]
)
def test_an_interrupted_ray_sweep_ends_every_run_killed(
    workdir: Path, ray_cluster: str, tracking_uri: str, cancel_wait_s: int
) -> None:
    # With a wait long enough for any machine the cancel itself stops every job, and each
    # job ends its own run (the cluster has SIGINT ignored: the launcher's handler in the job
    # takes the interrupt). With no wait every job is killed at once, and every run is the
    # launching process's to end.
    out = _interrupted(
        workdir,
        [f"hydra.launcher.address={ray_cluster}", f"hydra.launcher.cancel_wait_s={cancel_wait_s}",
         "hydra.sweep.dir=sweep", f"backend.uri={tracking_uri}", "experiment_name=ray_stopped",
         "lr=0.01,0.02", *ENDLESS],
        tracking_uri, "ray_stopped",
    )  # fmt: skip
    # The launcher ends what the jobs left RUNNING before the process exits: at once.
    parent, jobs = _sweep_runs(tracking_uri, "ray_stopped")
    assert parent.info.status == "KILLED", out  # type: ignore[attr-defined]
    assert sorted(r.info.status for r in jobs) == ["KILLED"] * 2, out  # type: ignore[attr-defined]
    closed = [r for r in jobs if "runner.closed_reason" in r.data.tags]  # type: ignore[attr-defined]
    for run in closed:
        assert CLOSED_BY_LAUNCHER in run.data.tags["runner.closed_reason"]  # type: ignore[attr-defined]
    if cancel_wait_s == 0:
        assert "force-cancelled" in out, out
        assert len(closed) == 2, (out, [r.data.tags for r in jobs])  # type: ignore[attr-defined]
    else:
        assert "force-cancelled" not in out, out
        assert not closed, (out, [r.data.tags for r in jobs])  # type: ignore[attr-defined]


def test_an_interrupted_optuna_sweep_on_ray_ends_every_run_killed(
    workdir: Path, ray_cluster: str, tracking_uri: str
) -> None:
    # Two worker jobs on one study (an absolute SQLite file: the cluster is this host), each
    # in an endless trial, killed at once (cancel_wait_s=0, as an external cluster under load
    # does after the wait): the trials' runs are the launching process's to end.
    study = workdir / "study.db"
    out = _interrupted(
        workdir,
        ["hydra/sweeper=optuna", f"hydra.launcher.address={ray_cluster}",
         "hydra.launcher.cancel_wait_s=0", "hydra.sweep.dir=sweep",
         f"hydra.sweeper.storage=sqlite:///{study}", "hydra.sweeper.n_workers=2",
         "hydra.sweeper.n_trials=4", "hydra.sweeper.study_name=ray_optuna_stopped",
         f"backend.uri={tracking_uri}", "experiment_name=ray_optuna_stopped",
         "lr=tag(log, interval(0.001, 0.1))", *ENDLESS],
        tracking_uri, "ray_optuna_stopped",
    )  # fmt: skip
    parent, trials = _sweep_runs(tracking_uri, "ray_optuna_stopped")
    assert parent.info.status == "KILLED", out  # type: ignore[attr-defined]
    assert len(trials) >= 2 and {r.info.status for r in trials} == {"KILLED"}, out  # type: ignore[attr-defined]
    for run in trials:
        tags = run.data.tags  # type: ignore[attr-defined]
        assert CLOSED_BY_LAUNCHER in tags["runner.closed_reason"], tags
        assert tags["runner.trial_state"] == "FAIL", tags
    # The killed workers' trials do not wait RUNNING for the study's next run: voided now,
    # by the launching process, and their params queued again.
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(f"sqlite:///{study}")
    states = {
        t.number: t.state
        for t in optuna.load_study(study_name="ray_optuna_stopped", storage=storage).trials
    }
    assert TrialState.RUNNING not in states.values(), (states, out)
    assert list(states.values()).count(TrialState.WAITING) == len(trials), (states, out)


@pytest.mark.parametrize("cause", ["unreachable", "not-installed"])
def test_ray_that_cannot_run_the_jobs_is_a_config_error(
    workdir: Path, tracking_uri: str, cause: str
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    argv = ["-m", "hydra/launcher=ray", f"hydra.launcher.address={address}", "lr=0.01,0.1"]
    if cause == "unreachable":
        proc = run_cli(*argv, f"backend.uri={tracking_uri}", *CHEAP, check=False)
        expected = [f"No Ray cluster answers at hydra.launcher.address={address}", "ray start"]
    else:
        # A Python without Ray: the import fails as it would in a venv without the [ray] extra.
        shim = (
            "import runpy, sys; sys.modules['ray'] = None; "
            "runpy.run_module('runner', run_name='__main__')"
        )
        proc = run_python(["-c", shim, *argv, f"backend.uri={tracking_uri}", *CHEAP], check=False)
        expected = ["hydra/launcher=ray needs Ray", "pip install 'hydra-mlflow-runner[ray]'"]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    for text in expected:
        assert text in output, output
    assert "Traceback" not in output
    # Nothing left RUNNING: the sweep's parent (made before Hydra sets up the launcher) ends
    # FAILED, and no job ran.
    parent, jobs = _sweep_runs(tracking_uri, "iris")
    assert jobs == []
    assert parent.info.status == "FAILED"  # type: ignore[attr-defined]


def test_a_grid_runs_its_jobs_with_submitit_local(workdir: Path, tracking_uri: str) -> None:
    sweep_dir = workdir / "sweep"
    run_cli(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}",
        f"backend.uri={tracking_uri}", "experiment_name=on_submitit_local",
        "lr=0.01,0.1", *CHEAP,
    )  # fmt: skip
    _assert_grid(tracking_uri, "on_submitit_local", sweep_dir)
    assert list((sweep_dir / ".submitit").iterdir())  # submitit ran them, not Hydra inline


def test_the_ray_launcher_composes_and_imports_ray_only_to_launch(workdir: Path) -> None:
    script = """
import sys
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from runner.config import register

register()
with initialize_config_module("runner.conf", version_base="1.3"):
    cfg = compose("config", return_hydra_config=True, overrides=[
        "hydra/launcher=ray", "hydra.launcher.address=auto", "hydra.launcher.num_cpus=0.5",
        "+hydra.launcher.resources.bigmem=1", "+hydra.launcher.init.runtime_env.env_vars.A=b",
    ])
launcher = instantiate(cfg.hydra.launcher)
assert type(launcher).__name__ == "RayLauncher", type(launcher)
assert launcher.address == "auto"
assert launcher.task_options == {
    "num_cpus": 0.5, "num_gpus": 0, "max_retries": 0, "resources": {"bigmem": 1}
}, launcher.task_options
assert launcher.init == {"runtime_env": {"env_vars": {"A": "b"}}}, launcher.init
assert type(launcher.init["runtime_env"]) is dict  # plain, for Ray
assert launcher.cancel_wait_s == 10.0
from runner.errors import ConfigError
try:
    type(launcher)(cancel_wait_s=-1)
except ConfigError as e:
    assert "hydra.launcher.cancel_wait_s=-1 is negative" in str(e), e
else:
    raise AssertionError("a negative cancel_wait_s was taken")
assert "ray" not in sys.modules
"""
    run_python(["-c", script])
