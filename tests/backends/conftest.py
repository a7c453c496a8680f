"""Session-scoped services for the backend tests: each starts once, on first use.

A service that cannot start fails the tests that need it when ``CI`` is set, and skips them
otherwise (a developer machine without PostgreSQL or Chromium).

Other modules import these fixtures by name (``from tests.backends.conftest import
sqlite_server``), and pytest makes each import a fixture definition of its own: a session
fixture imported into four modules ran four times, and its four servers were all stopped at
the very end of the session (22 s there, on top of their starts). So each service is
:func:`_shared`: the first definition to run starts it, the others use that one, and the
last one to be torn down stops it.
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


#: The services started in this session: each with how many fixture definitions use it.
_running: dict[str, tuple[Service, list[int]]] = {}


def _shared(what: str, start: Callable[[], Service]) -> Iterator[Service]:
    """The session's one ``what``: started by the first fixture definition that asks for it
    (:func:`_start`), stopped when the last one that uses it is torn down."""
    if what not in _running:
        _running[what] = (_start(what, start), [0])
    svc, users = _running[what]
    users[0] += 1
    try:
        yield svc
    finally:
        users[0] -= 1
        if not users[0]:
            del _running[what]
            svc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Service]:
    """PostgreSQL 15 on a loopback port (database ``mlflow``, trust auth)."""
    yield from _shared("PostgreSQL", start_postgres)


@pytest.fixture(scope="session")
def s3() -> Iterator[Service]:
    """moto's S3 server on a loopback port, bucket ``mlflow`` created."""
    yield from _shared("moto S3 server", start_moto)


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``python -m runner.server`` on a fresh SQLite store (backend=local, no auth)."""

    def start() -> Service:
        home = tmp_path_factory.mktemp("sqlite-server")
        svc = start_runner_server(cwd=home)
        svc.env["RUNNER_SERVER_HOME"] = str(home)
        return svc

    yield from _shared("runner.server (SQLite)", start)


@pytest.fixture(scope="session")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, postgres: Service, s3: Service
) -> Iterator[Service]:
    """``python -m runner.server backend=postgres_s3 --auth``: PostgreSQL + S3, basic auth."""

    def start() -> Service:
        home = tmp_path_factory.mktemp("auth-server")
        env = {**postgres.env, **s3.env, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
        return start_runner_server("--auth", "backend=postgres_s3", cwd=home, env=env)

    yield from _shared("runner.server (PostgreSQL + S3, auth)", start)
