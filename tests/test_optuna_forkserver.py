"""``hydra.sweeper.n_jobs`` workers are forks of a forkserver that imported what a trial needs.

The real CLI in a subprocess, a real SQLite store and study; a model of the test's own
records, inside each trial, what its worker process looks like.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from runner.threads import THREAD_VARIABLES, cores
from tests.conftest import run_cli, run_python, sigint_as_in_a_terminal

FAST = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")

#: A logreg that writes, from inside each trial, its worker's parentage, what was already
#: imported when the worker imported this module (init_worker) and its blocked signals.
PROBE = """\
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info

PRELOADED = {m: m in sys.modules for m in ("sklearn.metrics", "mlflow", "runner.app", "git")}
# MLflow's map of installed packages, which every log_model reads (built at its first use).
_requirements = sys.modules.get("mlflow.utils.requirements_utils")
PACKAGES_MAP = getattr(_requirements, "_PACKAGES_TO_MODULES", None) is not None


def _started(pid):
    # When process pid started, on time.time's clock: /proc has it in clock ticks since
    # boot (CLOCK_BOOTTIME).
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    since = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return since + ticks / os.sysconf("SC_CLK_TCK")


def make(task, **kwargs):
    return Probe(**kwargs)


class Probe(LogisticRegression):
    def fit(self, X, y, **kwargs):
        ppid = os.getppid()
        cmdline = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\\0", b" ").decode()
        record = {
            "ppid": ppid,
            "server_started": _started(ppid),
            "parent_cmdline": cmdline,
            "sweep": multiprocessing.parent_process().pid,
            "preloaded": PRELOADED,
            "packages_map": PACKAGES_MAP,
            "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "threads": sorted({p["num_threads"] for p in threadpool_info()}),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        }
        out = Path(os.environ["PROBE_DIR"], f"{os.getpid()}.json")
        out.write_text(json.dumps(record))
        return super().fit(X, y, **kwargs)
"""


def _probe_sweep(
    workdir: Path, env: dict[str, str] | None = None, overrides: tuple[str, ...] = FAST
) -> list[dict[str, Any]]:
    """Four trials on two n_jobs workers of the probe model: each worker's record."""
    (workdir / "probe.py").write_text(PROBE)
    probes = workdir / "probes"
    probes.mkdir()
    path = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
    run_cli(
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
        "model.C=tag(log, interval(0.01, 10))", "model._target_=probe.make", *overrides,
        env={"PYTHONPATH": path, "PROBE_DIR": str(probes), **(env or {})},
    )  # fmt: skip
    return [json.loads(p.read_text()) for p in probes.glob("*.json")]


def test_workers_fork_from_a_preloaded_server(workdir: Path, tracking_uri: str) -> None:
    records = _probe_sweep(workdir)
    assert len(records) == 2, records  # two workers ran the four trials
    (server,) = {r["ppid"] for r in records}  # both forked by one server ...
    (sweep,) = {r["sweep"] for r in records}
    assert server != sweep, records  # ... which is not the sweep process
    assert all("forkserver" in r["parent_cmdline"] for r in records), records
    # What every trial imports was there before the worker imported the job's own module.
    assert all(all(r["preloaded"].values()) for r in records), records
    # SIGINT and SIGTERM were blocked while the server started; a worker unblocks them.
    assert all(r["blocked"] == [] for r in records), records
    # No model is logged: MLflow's packages map is not built (start-up spent for nothing).
    assert not any(r["packages_map"] for r in records), records


def test_the_server_builds_mlflows_packages_map_once_for_every_worker(
    workdir: Path, tracking_uri: str
) -> None:
    """With models logged, the forkserver builds MLflow's map of installed packages (0.3 s
    here, read by every log_model) and each worker inherits it: it is there before the
    worker imports the job's module, i.e. before its first trial, which paid it before."""
    records = _probe_sweep(workdir, overrides=(*FAST[1:], "tracking.log_model=true"))
    assert len(records) == 2, records
    assert all(r["packages_map"] for r in records), records


def test_the_server_starts_as_the_sweep_begins(workdir: Path, tracking_uri: str) -> None:
    """Started by the StartWorkers callback, listed before the MLflow callback, its imports
    overlap this process's: it is up before the MLflow callback creates the experiment
    (the sweeper, which started it before, comes after: it then started a second or two
    later, and the first trial waited for its imports)."""
    from mlflow.tracking import MlflowClient

    (record, *_) = _probe_sweep(workdir)
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("iris")
    assert experiment is not None
    assert record["server_started"] < experiment.creation_time / 1000, record


def test_workers_share_the_cores_for_their_native_threads(workdir: Path, tracking_uri: str) -> None:
    """Two workers each get half the cores for BLAS/OpenMP, not one thread per core each."""
    # The user's own setting is the other test; here the environment must leave it to us.
    assert not [v for v in THREAD_VARIABLES if v in os.environ], "unset them to run this"
    records = _probe_sweep(workdir)
    share = max(1, cores() // 2)
    assert records and all(r["threads"] == [share] for r in records), (share, records)
    # Set for what a worker loads later, too (the user's torch reads OMP_NUM_THREADS).
    assert all(r["omp"] == str(share) for r in records), records


def test_a_thread_count_the_user_set_is_kept(workdir: Path, tracking_uri: str) -> None:
    records = _probe_sweep(workdir, env={"OPENBLAS_NUM_THREADS": "7", "OMP_NUM_THREADS": "7"})
    assert records and all(r["omp"] == "7" for r in records), records
    assert all(7 in r["threads"] for r in records), records


#: A process that slurmd started for job 7 (a batch script or an srun step).
JOB = {"SLURM_JOB_ID": "7", "SLURMD_NODENAME": "node1"}


@pytest.mark.parametrize(
    ("slurm", "workers", "expected"),
    [
        ({}, 1, None),  # one worker alone: the libraries' own default
        ({}, 2, 1),
        ({**JOB, "SLURM_CPUS_PER_TASK": "1"}, 1, 1),  # narrower than the node
        ({**JOB, "SLURM_CPUS_PER_TASK": "2"}, 1, None),  # all it can run on
        ({**JOB, "SLURM_CPUS_PER_TASK": "2"}, 2, 1),
        ({**JOB, "SLURM_CPUS_PER_TASK": "64"}, 1, None),  # never above affinity
        ({"SLURM_CPUS_PER_TASK": "1"}, 1, None),  # left over outside a job: not an allocation
        # A `salloc -c 1` shell on the login node: a job, but not a process on its node.
        ({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1"}, 1, None),
        ({**JOB, "SLURM_JOB_ID": "", "SLURM_CPUS_PER_TASK": "1"}, 1, None),
        ({**JOB, "SLURM_CPUS_PER_TASK": "0"}, 1, None),
        ({**JOB, "SLURM_CPUS_PER_TASK": "two"}, 1, None),
        ({**JOB, "SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "3"}, 1, None),
    ],
)
def test_a_slurm_allocation_narrower_than_the_node_limits_threads(
    monkeypatch: pytest.MonkeyPatch, slurm: dict[str, str], workers: int, expected: int | None
) -> None:
    """A SLURM job on a node without SLURM's affinity plugin may run on every CPU of the
    node: its libraries' pools get the CPUs it was allocated, not one thread per node CPU."""
    from runner import threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a 2-CPU node
    for name in [*THREAD_VARIABLES, "SLURM_JOB_ID", "SLURMD_NODENAME", "SLURM_CPUS_PER_TASK"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert threads.share(workers) == expected


def test_launched_workers_on_this_host_share_it() -> None:
    from omegaconf import OmegaConf

    from runner.sweeps.optuna._launched import workers_here

    def launcher(target: str) -> Any:
        return OmegaConf.create({"hydra": {"launcher": {"_target_": target}}})

    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    ray = "hydra_plugins.runner_ray_launcher.launcher.RayLauncher"
    assert workers_here(launcher(local), 3) == 3
    assert workers_here(launcher(slurm), 3) == 1  # each SLURM job has its own allocation
    assert workers_here(launcher(ray), 3) == 1


def _config(**sweeper: Any) -> Any:
    from omegaconf import OmegaConf

    optuna = "hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    node = {"_target_": optuna, "n_jobs": 2, **sweeper}
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    return OmegaConf.create({"hydra": {"sweeper": node, "launcher": {"_target_": basic}}})


def test_the_server_is_started_early_only_for_a_pool_of_workers() -> None:
    from omegaconf import OmegaConf

    from runner.sweeps.optuna.warm import uses_pool

    assert uses_pool(_config())
    assert not uses_pool(_config(n_jobs=1))
    assert not uses_pool(_config(n_jobs="two"))  # the sweeper's own check reports it
    grid = _config(_target_="hydra_plugins.runner_grid_sweeper.grid_sweeper.GridSweeper")
    assert not uses_pool(grid)
    launched = _config()
    launched.hydra.launcher = OmegaConf.create({"_target_": "joblib.Launcher"})
    assert not uses_pool(launched)  # workers are the launcher's jobs, not forks of it


def _runner_app(*overrides: str) -> Any:
    from hydra import compose, initialize_config_module

    from runner.config import register

    register()
    with initialize_config_module("runner.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_the_server_preloads_what_the_trials_use(workdir: Path, tracking_uri: str) -> None:
    from runner.sweeps.optuna.warm import preloads

    tracked = preloads(_runner_app())
    for name in ("mlflow", "git", "runner.app", "mlflow.sklearn", "matplotlib.figure"):
        assert name in tracked, tracked
    assert "mlflow.store.tracking.sqlalchemy_store" in tracked
    assert "sqlalchemy.dialects.sqlite" in tracked
    server = preloads(_runner_app("backend=server", "backend.uri=http://127.0.0.1:5000"))
    assert "mlflow.store.tracking.rest_store" in server
    assert "mlflow.store.tracking.sqlalchemy_store" not in server
    untracked = preloads(_runner_app("backend=none"))
    assert "runner.app" in untracked and "mlflow" not in untracked, untracked
    # The forkserver skips a module that does not import: a name gone wrong would cost
    # every worker its import at its first trial, and nothing would say so.
    run_python(["-c", f"import {', '.join(tracked + server)}"], cwd=workdir)


def test_a_launched_worker_imports_ahead_and_survives_a_failing_module(
    workdir: Path, tracking_uri: str, monkeypatch: Any
) -> None:
    import sys

    from runner.sweeps.optuna.warm import import_ahead

    (workdir / "ahead_ok.py").write_text("LOADED = True\n")
    (workdir / "ahead_boom.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(workdir))
    from mlflow.utils import requirements_utils

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils, "_PACKAGES_TO_MODULES", None)
    import_ahead(_runner_app("model._target_=ahead_ok.make", "dataset._target_=ahead_boom.load"))
    assert sys.modules["ahead_ok"].LOADED
    assert "ahead_boom" not in sys.modules  # its trial imports it again and reports the error
    # MLflow's packages map, which each log_model reads, was built ahead.
    assert requirements_utils._PACKAGES_TO_MODULES
    # Not when the trials log no model: the walk would be start-up spent for nothing.
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils, "_PACKAGES_TO_MODULES", None)
    import_ahead(_runner_app("tracking.log_model=false"))
    assert requirements_utils._PACKAGES_TO_MODULES is None


#: A model module that presses Ctrl-C (SIGINT to the sweep's whole process group, as a
#: terminal does) while the first worker imports it, i.e. while the workers start.
CTRL_C_AT_IMPORT = """\
import os
import signal
from pathlib import Path

from sklearn.linear_model import LogisticRegression

_marker = Path(os.environ["PROBE_DIR"], "pressed")
if not _marker.exists():
    _marker.write_text(Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace"))
    os.killpg(0, signal.SIGINT)


def make(task, **kwargs):
    return LogisticRegression(**kwargs)
"""


def test_ctrl_c_while_the_workers_start_is_quiet(workdir: Path, tracking_uri: str) -> None:
    """Exit 130, one interruption line, no traceback from a worker or the server."""

    (workdir / "ctrlc.py").write_text(CTRL_C_AT_IMPORT)
    path = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
    with sigint_as_in_a_terminal():  # not ignored, as a background suite has it
        proc = run_python(
            [
                "-m", "runner", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4",
                "hydra.sweeper.n_jobs=2", "model._target_=ctrlc.make",
                "model.C=tag(log, interval(0.01, 10))", *FAST,
            ],
            cwd=workdir,
            env={"PYTHONPATH": path, "PROBE_DIR": str(workdir)},
            timeout=120,
            check=False,
            start_new_session=True,  # the group signalled is the sweep's alone
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    # Pressed in a worker (a child of the forkserver), not in the sweep process.
    assert "forkserver" in (workdir / "pressed").read_text(), out
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "KeyboardInterrupt" not in out, out
