"""A kill at the wrong moment never lands inside the runner's I/O, nor leaves a run RUNNING.

Two modes: the runner's own processes (:func:`runner.interrupts.install`: signals wait for a
safe point, and raise at once only inside the user's code), and an app of the user's that
keeps Python's handlers (the runner's writes are still held). The CLI-level tests
(``tests/test_faults.py``) send the signal at many moments of a real process's life; these
aim at single instants, in process.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from omegaconf import open_dict

from runner import interrupts
from tests.helpers import compose_cfg


@pytest.fixture
def sigterm_interrupts() -> Iterator[None]:
    """An app of the user's: SIGTERM raises KeyboardInterrupt, SIGINT is Python's own."""
    with _handlers(interrupts.terminate):
        yield


@contextlib.contextmanager
def _handlers(sigterm: object) -> Iterator[None]:
    # SIGINT as in a terminal: pytest may have been started with it ignored (a background
    # job of a non-interactive shell, as a CI script can be).
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, sigterm)  # type: ignore[arg-type]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        interrupts._state.__init__()  # type: ignore[misc]
        for s, h in previous.items():
            signal.signal(s, h)


@pytest.fixture
def cooperative() -> Iterator[None]:
    """The runner's own processes: :func:`runner.interrupts.install`, undone afterwards."""
    with _handlers(signal.SIG_DFL):
        interrupts.install()
        yield


def _kill_self(signum: int = signal.SIGTERM) -> None:
    # To the main thread itself: a signal to the process may be taken by another thread
    # (MLflow's, SQLAlchemy's), whose C handler can run after this returns. Sent to the
    # calling thread it is taken before pthread_kill returns, and Python runs its handler
    # at the next bytecode, inside this loop.
    signal.pthread_kill(threading.main_thread().ident or 0, signum)
    for _ in range(3):
        pass


def test_cooperative_signal_waits_for_a_checkpoint(cooperative: None) -> None:
    done = []
    with interrupts.held():
        _kill_self()
        done.append("rest of the block")
    done.append("the runner's code after the block")
    assert interrupts.pending() == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        interrupts.checkpoint()
    assert done == ["rest of the block", "the runner's code after the block"]
    assert interrupts.pending() is None
    interrupts.checkpoint()  # acted on once


