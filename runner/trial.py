"""The trial a job runs for, when an Optuna sweep launched it: report, prune, classify.

A job reaches its trial through three functions that are no-ops outside a sweep::

    from runner import trial

    for epoch in range(epochs):
        loss = train_one_epoch()
        trial.report(loss, epoch, lower_is_better=True)
        if trial.should_prune():
            raise trial.pruned()

``report`` takes the intermediate value and whether lower is better for it; when that
disagrees with the study's direction the value is negated before it reaches Optuna, so the
pruner compares trials the right way round (``val_loss`` in a study that maximises
accuracy). ``runner.app`` reports the torch MLP's per-epoch ``val_loss`` and xgboost's
per-round validation metric. Nothing here imports Optuna until a trial is active.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner import interrupts

__all__ = [
    "Outcome",
    "TrialHandle",
    "TrialRef",
    "activate",
    "current",
    "is_pruned_error",
    "outcome",
    "pruned",
    "report",
    "should_prune",
]


@dataclass
class TrialRef:
    """What a worker process needs to reach a trial in an RDB/journal storage (picklable)."""

    storage: Any
    study_name: str
    trial_id: int
    number: int
    directions: list[str]
    pruner: Any = None
    pruning: bool = False


class TrialHandle:
    """One Optuna trial, as a job sees it.

    Args:
        ref: Where the trial lives.
        trial: The live ``optuna.trial.Trial`` when the job runs in the sweep's process.
    """

    def __init__(self, ref: TrialRef, trial: Any = None) -> None:
        self.ref = ref
        self.number = ref.number
        self._trial = trial

    @property
    @interrupts.fenced
    def trial(self) -> Any:
        """The ``optuna.trial.Trial`` (loaded from the storage on first use in a worker)."""
        if self._trial is None:
            import optuna

            from runner.sweeps.optuna.storage import make_storage

            study = optuna.load_study(
                study_name=self.ref.study_name,
                storage=make_storage(self.ref.storage),
                pruner=self.ref.pruner,
            )
            self._trial = optuna.trial.Trial(study, self.ref.trial_id)
        return self._trial

    @property
    def pruning(self) -> bool:
        """Whether reports are used at all (a pruner is set; single objective)."""
        return self.ref.pruning and len(self.ref.directions) == 1

    @interrupts.fenced
    def report(self, value: float, step: int, *, lower_is_better: bool | None = None) -> None:
        """Report an intermediate value at ``step`` (see the module docstring)."""
        if not self.pruning or not math.isfinite(float(value)):
            return
        value = float(value)
        if lower_is_better is not None and lower_is_better != (
            self.ref.directions[0] == "minimize"
        ):
            value = -value
        self.trial.report(value, int(step))

    @interrupts.fenced
    def should_prune(self) -> bool:
        """Whether the pruner wants this trial stopped now."""
        return self.pruning and bool(self.trial.should_prune())


_current: TrialHandle | None = None


def current() -> TrialHandle | None:
    """The trial of the job in progress, or None outside an Optuna sweep."""
    return _current


@contextlib.contextmanager
def activate(handle: TrialHandle) -> Iterator[TrialHandle]:
    """Make ``handle`` the current trial while the job runs."""
    global _current
    previous, _current = _current, handle
    try:
        yield handle
    finally:
        _current = previous


def report(value: float, step: int, *, lower_is_better: bool | None = None) -> None:
    """Report an intermediate value to the current trial (no-op outside a sweep)."""
    if _current is not None:
        _current.report(value, step, lower_is_better=lower_is_better)


def should_prune() -> bool:
    """Whether the current trial should stop now (False outside a sweep)."""
    return _current is not None and _current.should_prune()


def pruned(message: str | None = None) -> BaseException:
    """The exception that ends a job as a pruned trial (``optuna.TrialPruned``)."""
    import optuna

    number = _current.number if _current is not None else "?"
    return optuna.TrialPruned(message or f"trial {number} pruned by the pruner")


def is_pruned_error(error: BaseException | None) -> bool:
    """Whether ``error`` is Optuna's ``TrialPruned`` (without importing Optuna)."""
    return error is not None and any(
        c.__name__ == "TrialPruned" and c.__module__.startswith("optuna")
        for c in type(error).__mro__
    )


@dataclass
class Outcome:
    """How a job ended, as an Optuna trial state: ``COMPLETE``, ``PRUNED`` or ``FAIL``."""

    state: str
    values: list[float] = field(default_factory=list)
    error: str | None = None
    #: The job's return cannot fit the study at all (wrong number of values): stop.
    fatal: bool = False


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def outcome(status_ok: bool, value: Any, n_objectives: int) -> Outcome:
    """Classify a job's end: the one rule shared by the sweeper and the MLflow callback.

    Args:
        status_ok: The job returned (Hydra's ``JobStatus.COMPLETED``).
        value: Its return value, or the exception it raised.
        n_objectives: How many values the study expects.
    """
    if not status_ok:
        if is_pruned_error(value):
            return Outcome("PRUNED", error=_describe(value))
        return Outcome("FAIL", error=_describe(value) if isinstance(value, BaseException) else "")
    many = isinstance(value, list | tuple) or type(value).__name__ == "ListConfig"
    raw: Sequence[Any] = list(value) if many else [value]
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        return Outcome("FAIL", error=f"the job returned {value!r}, not a number")
    if len(values) != n_objectives:
        return Outcome(
            "FAIL",
            error=f"the job returned {len(values)} value(s) ({value!r}) but the study has "
            f"{n_objectives} direction(s)",
            fatal=True,
        )
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        return Outcome("FAIL", error=f"the job returned a non-finite objective: {value!r}")
    return Outcome("COMPLETE", values=values)
