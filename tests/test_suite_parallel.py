"""The suite on two pytest-xdist workers: no port goes to two processes, one worker has the
cluster tests.

Every service a test starts (PostgreSQL, moto, MLflow servers, a Ray head node) listens on a
port from :func:`tests.services.free_port`, and two workers start services at the same
moment. The port tests race private :class:`~tests.services.PortPool` s (their own lock
directory) over ports this process took from the suite's pool, so nothing else binds them.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import ROOT
from tests.services import PortPool, ServiceUnavailable, free_port

#: A child that, once told ``go``, takes ``n`` of the given ports from the pool in ``locks``,
#: prints them, and holds them until its stdin closes. argv: locks, n, port...
TAKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tests.services import PortPool
    locks, n, *ports = sys.argv[1:]
    pool = PortPool(Path(locks))
    candidates = [int(p) for p in ports]
    print("ready", flush=True)
    sys.stdin.readline()
    print(" ".join(str(pool.take(candidates)) for _ in range(int(n))), flush=True)
    sys.stdin.read()
    """
)


class Taker:
    """A :data:`TAKER` child, ready and waiting for ``go``."""

    def __init__(self, locks: Path, n: int, ports: list[int]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TAKER, str(locks), str(n), *map(str, ports)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin: IO[str] = self.proc.stdin
        self.stdout: IO[str] = self.proc.stdout
        assert self.stdout.readline() == "ready\n"

    def go(self) -> None:
        self.stdin.write("go\n")
        self.stdin.flush()

    def taken(self) -> list[int]:
        return [int(p) for p in self.stdout.readline().split()]

    def release(self) -> None:
        """Close its stdin: it exits, and the kernel drops its locks."""
        self.stdin.close()
        assert self.proc.wait(timeout=60) == 0


@pytest.fixture
def takers() -> Iterator[list[Taker]]:
    """The test's children; any still alive at its end are killed."""
    started: list[Taker] = []
    yield started
    for taker in started:
        if taker.proc.poll() is None:
            taker.proc.kill()
            taker.proc.wait()
        taker.stdin.close()
        taker.stdout.close()


def _held(n: int) -> list[int]:
    """``n`` ports this process holds in the suite's pool: nothing else binds them."""
    return [free_port() for _ in range(n)]


def test_two_processes_taking_ports_at_once_never_share_one(
    tmp_path: Path, takers: list[Taker]
) -> None:
    ports = _held(90)
    takers += [Taker(tmp_path, 30, ports) for _ in range(3)]
    for taker in takers:
        taker.go()
    taken = [set(taker.taken()) for taker in takers]
    assert [len(t) for t in taken] == [30, 30, 30]
    assert set().union(*taken) == set(ports)  # 90 ports, so no two children share one


def test_a_port_held_by_a_live_process_is_skipped_and_free_once_it_exits(
    tmp_path: Path, takers: list[Taker]
) -> None:
    ports = _held(2)
    takers.append(Taker(tmp_path, 1, ports))
    takers[0].go()
    assert takers[0].taken() == [ports[0]]
    pool = PortPool(tmp_path)
    assert pool.take(ports) == ports[1]
    takers[0].release()
    assert pool.take(ports) == ports[0]  # the child's lock went with it


def test_a_port_something_listens_on_is_skipped(tmp_path: Path) -> None:
    ports = _held(3)
    pool = PortPool(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[1]))
        busy.listen()
        assert [pool.take(ports), pool.take(ports)] == [ports[0], ports[2]]


def test_a_port_is_never_one_the_kernel_would_pick_itself() -> None:
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low, high = (int(v) for v in ephemeral.read_text().split())
    ports = _held(20)
    assert len(set(ports)) == 20
    # Outside the ephemeral range, above a local Ray cluster's worker ports (10002-19999).
    assert all(20000 <= p < low or p > high for p in ports), (ports, low, high)


def test_no_port_left_says_what_to_do(tmp_path: Path, takers: list[Taker]) -> None:
    ports = _held(1)
    takers.append(Taker(tmp_path, 1, ports))
    takers[0].go()
    assert takers[0].taken() == ports
    with pytest.raises(ServiceUnavailable, match=r"taken or in use: stop .*ss -ltnp"):
        PortPool(tmp_path).take(ports)


def test_the_cluster_tests_run_on_one_worker() -> None:
    # Two tests of tests/launchers/ and two others, four units were each test its own: two
    # workers would take one launcher test each (xdist hands out the units in turn).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-n", "2",
         "-o", "addopts=--dist loadgroup", "tests/launchers/test_optuna_launchers.py", __file__,
         "-k", "refused_before_submitting and (joblib or submitit_local) "
         "or kernel_would_pick or something_listens"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = re.findall(r"\[(gw\d)\] .*PASSED (\S+)", proc.stdout)
    assert len(ran) == 4, proc.stdout
    workers = {worker for worker, test in ran if test.startswith("tests/launchers/")}
    assert len(workers) == 1, ran


@pytest.mark.parametrize(
    ("ephemeral", "first"), [("32768 60999", 20000), ("10000 20500", 20501), ("1024 65535", None)]
)
def test_the_ports_left_beside_the_kernel_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ephemeral: str, first: int | None
) -> None:
    from tests import services

    (tmp_path / "range").write_text(ephemeral + "\n")
    monkeypatch.setattr(services, "_EPHEMERAL", tmp_path / "range")
    if first is None:
        with pytest.raises(ServiceUnavailable, match=r"1024-65535.*ip_local_port_range"):
            services._candidates()
    else:
        assert services._candidates()[0] == first
