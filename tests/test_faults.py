"""SIGTERM at many moments of a real process's life: nothing is lost, everything resumes.

Each moment is a function's N-th call in the real CLI (``tests/faults.py`` sends the signal
as that call starts): start-up, store creation, run creation, training, logging, ending,
every SQL statement in between. The same moment is hit on every run, so a failure names
a moment that can be rerun alone. After every kill: exit 130, no run left RUNNING, the
interrupted trial voided and queued again (never a FAIL that counts), and the store and
the study open; after the last, the same command completes with exactly ``n_trials``.

The moments of one chain run one after another on the same store: each kill starts from
what the previous one left, which is the resume path a user takes.

Each killed command is a child that ``tests/faults.py --zygote`` forks (one zygote per
test): the same process as ``python tests/faults.py --kill ...`` without its 2.5-3 s of
imports each time. A test checks that such a child counts the same calls as a fresh one.
The final run of each chain, the one that must complete, is a fresh ``python -m runner``;
a test of one moment uses a fresh ``faults.py --kill`` process (a zygote would only add
its own start).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

FAULTS = ROOT / "tests" / "faults.py"
FAST = ("tracking.log_model=false", "tracking.log_figures=false", "tracking.log_importances=false")

HYDRA = "hydra._internal.config_loader_impl:ConfigLoaderImpl.load_configuration"
SCHEMA = "mlflow.store.db.utils:_initialize_tables"
SQL = "sqlalchemy.engine.base:Connection._execute_context"
STORE = "runner.tracking.store:"
FIT = "sklearn.linear_model._logistic:LogisticRegression.fit"
EVALUATE = "runner.metrics:evaluate"
ASK = "optuna.study.study:Study.ask"
TELL = "optuna.study.study:Study.tell"
LOCK = "runner.locks:file_lock"

N_TRIALS = 10
#: Every command of a chain runs into the same sweep dir, as a rerun with a fixed
#: ``hydra.sweep.dir`` does: Hydra's default names it by the second, and commands a zygote
#: forks can start within one second of each other, or not, from run to run (a grid
#: sweep's second command then nested its jobs under the first's ended parent, one
#: ``end_run`` short: CI's failure).
SWEEP_DIR = "hydra.sweep.dir=multirun/chain"
OPTUNA = [
    "-m",
    SWEEP_DIR,
    "hydra/sweeper=optuna",
    f"hydra.sweeper.n_trials={N_TRIALS}",
    "hydra.sweeper.storage=sqlite:///optuna.db",
    "model.C=tag(log, interval(0.001, 10.0))",
    *FAST,
]
#: Moments of an Optuna sweep, in the order they are hit on one store (18).
OPTUNA_MOMENTS = [
    (SCHEMA, 1),  # MLflow creates the store's tables (a new store: first)
    (HYDRA, 1),  # start-up: the first compose
    (STORE + "ensure_store", 1),
    (SQL, 20),
    (ASK, 1),
    (STORE + "Store.create_run", 2),  # the first trial's run (the first is the parent)
    (STORE + "Store.activate", 1),  # inside mlflow.start_run's read: CI's failure
    (STORE + "Store.log_batch", 2),
    (FIT, 1),  # training: the user's code
    (EVALUATE, 1),
    (STORE + "Store.log_files", 1),
    (STORE + "Store.end_run", 1),
    (TELL, 1),
    (LOCK, 4),
    (SQL, 200),
    (FIT, 2),
    (STORE + "Store.end_run", 2),
    (SQL, 400),
]

GRID = ["-m", SWEEP_DIR, "model.C=0.1,1.0", *FAST]
#: Moments of a two-job grid sweep (13).
GRID_MOMENTS = [
    (SCHEMA, 1),
    (HYDRA, 1),
    (STORE + "Store.create_run", 1),  # the sweep's parent
    (STORE + "Store.create_run", 2),  # the first job's run
    (STORE + "Store.activate", 1),
    (FIT, 1),
    (STORE + "Store.log_batch", 2),
    (FIT, 2),
    (STORE + "Store.log_files", 2),
    (STORE + "Store.end_run", 1),
    (STORE + "Store.end_run", 3),  # the parent, after both jobs
    (SQL, 30),
    (SQL, 120),
]

SINGLE = [*FAST]
#: Moments of one job (13).
SINGLE_MOMENTS = [
    (SCHEMA, 1),
    (HYDRA, 1),
    (STORE + "Store.create_run", 1),
    (STORE + "Store.activate", 1),
    (STORE + "Store.log_batch", 1),
    (FIT, 1),
    (EVALUATE, 1),
    (STORE + "Store.log_files", 1),  # the config files, as the run starts
    ("runner.tracking.job:JobRun.finish", 1),  # the last batch of metrics and tags
    (STORE + "Store.end_run", 1),
    ("runner.tracking.session:close_open_runs", 1),  # the final clean-up, after it all
    (SQL, 10),
    (SQL, 60),
]


@pytest.fixture
def fresh_store(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store that does not exist yet: the first command creates its schema."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


class Zygote:
    """``tests/faults.py --zygote`` in ``workdir``: forks one ``--kill`` process per moment."""

    #: Importing mlflow, optuna, sklearn and hydra: seconds, minutes on a loaded machine.
    START_TIMEOUT = 180.0

    def __init__(self, workdir: Path, logs: Path) -> None:
        self.workdir, self.logs = workdir, logs
        self.log = (logs / "zygote.log").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAULTS), "--zygote"],
            cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.proc.stdout is not None
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.pending = b""
        self.forks = 0
        try:
            self._receive("ready", self.START_TIMEOUT)
        except BaseException:
            self.proc.kill()
            self.close()
            raise

    def _receive(self, key: str, timeout: float, pid: int | None = None) -> Any:
        """The next message's ``key``; fails with the zygote's log on its end or a timeout."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)  # the hung child; its exit status follows
                    self._receive("exit", 60)
                pytest.fail(f"faults.py --zygote: no {key!r} within {timeout:.0f} s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.log.seek(0)
                pytest.fail(f"faults.py --zygote ended (rc={self.proc.wait()}):\n{self.log.read()}")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return json.loads(line)[key]

    def kill_at(
        self, point: str, n: int, marker: Path, args: list[str], *, timeout: float
    ) -> tuple[int, str]:
        """A ``--kill point n marker -- *args`` child: its exit status and its output."""
        assert self.proc.stdin is not None
        self.forks += 1
        out, err = (self.logs / f"{self.forks}.{s}" for s in ("out", "err"))
        request = {"point": point, "n": n, "marker": str(marker), "args": args,
                   "cwd": str(self.workdir), "stdout": str(out), "stderr": str(err)}  # fmt: skip
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        pid = self._receive("pid", 60)
        code = self._receive("exit", timeout, pid=pid)
        return code, out.read_text() + err.read_text()

    def close(self) -> None:
        """End the zygote (the end of its stdin) and check that it exited 0."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.selector.close()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.log.seek(0)
            log = self.log.read()
            self.log.close()
        assert rc == 0, f"faults.py --zygote exited {rc}:\n{log}"


@pytest.fixture
def zygote(
    workdir: Path, fresh_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Zygote]:
    """This test's zygote, started in its launch directory with its store's environment."""
    z = Zygote(workdir, tmp_path_factory.mktemp("fault-logs"))
    yield z
    z.close()


def _cli(
    workdir: Path, command: list[str], *, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """``python *command`` in ``workdir``: its exit status and its output."""
    proc = subprocess.run(
        [sys.executable, *command],
        cwd=workdir,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _kill_at(
    workdir: Path, point: str, n: int, args: list[str], zygote: Zygote | None = None
) -> str:
    """Run the CLI with SIGTERM at ``point``'s ``n``-th call; assert it exited 130.

    A child of ``zygote`` (started in ``workdir``), or a fresh ``python tests/faults.py
    --kill`` process.
    """
    marker = workdir / "fault.marker"
    marker.unlink(missing_ok=True)
    if zygote is None:
        command = [str(FAULTS), "--kill", point, str(n), str(marker), "--", *args]
        code, out = _cli(workdir, command, timeout=180)
    else:
        code, out = zygote.kill_at(point, n, marker, args, timeout=180)
    moment = f"SIGTERM at {point} call {n}"
    assert marker.exists() and marker.read_text() == "fired", f"{moment} never came:\n{out}"
    assert code == 130, f"{moment}: exit {code}\n{out}"
    assert "Callback MLflowCallback" not in out, f"{moment}: a callback raised\n{out}"
    return out


def _run(workdir: Path, args: list[str]) -> str:
    code, out = _cli(workdir, ["-m", "runner", *args], timeout=300)
    assert code == 0, out
    assert "Callback MLflowCallback" not in out, out
    return out


def _runs(uri: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000) if ids else []


def _assert_nothing_running(uri: str, moment: str) -> None:
    running = [r.info.run_name for r in _runs(uri) if r.info.status == "RUNNING"]
    assert not running, f"{moment}: runs left RUNNING: {running}"


def _study(workdir: Path) -> Any:
    import optuna

    storage = f"sqlite:///{workdir / 'optuna.db'}"
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return None
    (summary,) = summaries
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _assert_study_consistent(workdir: Path, moment: str) -> None:
    from optuna.trial import TrialState

    study = _study(workdir)
    if study is None:
        return
    trials = study.get_trials(deepcopy=False)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING], moment
    retried = {t.user_attrs.get("runner.retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL:
            # An interrupted trial: out of the count, and its params queued again.
            assert t.system_attrs.get("runner.void"), f"{moment}: trial {t.number} FAILed"
            assert t.number in retried, f"{moment}: trial {t.number} was not re-queued"


def _counted(study: Any) -> list[Any]:
    from runner.sweeps.optuna.storage import counted

    return counted(study.get_trials(deepcopy=False))


def test_zygote_child_counts_the_same_calls_as_a_fresh_process(
    workdir: Path, zygote: Zygote
) -> None:
    # With N = 0 nothing is sent and the marker gets every point's call count: a forked
    # child that imported, patched or inherited anything differently counts differently.
    fresh = workdir / "fresh"
    fresh.mkdir()
    marker = fresh / "counts.json"
    code, out = _cli(
        fresh,
        [str(FAULTS), "--kill", EVALUATE, "0", str(marker), "--", *SINGLE],
        timeout=300,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{fresh / 'mlflow.db'}"},
    )
    assert code == 0, out
    forked = workdir / "counts.json"
    code, out = zygote.kill_at(EVALUATE, 0, forked, list(SINGLE), timeout=300)
    assert code == 0, out
    expected = json.loads(marker.read_text())
    assert expected[EVALUATE] == 1 and expected[SQL] > 100, expected
    assert json.loads(forked.read_text()) == expected


def test_optuna_sweep_survives_sigterm_anywhere(
    workdir: Path, fresh_store: str, zygote: Zygote
) -> None:
    from optuna.trial import TrialState

    for i, (point, n) in enumerate(OPTUNA_MOMENTS):
        moment = f"moment {i} ({point} call {n})"
        _kill_at(workdir, point, n, OPTUNA, zygote)
        _assert_nothing_running(fresh_store, moment)
        _assert_study_consistent(workdir, moment)
        study = _study(workdir)
        assert study is None or len(_counted(study)) < N_TRIALS, f"{moment}: the chain ran out"
    _run(workdir, OPTUNA)
    study = _study(workdir)
    counted = _counted(study)
    assert len(counted) == N_TRIALS
    assert {t.state for t in counted} == {TrialState.COMPLETE}
    runs = _runs(fresh_store)
    _assert_nothing_running(fresh_store, "after the resume")
    (parent,) = [r for r in runs if r.data.tags.get("runner.kind") == "sweep"]
    assert parent.info.status == "FINISHED"
    finished = [r for r in runs if r.data.tags.get("runner.kind") == "job"]
    finished = [r for r in finished if r.info.status == "FINISHED"]
    # One FINISHED run per counted trial, and no trial number twice among them.
    numbers = sorted(int(r.data.tags["runner.trial_number"]) for r in finished)
    assert numbers == sorted(t.number for t in counted)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in finished)


@pytest.mark.parametrize("n", [100, 900, 1500])
def test_sigterm_while_the_store_is_created_leaves_it_whole(
    workdir: Path, fresh_store: str, n: int
) -> None:
    # A job's first ~1700 statements on a new SQLite file are MLflow's schema creation and
    # migrations; a kill at the 900th left `table _alembic_tmp_experiments already exists`
    # for every later command before the signals were held.
    _kill_at(workdir, SQL, n, SINGLE)
    _run(workdir, SINGLE)
    _assert_nothing_running(fresh_store, f"{SQL} call {n}")
    assert [r.info.status for r in _runs(fresh_store)].count("FINISHED") == 1


def _kill_each_then_rerun(
    zygote: Zygote, store: str, moments: list[tuple[str, int]], args: list[str]
) -> list[Any]:
    """Kill the command at each moment in turn, then run it once more; that run's runs."""
    for i, (point, n) in enumerate(moments):
        _kill_at(zygote.workdir, point, n, args, zygote)
        _assert_nothing_running(store, f"moment {i} ({point} call {n})")
    before = {r.info.run_id for r in _runs(store)}
    _run(zygote.workdir, args)
    return [r for r in _runs(store) if r.info.run_id not in before]


def test_grid_sweep_survives_sigterm_anywhere(fresh_store: str, zygote: Zygote) -> None:
    new = _kill_each_then_rerun(zygote, fresh_store, GRID_MOMENTS, GRID)
    assert sorted((r.data.tags["runner.kind"], r.info.status) for r in new) == [
        ("job", "FINISHED"),
        ("job", "FINISHED"),
        ("sweep", "FINISHED"),
    ]


def test_single_job_survives_sigterm_anywhere(fresh_store: str, zygote: Zygote) -> None:
    new = _kill_each_then_rerun(zygote, fresh_store, SINGLE_MOMENTS, SINGLE)
    assert [r.info.status for r in new] == ["FINISHED"]
    assert "val_accuracy" in new[0].data.metrics
