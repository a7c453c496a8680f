"""Real services for tests, started on loopback ports: PostgreSQL, moto's S3, MLflow servers.

Plain functions (no pytest here) so that fixtures and benchmarks share them. Each returns a
:class:`Service` whose ``stop()`` ends what it started. A service that cannot start raises
:class:`ServiceUnavailable`; fixtures turn that into a failure when ``CI`` is set.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PortPool",
    "Service",
    "ServiceUnavailable",
    "free_port",
    "start_moto",
    "start_postgres",
    "start_runner_server",
]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ServiceUnavailable(RuntimeError):
    """A service could not be started here (missing package, no permission, timeout)."""


@dataclass
class Service:
    """A started service: where it answers, what a client needs, how to stop it."""

    url: str
    env: dict[str, str] = field(default_factory=dict)
    stop: Callable[[], None] = lambda: None
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)


#: One lock file per port handed out: the process that took the port holds its lock until it
#: exits, so two processes of the suite (pytest-xdist's workers, a benchmark beside them) never
#: hand out the same port.
PORT_LOCKS = Path(tempfile.gettempdir()) / "runner-test-ports"
#: The kernel's ephemeral ports: what it picks for an outgoing connection or a bind to port 0.
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: The lowest port handed out: above Ray's worker ports (10002-19999 by default), which a
#: local Ray cluster of the launcher tests binds as it pleases.
_LOWEST = 20000


def _candidates() -> range:
    """The ports :func:`free_port` may hand out: none the kernel would pick by itself."""
    low, high = (int(v) for v in _EPHEMERAL.read_text().split())
    if low - _LOWEST >= 1000:
        return range(_LOWEST, low)
    if 65536 - max(high + 1, _LOWEST) >= 1000:
        return range(max(high + 1, _LOWEST), 65536)
    raise ServiceUnavailable(
        f"the kernel's ephemeral ports ({low}-{high}, {_EPHEMERAL}) leave no 1000 ports "
        f"from {_LOWEST} for the test services: narrow them, e.g. "
        f"sysctl -w net.ipv4.ip_local_port_range='32768 60999'"
    )


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortPool:
    """Ports reserved across processes through lock files in ``locks`` (one per port)."""

    def __init__(self, locks: Path) -> None:
        self.locks = locks
        #: The ports this process took, each with the file descriptor that holds its lock.
        self.taken: dict[int, int] = {}

    def take(self, candidates: Iterable[int]) -> int:
        """The first of ``candidates`` that no process holds and nothing is bound to; held
        by this process from now on (its lock is released when the process exits)."""
        self.locks.mkdir(exist_ok=True)
        for port in candidates:
            if port in self.taken:
                continue
            fd = os.open(self.locks / str(port), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if not _bindable(port):
                os.close(fd)
                continue
            self.taken[port] = fd
            return port
        raise ServiceUnavailable(
            f"every port of {candidates} is taken or in use: stop what a crashed run left "
            f"listening (ss -ltnp), then run again"
        )


_ports = PortPool(PORT_LOCKS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a service this process starts, that no one else takes.

    A port the kernel picked (a bind to port 0, then closed) could be picked again before the
    service binds it: for another worker's bind to port 0, or as the local port of any
    outgoing connection. So the port is outside the kernel's ephemeral range, and reserved
    across processes (:class:`PortPool`) until this process exits: nothing listens on it but
    what this process starts there.
    """
    if not _EPHEMERAL.exists():  # not Linux: the kernel's pick, as good as it gets
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    return _ports.take(_candidates())


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise ServiceUnavailable(f"{what} did not come up within {timeout:.0f} s")


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; the data directory must belong to the server's user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(database: str = "mlflow") -> Service:
    """PostgreSQL 15 from Debian's packages, trust auth, on a free loopback port.

    ``url`` is the SQLAlchemy URI of ``database`` (``postgresql+psycopg://...``); ``env``
    holds the libpq variables conf/backend/postgres_s3.yaml reads.
    """
    if not (PG_BIN / "initdb").exists():
        raise ServiceUnavailable(f"{PG_BIN}/initdb missing: apt-get install -y postgresql")
    root = Path(tempfile.mkdtemp(prefix="runner-pg-"))
    data = root / "data"
    port = free_port()
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        run = lambda cmd: subprocess.run(  # noqa: E731
            _as_postgres(cmd), capture_output=True, text=True, timeout=120, check=True
        )
        run([str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"])
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
        run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o", opts,
             "start"])  # fmt: skip
        run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             database])  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, LookupError) as e:
        shutil.rmtree(root, ignore_errors=True)
        detail = getattr(e, "stderr", "") or ""
        raise ServiceUnavailable(f"PostgreSQL did not start: {e} {detail}") from e

    def stop() -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)

    env = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres",
           "PGDATABASE": database}  # fmt: skip
    return Service(url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}", env=env,
                   stop=stop)  # fmt: skip


def start_moto(bucket: str = "mlflow") -> Service:
    """moto's standalone S3 server on a free loopback port, with ``bucket`` created.

    ``env`` holds what MLflow and boto3 need to reach it (endpoint, dummy keys, bucket).
    """
    import requests

    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if exe is None:
        raise ServiceUnavailable("moto_server missing: pip install 'moto[server]'")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    def stop() -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

    try:
        _wait(up, 60, "moto_server")
    except ServiceUnavailable:
        stop()
        raise
    env = {
        "MLFLOW_S3_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RUNNER_S3_BUCKET": bucket,
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return Service(url=url, env=env, stop=stop)


def start_runner_server(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> Service:
    """``python -m runner.server *args`` on a free port; ready once it prints its URL.

    ``stop()`` sends SIGTERM to ``runner.server`` itself (as a user's Ctrl-C would) and
    checks that it exits 0 and that the MLflow server behind it is gone.
    """
    import requests

    port = free_port()
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        full_env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.server", "--port", str(port), *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if " ready at " in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("runner.server did not stop on SIGTERM") from None
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        assert proc.returncode == 0, "".join(output)
        try:
            requests.get(f"{url}/health", timeout=2)
        except requests.RequestException:
            return
        raise AssertionError(f"the MLflow server at {url} still answers after runner.server ended")

    deadline = time.monotonic() + timeout
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
            raise ServiceUnavailable("runner.server did not start:\n" + "".join(output))
    return Service(url=url, env={"MLFLOW_TRACKING_URI": url}, stop=stop, proc=proc, output=output)
