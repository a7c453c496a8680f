"""``python -m runner.server``: an MLflow tracking server (and UI) for a backend config.

    python -m runner.server                              # the local SQLite store, on :5000
    python -m runner.server backend=postgres_s3 --auth   # PostgreSQL + S3, basic auth

It creates or upgrades the store's schema once, starts ``mlflow server`` with artifacts
served through it (``--artifacts-destination``: clients need no S3 credentials), waits until
``/health`` answers, prints the URL and stops the server cleanly on Ctrl-C, SIGTERM or SIGHUP.

The server never outlives this process. ``mlflow server`` runs uvicorn, a job runner and
several huey consumers; they live in a process group of their own under a small keeper
(:func:`supervise`), which holds the read end of a pipe whose only writer is this process.
However this process ends (SIGKILL included) the kernel closes the pipe, and the keeper then
ends the whole group: SIGTERM, and SIGKILL for whatever is left after a grace period. Linux's
parent-death signal (``PR_SET_PDEATHSIG``) would not do: it fires when the *thread* that
forked the child exits, it is cleared in the child's own children (uvicorn, huey), and it is
Linux only; a pipe's end of file has none of those pitfalls.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from runner.cli import fail
from runner.errors import ConfigError, RunnerError, TrackingError
from runner.interrupts import handled, terminate

__all__ = ["ServerPlan", "Started", "main", "plan", "start", "stop", "supervise"]

_SERVABLE = ("local", "postgres_s3")


@dataclass
class ServerPlan:
    """What ``mlflow server`` is started with."""

    backend: str
    store_uri: str
    artifacts_destination: str
    host: str
    port: int
    url: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _compose(overrides: list[str]):  # type: ignore[no-untyped-def]
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from runner.config import register

    register()
    try:
        with initialize_config_module(config_module="runner.conf", version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except HydraException as e:
        raise ConfigError(f"the overrides {' '.join(overrides)!r} do not compose: {e}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth_env(store_uri: str, state_dir: Path) -> dict[str, str]:
    """The environment of MLflow's basic-auth app: its config file and admin password."""
    password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if len(password) < 12:
        raise ConfigError(
            "--auth needs the admin's password in MLFLOW_AUTH_ADMIN_PASSWORD (at least 12 "
            "characters; MLflow refuses its default one). Export it, e.g. "
            "`export MLFLOW_AUTH_ADMIN_PASSWORD=$(openssl rand -hex 16)`, and give users "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD."
        )
    env: dict[str, str] = {}
    if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        import secrets

        # The auth app's CSRF protection needs a key shared by the server's workers; one per
        # start is enough for one server (set it yourself to run several behind a balancer).
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(32)
    if "MLFLOW_AUTH_CONFIG_PATH" in os.environ:
        return env
    # The users database lives beside a SQLite store, or in the same PostgreSQL database.
    if store_uri.startswith("sqlite:///"):
        users = f"sqlite:///{Path(store_uri[len('sqlite:///') :]).parent / 'basic_auth.db'}"
    else:
        users = store_uri
    state_dir.mkdir(parents=True, exist_ok=True)
    ini = state_dir / "basic_auth.ini"
    user = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    # The password stays in the environment: MLflow reads MLFLOW_AUTH_ADMIN_PASSWORD over
    # the file, so the file never holds it.
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {users}\n"
        f"admin_username = {user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        encoding="utf-8",
    )
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
    return env


