"""Session-scoped services for the backend tests: each starts once, on first use.

A service that cannot start fails the tests that need it when ``CI`` is set, and skips them
otherwise (a developer machine without PostgreSQL or Chromium).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.services import (
    Service,
    ServiceUnavailable,
    start_moto,
    start_postgres,
    start_runner_server,
)

#: The admin password of the basic-auth server (MLflow refuses its default one).
ADMIN_PASSWORD = "runner-admin-secret-42"


def _start(what: str, start: Callable[[], Service]) -> Service:
    try:
        return start()
    except ServiceUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is needed and could not start (CI is set): {e}")
        pytest.skip(f"{what} could not start here: {e}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Service]:
    """PostgreSQL 15 on a loopback port (database ``mlflow``, trust auth)."""
    svc = _start("PostgreSQL", start_postgres)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[Service]:
    """moto's S3 server on a loopback port, bucket ``mlflow`` created."""
    svc = _start("moto S3 server", start_moto)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``python -m runner.server`` on a fresh SQLite store (backend=local, no auth)."""
    home = tmp_path_factory.mktemp("sqlite-server")
    svc = _start("runner.server (SQLite)", lambda: start_runner_server(cwd=home))
    svc.env["RUNNER_SERVER_HOME"] = str(home)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, postgres: Service, s3: Service
) -> Iterator[Service]:
    """``python -m runner.server backend=postgres_s3 --auth``: PostgreSQL + S3, basic auth."""
    home = tmp_path_factory.mktemp("auth-server")
    env = {**postgres.env, **s3.env, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    svc = _start(
        "runner.server (PostgreSQL + S3, auth)",
        lambda: start_runner_server("--auth", "backend=postgres_s3", cwd=home, env=env),
    )
    yield svc
    svc.stop()
