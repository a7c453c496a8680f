"""Shared fixtures: a fresh tracking store per test, no leaked runs, the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The tests that need this machine's engines (SLURM, the session's Ray cluster): one worker
#: runs them all, in one group (tests/launchers/conftest.py says why).
CLUSTER_TESTS = "tests/launchers/"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` (pyproject's addopts), with every test of CLUSTER_TESTS in one group.

    Not by ``xdist_group`` marks: pytest 9.2's node ids keep xdist 3.8's group suffix out
    (pytest-dev/pytest-xdist#1386), so loadgroup runs marked tests wherever. The controller
    has node ids only, so the group is by path. Every other test is a unit of its own.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ClusterScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(CLUSTER_TESTS):
                return "cluster"
            return super()._split_scope(nodeid)

    return ClusterScheduling(config, log)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # MLflow's schema migrations take ~2 s per fresh SQLite file; migrate once per session
    # and give each test a copy.
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own launch directory (Hydra outputs land there)."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def tracking_uri(workdir: Path, _template_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, migrated SQLite store in the test's launch directory, exported as the URI."""
    db = workdir / "mlflow.db"
    shutil.copy(_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def client(tracking_uri: str):  # type: ignore[no-untyped-def]
    """An ``MlflowClient`` on the test's store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


@pytest.fixture(autouse=True)
def no_leaked_runs() -> Iterator[None]:
    """Fail a test that leaves an active fluent run behind (mlflow's own conftest does this)."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            pytest.fail(f"test leaked an active MLflow run {run.info.run_id}")


@pytest.fixture(autouse=True)
def _reset_tracking_state() -> Iterator[None]:
    yield
    if "mlflow" in sys.modules:
        import mlflow

        # The runner sets the global fluent URI; let the next test's env var govern again.
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    from runner.tracking import session

    session.reset()


@contextlib.contextmanager
def sigint_as_in_a_terminal() -> Iterator[None]:
    """SIGINT at Python's default while the block starts children, as in a terminal.

    A suite started in the background of a non-interactive shell (``.ci/run ... &``) has
    SIGINT ignored, every child inherits that, and the runner then leaves it ignored
    (``runner.interrupts.install``, for nohup and background jobs): a test that presses
    Ctrl-C would see the sweep run on to exit 0. CI failed two Ctrl-C tests so.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_python(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
    **popen: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``python *argv`` in a subprocess (a module with ``-m``, or a script), as a user
    would; ``env`` is added to this process's environment, ``popen`` goes to
    :func:`subprocess.run` (e.g. ``start_new_session``).

    Asserts that no Hydra callback raised: Hydra turns callback exceptions into warnings,
    which would otherwise pass unnoticed.
    """
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd or Path.cwd(),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **popen,
    )
    output = proc.stdout + proc.stderr
    assert "Callback MLflowCallback" not in output, output
    if check:
        assert proc.returncode == 0, output
    return proc


def run_cli(
    *args: str,
    module: str = "runner",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> *args`` in a subprocess (:func:`run_python`)."""
    return run_python(["-m", module, *args], cwd=cwd, env=env, timeout=timeout, check=check)