def plan(
    overrides: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
    auth: bool = False,
    insecure_public: bool = False,
    launch_dir: Path | None = None,
) -> ServerPlan:
    """Work out the ``mlflow server`` command for the backend the overrides choose.

    Raises:
        ConfigError: A backend that cannot be served, a public bind without auth, or
            credentials in the backend config.
    """
    from runner.tracking.backends import backend_of

    if not _is_loopback(host) and not auth and not insecure_public:
        raise ConfigError(
            f"--host {host} is not a loopback address, and the server has no authentication: "
            "anyone who reaches it could read and delete every run. Add --auth (MLflow's "
            "basic-auth app; users then need MLFLOW_TRACKING_USERNAME/PASSWORD), or pass "
            "--insecure-public if a proxy in front of it authenticates."
        )
    launch = launch_dir or Path.cwd()
    cfg = _compose(overrides)
    backend = backend_of(cfg, launch)
    if backend.name not in _SERVABLE or not backend.enabled:
        raise ConfigError(
            f"backend={backend.name} cannot be served: python -m runner.server serves a store, "
            f"one of backend={' / backend='.join(_SERVABLE)}. (backend=server is what clients "
            "use to reach this server.)"
        )
    store = backend.uri
    if backend.artifact_root:
        artifacts = backend.artifact_root
    elif store.startswith("sqlite:///"):
        artifacts = str(Path(store[len("sqlite:///") :]).parent / "mlartifacts")
    else:
        raise ConfigError(
            f"backend={backend.name} has no backend.artifact_root; set one (an s3:// URI or a "
            "directory) for the server's --artifacts-destination."
        )
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store,
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        # Bound the shutdown: open keep-alive connections would otherwise hold it up.
        "--uvicorn-opts",
        "--timeout-graceful-shutdown 5",
    ]
    env: dict[str, str] = {}
    if auth:
        command += ["--app-name", "basic-auth"]
        state = Path(store[len("sqlite:///") :]).parent if store.startswith("sqlite") else launch
        env.update(_auth_env(store, state / ".runner_server"))
    return ServerPlan(
        backend=backend.name,
        store_uri=store,
        artifacts_destination=artifacts,
        host=host,
        port=port,
        url=url,
        command=command,
        env=env,
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """Poll ``<url>/health`` until it answers 200, the process dies, or ``timeout`` passes."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(
                f"mlflow server exited with status {proc.returncode} before answering at "
                f"{url}; its output above says why (a port in use, a store it cannot open)."
            )
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TrackingError(
        f"mlflow server did not answer at {url}/health within {timeout:.0f} s; raise "
        "--startup-timeout on a slow machine."
    )


#: Seconds the MLflow server gets to stop on SIGTERM before its group is SIGKILLed.
GRACE_S = 10.0

# The keeper's process: `python -c` so that it needs no module of its own on the path.
_KEEPER = (
    "import sys; from runner.server import supervise; "
    "sys.exit(supervise(int(sys.argv[1]), sys.argv[3:], grace=float(sys.argv[2])))"
)


def _end_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """End ``proc``'s process group: SIGTERM, then SIGKILL for what is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # The group outlives its leader while any member lives (a huey consumer still stopping).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def supervise(fd: int, command: list[str], *, grace: float = GRACE_S) -> int:
    """Run ``command`` in a process group of its own until ``fd`` reads end of file.

    The keeper between ``runner.server`` and ``mlflow server`` (see the module docstring):
    ``fd`` is the read end of a pipe that only ``runner.server`` writes to, so its end of
    file means ``runner.server`` is stopping or gone. SIGTERM, SIGINT and SIGHUP mean the
    same. Either way the whole group is ended (:func:`_end_group`).

    Returns:
        The command's exit status when it exited by itself, else 0.
    """
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    proc = subprocess.Popen(command, process_group=0)
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not stopping and proc.poll() is None:
            if sel.select(timeout=0.5) and not os.read(fd, 1):
                stopping = True
    code = proc.poll()
    _end_group(proc, grace)
    return 0 if code is None else code


@dataclass
class Started:
    """A started server: the keeper's process and the pipe end that keeps it alive."""

    proc: subprocess.Popen[bytes]
    lifeline: int


def start(p: ServerPlan, *, grace: float = GRACE_S) -> Started:
    """Start ``p.command`` under its keeper; it lives while this process holds the pipe."""
    read_end, write_end = os.pipe()  # neither end is inherited by other children
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KEEPER, str(read_end), str(grace), *p.command],
            env={**os.environ, **p.env},
            # A session of its own: no terminal's SIGHUP or Ctrl-C, and no kill of this
            # process's group, reaches the server before the keeper ends it.
            start_new_session=True,
            pass_fds=(read_end,),
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return Started(proc, write_end)


def stop(server: Started, *, grace: float = GRACE_S) -> None:
    """Stop the server: close the pipe, so that its keeper ends the MLflow server's group."""
    with contextlib.suppress(OSError):
        os.close(server.lifeline)
    try:
        server.proc.wait(timeout=grace + 10)
    except subprocess.TimeoutExpired:  # a keeper that hangs: it is ours to kill
        server.proc.kill()
        server.proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Start an MLflow tracking server for a backend config; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m runner.server",
        description="Start an MLflow tracking server (and UI) on the store of a backend "
        "config (backend=local, the default, or backend=postgres_s3).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default 1)")
    parser.add_argument(
        "--auth", action="store_true", help="MLflow's basic-auth app (MLFLOW_AUTH_ADMIN_PASSWORD)"
    )
    parser.add_argument(
        "--insecure-public",
        action="store_true",
        help="allow a non-loopback --host without --auth (behind an authenticating proxy)",
    )
    parser.add_argument("--startup-timeout", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. backend=postgres_s3 backend.uri=..."
    )
    args = parser.parse_args(argv)
    from runner.tracking.store import no_telemetry

    no_telemetry()  # for the server too: the same thread, the same race
    try:
        p = plan(
            args.overrides,
            host=args.host,
            port=args.port,
            workers=args.workers,
            auth=args.auth,
            insecure_public=args.insecure_public,
        )
        from runner.tracking.store import ensure_store, public_uri

        # Create or upgrade the schema once, here, before the server (and its workers) and
        # any job open it.
        ensure_store(p.store_uri)
    except RunnerError as e:
        return fail(e)
    # SIGHUP too: a closed terminal stops the server as SIGTERM and Ctrl-C do.
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    server = start(p)
    proc = server.proc
    try:
        wait_healthy(p.url, proc, timeout=args.startup_timeout)
        scheme = urlparse(p.store_uri).scheme
        print(
            f"MLflow tracking server for backend={p.backend} ready at {p.url}\n"
            f"  store: {public_uri(p.store_uri)} ({scheme}); artifacts: "
            f"{p.artifacts_destination}{'; basic auth on' if args.auth else ''}\n"
            f"  log to it with: python -m runner backend=server backend.uri={p.url}\n"
            "  Ctrl-C stops it.",
            flush=True,
        )
        code = proc.wait()
        print(f"error: mlflow server exited with status {code}", file=sys.stderr)
        return 1
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        handled()
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print("stopping the MLflow server", file=sys.stderr, flush=True)
        return 0
    finally:
        stop(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    from runner.cli import run_main

    run_main(main)
