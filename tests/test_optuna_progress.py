"""What showing a sweep's progress reads from its study: once per look, and nothing unshown.

Every read of a study is all of its trials (on SQLite here 4 ms at 30 trials, 53 ms at
1000), done beside the workers on their cores: a launched worker read the whole study
after each trial of its own for a progress line that it never shows, and the launching
process read it once per newly finished trial every second.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
import pytest

from runner.sweeps.optuna._core import OptunaSweep
from runner.sweeps.optuna.progress import Progress


@pytest.fixture
def study(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An in-memory study of three finished trials whose reads of all trials are counted."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for x in (3.0, 1.0, 2.0):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x},
                distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
                value=x,
            )
        )
    study.reads = 0
    get_trials = study.get_trials

    def counted(*args: Any, **kwargs: Any) -> Any:
        study.reads += 1
        return get_trials(*args, **kwargs)

    monkeypatch.setattr(study, "get_trials", counted)
    return study


def _sweep() -> OptunaSweep:
    sweep = OptunaSweep.__new__(OptunaSweep)  # only the showing half is exercised
    sweep._reap = lambda study, **kw: None  # type: ignore[method-assign]
    return sweep


def test_one_look_reads_the_study_once_and_logs_each_new_trial(
    study: Any, caplog: pytest.LogCaptureFixture
) -> None:
    progress = Progress("s", 5, "log")
    seen: set[int] = set()
    with caplog.at_level(logging.INFO, logger="runner.optuna_sweep"):
        _sweep()._watch(study, progress, seen)
    assert study.reads == 1  # not once for the finished trials and once per event
    events = [r.getMessage() for r in caplog.records]
    assert [e.split(" | ")[0].split()[:3] for e in events] == [
        ["trial", str(n), "COMPLETE"] for n in (0, 1, 2)
    ]
    assert all("3/5 done" in e and "best 1" in e for e in events), events
    assert seen == {0, 1, 2} and progress.done_here == 3

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="runner.optuna_sweep"):
        _sweep()._watch(study, progress, seen)  # nothing new: nothing logged again
    assert not caplog.records and study.reads == 2


def test_progress_none_reads_nothing(study: Any) -> None:
    """A launched worker's progress: shown by nobody, so the study is never read for it."""
    progress = Progress("s", 5, "none")
    sweep = _sweep()
    sweep._show(study, progress, event="trial 0 COMPLETE 3 {'x': 3.0}")
    sweep._show(study, progress)
    sweep._watch(study, progress, set())
    assert study.reads == 0