def test_cooperative_signal_raises_at_once_in_the_users_code(cooperative: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        _kill_self(signal.SIGINT)
        done.append("never")
    assert done == []
    assert interrupts.pending() is None


def test_a_waiting_signal_stops_the_users_code_before_it_starts(cooperative: None) -> None:
    _kill_self()
    started = []
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        started.append(True)
    assert started == []


def test_held_inside_the_users_code_delivers_when_the_block_ends(cooperative: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        with interrupts.held():  # a store call made from inside a fit
            _kill_self()
            done.append("the store call finished")
        done.append("never: the user's code stops here")
    assert done == ["the store call finished"]


def test_a_second_signal_means_now(cooperative: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.held():
        _kill_self()
        done.append("first held")
        _kill_self(signal.SIGINT)
        done.append("never")
    assert done == ["first held"]


def test_the_final_clean_up_is_never_cut_short(cooperative: None) -> None:
    done = []
    with interrupts.held(drop=True):
        _kill_self()
        _kill_self(signal.SIGINT)  # not even a second signal
        done.append("every run ended")
    assert done == ["every run ended"]
    # Still remembered: the process exits as interrupted.
    with pytest.raises(KeyboardInterrupt):
        interrupts.checkpoint()
    interrupts.checkpoint()


def test_fenced_calls_hold_signals(cooperative: None) -> None:
    @interrupts.fenced
    def write() -> str:
        _kill_self()
        return "written"

    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        assert write() == "written"


def test_install_keeps_an_ignored_sigint(cooperative: None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.install()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


# One step of a program: enter a held or interruptible block, leave the innermost one, a
# signal arrives, or a checkpoint.
_STEPS = hs.lists(hs.sampled_from(["held", "user", "exit", "signal", "checkpoint"]), max_size=30)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS)
def test_a_single_signal_never_lands_in_a_held_block_and_is_never_lost(steps: list[str]) -> None:
    with _handlers(signal.SIG_DFL):
        interrupts.install()
        _run_steps(steps)


def _run_steps(steps: list[str]) -> None:
    with contextlib.ExitStack() as outer:
        stack: list[tuple[str, contextlib.ExitStack]] = []
        sent = False
        where = "end"
        try:
            for where in steps:
                if where in ("held", "user"):
                    inner = contextlib.ExitStack()
                    outer.callback(inner.close)
                    stack.append((where, inner))
                    inner.enter_context(
                        interrupts.held() if where == "held" else interrupts.interruptible()
                    )
                elif where == "exit" and stack:
                    where = f"exit to {_innermost(stack[:-1])}"
                    stack.pop()[1].close()
                elif where == "signal" and not sent:
                    sent = True
                    where = f"signal in {_innermost(stack)}"
                    _kill_self()
                elif where == "checkpoint" and _innermost(stack) != "user":
                    interrupts.checkpoint()
            where = "end"
            interrupts.checkpoint()  # the end of main
        except KeyboardInterrupt:
            # Raised only where the runner allows it: in the user's code (at once, on
            # entering it, or when a held call made from it ends) or at a safe point.
            assert where in ("signal in user", "user", "exit to user", "checkpoint", "end"), where
            assert sent
        else:
            assert not sent, "a signal was lost"
        assert interrupts.pending() is None


def _innermost(stack: list[tuple[str, contextlib.ExitStack]]) -> str | None:
    return stack[-1][0] if stack else None


def test_held_delivers_the_signal_after_the_block(sigterm_interrupts: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt, match="signal 15"), interrupts.held():
        _kill_self()
        done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGTERM) is interrupts.terminate


def test_held_without_a_signal_changes_nothing(sigterm_interrupts: None) -> None:
    with interrupts.held():
        pass
    assert signal.getsignal(signal.SIGTERM) is interrupts.terminate
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _kill_after_create(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM lands the moment the store has created a run, before its id is returned."""
    from runner.tracking.store import Store

    create = Store.create_run

    def create_then_kill(self: Store, *args: Any, **kwargs: Any) -> str:
        run_id = create(self, *args, **kwargs)
        _kill_self()
        return run_id

    monkeypatch.setattr(Store, "create_run", create_then_kill)


def _job_config(workdir: Path, mode: str) -> Any:
    cfg = compose_cfg(["model=logreg", "dataset=iris"], hydra=True)
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.runtime.output_dir = str(workdir / "out")
        cfg.hydra.runtime.cwd = str(workdir)
        cfg.hydra.sweep.dir = str(workdir / "multirun")
        cfg.hydra.job.num = 0
    return cfg


def test_kill_while_a_job_run_is_created_ends_it_killed(
    client: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_interrupts: None
) -> None:
    from runner.tracking.runs import start_job

    cfg = _job_config(workdir, "RUN")
    _kill_after_create(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        start_job(cfg)
    runs = client.search_runs([client.get_experiment_by_name("iris").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_kill_while_a_sweep_parent_is_created_records_it(
    client: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_interrupts: None
) -> None:
    from runner.tracking.parents import SweepParents
    from runner.tracking.runs import create_parent
    from runner.tracking.session import close_open_runs, store_for

    cfg = _job_config(workdir, "MULTIRUN")
    store = store_for(client.tracking_uri, cfg)
    exp_id = store.experiment_id("iris")
    sweep_dir = workdir / "multirun"
    _kill_after_create(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        SweepParents(sweep_dir).get_or_create(
            store.uri, exp_id, lambda rec: create_parent(store, exp_id, cfg, sweep_dir, rec)
        )
    # The registry holds the parent, so the entry point's way out ends it.
    (parent,) = SweepParents(sweep_dir).all()[store.uri].values()
    from runner.tracking.session import Sweep, state

    state.sweep = Sweep(uri=store.uri, dir=sweep_dir)
    close_open_runs("KILLED")
    assert client.get_run(parent).info.status == "KILLED"


def test_kill_while_a_run_is_ended_still_ends_it(
    client: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_interrupts: None
) -> None:
    from runner.tracking.runs import start_job
    from runner.tracking.store import Store

    job = start_job(_job_config(workdir, "RUN"))
    end = Store.end_run

    def kill_then_end(self: Store, run_id: str, status: str) -> None:
        _kill_self()
        end(self, run_id, status)

    monkeypatch.setattr(Store, "end_run", kill_then_end)
    with pytest.raises(KeyboardInterrupt):
        job.finish("FINISHED")
    assert client.get_run(job.run_id).info.status == "FINISHED"


def test_dropped_signals_do_not_interrupt(sigterm_interrupts: None) -> None:
    with interrupts.held(drop=True):
        _kill_self()
    assert signal.getsignal(signal.SIGTERM) is interrupts.terminate


@pytest.mark.parametrize("calls", [200, 20000])
def test_a_second_signal_during_a_trial_voids_it(
    tracking_uri: str, workdir: Path, calls: int
) -> None:
    """ "A second signal means now" inside a trial (the first held in the trial's run
    creation, the second ``calls`` function calls later: inside it, or later in the job):
    exit 130, the trial void and out of the count (never a FAIL that counts), no run
    RUNNING, the trial's run (if made) KILLED. Real CLI, ``tests/faults.py --kill-twice``."""
    import os

    import optuna
    from mlflow.tracking import MlflowClient

    from runner.sweeps.optuna.storage import counted
    from tests.conftest import ROOT, run_python

    marker = workdir / "marker"
    # The first signal as the first trial's run is created (run 1 is the study's parent).
    fault = ["runner.tracking.store:Store.create_run", "2", str(calls), str(marker)]
    sweep = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "model.C=choice(0.5, 1.0)"]
    sweep += ["hydra.sweeper.storage=sqlite:///optuna.db", "tracking.log_model=false"]
    sweep += ["tracking.log_figures=false", "tracking.log_importances=false"]
    proc = run_python(
        ["-c", "import faults; faults.main_twice()", "--kill-twice", *fault, "--", *sweep],
        cwd=workdir,
        env={"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])},
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert marker.read_text() == "fired twice", out
    assert proc.returncode == 130, out
    assert "interrupted: open runs were ended as KILLED" in out, out
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert trials and not [t for t in trials if t.state.name == "RUNNING"]
    assert all(t.system_attrs.get("runner.void") for t in trials if t.state.name == "FAIL")
    assert not [t for t in counted(trials) if t.state.name == "FAIL"]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"KILLED"}, [r.info.status for r in runs]
