"""A kill at the wrong moment never leaves a run RUNNING that nobody will end.

The CLI-level tests (SIGTERM to a sweep) cannot aim at the instant between creating a run
and recording its id; these send the signal exactly there.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import open_dict

from runner import interrupts
from tests.helpers import compose_cfg


@pytest.fixture
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as under ``python -m runner``."""
    previous = signal.signal(signal.SIGTERM, interrupts.terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_deferred_delivers_the_signal_after_the_block(sigterm_interrupts: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt, match="signal 15"), interrupts.deferred():
        _kill_self()
        done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGTERM) is interrupts.terminate


def test_deferred_without_a_signal_changes_nothing(sigterm_interrupts: None) -> None:
    with interrupts.deferred():
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
    from runner.tracking.callback import _start_job

    cfg = _job_config(workdir, "RUN")
    _kill_after_create(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _start_job(cfg)
    runs = client.search_runs([client.get_experiment_by_name("iris").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_kill_while_a_sweep_parent_is_created_records_it(
    client: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_interrupts: None
) -> None:
    from runner.tracking.callback import _create_parent, _store, close_open_runs
    from runner.tracking.sweep import SweepParents

    cfg = _job_config(workdir, "MULTIRUN")
    store = _store(client.tracking_uri, cfg)
    exp_id = store.experiment_id("iris")
    sweep_dir = workdir / "multirun"
    _kill_after_create(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        SweepParents(sweep_dir).get_or_create(
            store.uri, exp_id, lambda rec: _create_parent(store, exp_id, cfg, sweep_dir, rec)
        )
    # The registry holds the parent, so the entry point's way out ends it.
    (parent,) = SweepParents(sweep_dir).all()[store.uri].values()
    from runner.tracking._state import Sweep, state

    state.sweep = Sweep(uri=store.uri, dir=sweep_dir)
    close_open_runs("KILLED")
    assert client.get_run(parent).info.status == "KILLED"


def test_kill_while_a_run_is_ended_still_ends_it(
    client: Any, workdir: Path, monkeypatch: pytest.MonkeyPatch, sigterm_interrupts: None
) -> None:
    from runner.tracking.callback import _start_job
    from runner.tracking.store import Store

    job = _start_job(_job_config(workdir, "RUN"))
    end = Store.end_run

    def kill_then_end(self: Store, run_id: str, status: str) -> None:
        _kill_self()
        end(self, run_id, status)

    monkeypatch.setattr(Store, "end_run", kill_then_end)
    with pytest.raises(KeyboardInterrupt):
        job.finish("FINISHED")
    assert client.get_run(job.run_id).info.status == "FINISHED"


def test_dropped_signals_do_not_interrupt(sigterm_interrupts: None) -> None:
    with interrupts.deferred(drop=True):
        _kill_self()
    assert signal.getsignal(signal.SIGTERM) is interrupts.terminate
