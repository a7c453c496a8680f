"""Session-scoped engines for the launcher tests: a one-node SLURM cluster, a local Ray cluster.

Both are real and neither is ever skipped: an engine that cannot start fails the tests that
need it, with the reason and the fix (CI installs both: ``.ci/run``).

- ``slurm``: the partition name (``"cpu"``) of the one-node cluster ``.ci/slurm-up`` runs on
  this machine; started by the fixture when ``sinfo`` does not answer (needs root). Jobs go
  there with ``hydra/launcher=slurm hydra.launcher.partition=<slurm>``.
- ``ray_cluster``: the address (``"127.0.0.1:<port>"``) of a local Ray head node (2 CPUs, no
  dashboard) started once per session and stopped at its end. Jobs connect with
  ``hydra/launcher=ray hydra.launcher.address=<ray_cluster>``. The cluster takes a token
  (Ray 2.60's token authentication, as its GCS port listens on every interface): for the
  session ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` are set in this process's
  environment, which ``run_cli`` passes on, so the jobs' drivers connect.
- ``sqlite_server`` (from tests/backends/conftest.py): a tracking server the jobs log to
  (``backend=server backend.uri=<sqlite_server.url>``).

Under pytest-xdist one worker runs every test of this directory (tests/conftest.py's
scheduler): the machine has one SLURM cluster, a second Ray head node would want the first
one's fixed ports (its client server's 10001), and each engine's 2 CPUs are sized for one
test at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# A tracking server on a SQLite store (session-scoped): what jobs on a cluster log to.
from tests.backends.conftest import sqlite_server  # noqa: F401
from tests.conftest import ROOT
from tests.services import free_port

#: The partition ``.ci/slurm-up`` configures (Default=YES).
SLURM_PARTITION = "cpu"
#: Node states in which the node takes jobs (sinfo's short forms, without the * ~ # suffixes).
_UP_STATES = {"idle", "mix", "alloc", "comp"}
#: Starting Ray's head node (GCS, raylet, workers' prestart) takes 10-20 s on 2 busy cores.
_RAY_START_DEADLINE_S = 180.0


def _slurm_down() -> str | None:
    """Why the SLURM partition cannot take jobs, or None when it can."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed (apt-get install -y --no-install-recommends slurm-wlm munge)"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-p", SLURM_PARTITION, "-o", "%t"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    states = {s.rstrip("*~#!%$@^-") for s in proc.stdout.split()}
    if proc.returncode != 0 or not states & _UP_STATES:
        return f"sinfo -p {SLURM_PARTITION}: rc={proc.returncode}, states={sorted(states)}, " + (
            proc.stderr.strip() or "no node up"
        )
    return None


@pytest.fixture(scope="session")
def slurm() -> str:
    """The partition (``"cpu"``) of a one-node SLURM cluster on this machine that takes jobs.

    Started with ``.ci/slurm-up`` when ``sinfo`` does not show the node up (as root, which
    this machine and CI are); fails the test with the reason when it still cannot.
    """
    reason = _slurm_down()
    if reason is None:
        return SLURM_PARTITION
    try:
        proc = subprocess.run(
            [str(ROOT / ".ci" / "slurm-up")],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        started = f"rc={proc.returncode}\n{proc.stdout}{proc.stderr}"
    except (OSError, subprocess.TimeoutExpired) as e:
        started = repr(e)
    reason = _slurm_down()
    if reason is not None:
        pytest.fail(
            f"SLURM is needed and could not start: {reason}\n.ci/slurm-up said: {started}\n"
            "Fix: run `.ci/slurm-up` as root (after apt-get install slurm-wlm munge).",
            pytrace=False,
        )
    return SLURM_PARTITION


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address (``"127.0.0.1:<port>"``) of a local Ray cluster for this session.

    ``ray start --head --block`` (2 CPUs, no dashboard, its own temp dir) in a session of its
    own: SIGTERM to that process group at the end stops the cluster and nothing else (``ray
    stop`` would stop every Ray cluster on the machine). The workers run this venv's python
    (the one that runs ``ray start``) and inherit its environment, less MLflow's variables.
    """
    try:
        import ray  # noqa: F401  - only to fail early and clearly
    except ImportError as e:
        pytest.fail(f"Ray is needed: {e}. Fix: pip install -e '.[ray]'", pytrace=False)
    ray_bin = Path(sys.executable).parent / "ray"
    # Short: Ray's unix sockets live under it (a socket path has at most 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Token authentication, with a token of this session's: a token left in ~/.ray by an
    # earlier local cluster would otherwise turn it on for the head node and not the drivers.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(auth, RAY_USAGE_STATS_ENABLED="0")
    log_path = temp / "ray-start.log"
    argv = [
        str(ray_bin), "start", "--head", "--block", f"--port={port}",
        "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
        # The jobs pass configs and JobReturns only: a small object store will do.
        "--object-store-memory=200000000", f"--temp-dir={temp}", "--disable-usage-stats",
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv,
            cwd=temp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # SIGINT ignored, as a cluster started by `nohup ray start`, a service or a
            # background job has it, and every worker inherits it (Ray's cancel then needs
            # the launcher's own SIGINT handler in the job): the same on every machine,
            # whether the suite runs in a terminal or in CI's background.
            preexec_fn=_ignore_sigint,
        )
    try:
        deadline = time.monotonic() + _RAY_START_DEADLINE_S
        # `ray start` prints this once the head node (GCS and raylet) is up.
        while "Ray runtime started" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"Ray head node at {address} did not start (rc={proc.poll()}):\n"
                    f"{log_path.read_text()[-4000:]}",
                    pytrace=False,
                )
            time.sleep(0.2)
        with pytest.MonkeyPatch.context() as mp:
            for key, value in auth.items():
                mp.setenv(key, value)
            yield address
    finally:
        _stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``ray start --block`` and what it started (its process group).

    SIGTERM to the leader alone: it drains the node and stops its processes in order (3-4 s
    here); SIGTERM to the whole group at once leaves it waiting 30 s for a raylet already gone.
    Whatever is left of the group after a generous wait is SIGKILLed.
    """
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=90)
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL if time.monotonic() > deadline else 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    proc.wait()


#: A logreg that records, inside each job, its process's native thread pools.
THREADS_MODEL = """\
import json
import os
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info


def make(task, **kwargs):
    return Probe(**kwargs)


class Probe(LogisticRegression):
    def fit(self, X, y, **kwargs):
        record = {
            "threads": sorted({p["num_threads"] for p in threadpool_info()}),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK"),
        }
        Path(os.environ["PROBE_DIR"], f"{os.getpid()}.json").write_text(json.dumps(record))
        return super().fit(X, y, **kwargs)
"""


def threads_probe(workdir: Path) -> tuple[dict[str, str], Callable[[], list[dict[str, Any]]]]:
    """The environment that makes ``model._target_=probe.make`` the :data:`THREADS_MODEL`,
    and a reader of what each process recorded."""
    (workdir / "probe.py").write_text(THREADS_MODEL)
    probes = workdir / "probes"
    probes.mkdir()
    path = os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))

    def read() -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in probes.iterdir()]

    return {"PYTHONPATH": path, "PROBE_DIR": str(probes)}, read


def assert_one_thread_each(records: list[dict[str, Any]]) -> None:
    """Each ``cpus_per_task=1`` job's pools have its one CPU, not one per CPU of the node
    (this cluster's TaskPlugin=task/none lets a job run on all of them)."""
    assert records and {r["cpus_per_task"] for r in records} == {"1"}, records
    assert all(r["threads"] == [1] and r["omp"] == "1" for r in records), records
