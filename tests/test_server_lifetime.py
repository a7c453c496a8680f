"""``python -m runner.server`` never leaves its MLflow server behind (SIGHUP, SIGKILL).

A real server each (about 15 s to answer here). Its processes are found through ``/proc``:
``mlflow server``, uvicorn, the job runner and the huey consumers all live in the session
of the server's keeper, the one child of ``runner.server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

#: Seconds within which every process of the server is gone and the port free.
BOUND_S = 30


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, session id)`` of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[3])


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _live(pids: set[int]) -> set[int]:
    """The processes of ``pids`` still running (a zombie waiting to be reaped is gone)."""
    return {p for p in pids if (s := _stat(p)) is not None and s[0] != "Z"}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Server:
    """``python -m runner.server`` on a fresh store, its output collected."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.server", "--port", str(self.port)],
            cwd=home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.processes: set[int] = set()
        self.cmdlines: dict[int, str] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if " ready at " in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            assert self.proc.poll() is None and time.monotonic() < deadline, "".join(self.output)
        # Everything below runner.server: its own children and their sessions (the keeper's,
        # which holds mlflow server, uvicorn, the job runner and the huey consumers).
        children = {p for p in _pids() if (s := _stat(p)) and s[1] == self.proc.pid}
        sessions = {s[2] for p in children if (s := _stat(p))}
        self.processes = children | {
            p for p in _pids() if (s := _stat(p)) and s[2] in sessions and s[0] != "Z"
        }
        self.cmdlines = {p: _cmdline(p) for p in self.processes}
        names = " ".join(self.cmdlines.values())
        assert "uvicorn" in names and "huey" in names, names

    def gone_within(self, seconds: float) -> tuple[set[int], bool]:
        """Wait until every server process is gone and the port is free; what is left."""
        deadline = time.monotonic() + seconds
        while (_live(self.processes) or _port_open(self.port)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return _live(self.processes), _port_open(self.port)

    def cleanup(self) -> None:
        """Whatever a failed test left running goes now: only the processes it started,
        each still running the command it ran then (a reused pid is someone else's)."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in _live(self.processes):
            if _cmdline(pid) == self.cmdlines.get(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()
        self.reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def server(tmp_path: Path, _template_db: Path) -> Iterator[Server]:
    shutil.copy(_template_db, tmp_path / "mlflow.db")  # a migrated store: a quicker start
    srv = Server(tmp_path)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.cleanup()


def _left(server: Server, live: set[int]) -> str:
    return "\n".join(f"{p}: {_cmdline(p)}" for p in sorted(live)) + "".join(server.output)


def test_sighup_stops_the_whole_server(server: Server) -> None:
    """A closed terminal (SIGHUP) stops it as SIGTERM does: exit 0, nothing left."""
    server.proc.send_signal(signal.SIGHUP)
    assert server.proc.wait(timeout=BOUND_S) == 0, "".join(server.output)
    live, port_open = server.gone_within(BOUND_S)
    assert not live and not port_open, _left(server, live)
    server.reader.join(timeout=10)
    output = "".join(server.output)
    assert "stopping the MLflow server" in output
    assert "Traceback" not in output


def test_sigkill_takes_the_server_with_it(server: Server) -> None:
    """runner.server SIGKILLed (no handler runs): its keeper ends the MLflow server."""
    server.proc.kill()
    server.proc.wait(timeout=10)
    live, port_open = server.gone_within(BOUND_S)
    assert not live and not port_open, _left(server, live)
