"""The parent runs of a sweep, shared by every job process through the sweep directory.

A sweep has one parent run per experiment its jobs log to (normally one; a sweep over
datasets logs each dataset's runs to its own experiment, each nested under that experiment's
parent). Job processes may live in other processes (the joblib launcher), so the parents are
recorded in ``<sweep dir>/.runner/parents.json`` under a file lock, never passed through
``MLFLOW_RUN_ID`` or the fluent run stack.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner import interrupts
from runner.locks import file_lock
from runner.tracking.redact import redact_override

__all__ = ["SELF_MANAGED_SWEEPERS", "SweepParents"]

#: Sweepers that create and register their own parent runs (one per Optuna study, reused on
#: resume and across processes): the callback makes no eager parent for them.
SELF_MANAGED_SWEEPERS = frozenset(
    {"hydra_plugins.runner_optuna_sweeper.optuna_sweeper.OptunaSweeper"}
)


class SweepParents:
    """The registry of a sweep's parent runs.

    Args:
        sweep_dir: The sweep's output directory (``hydra.sweep.dir``).
    """

    def __init__(self, sweep_dir: Path) -> None:
        self.dir = Path(sweep_dir) / ".runner"
        self.file = self.dir / "parents.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with file_lock(self.dir / "parents.lock"):
            data = json.loads(self.file.read_text()) if self.file.exists() else {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
                tmp.replace(self.file)

    def begin(self, overrides: list[str], *, keep_parents: bool) -> None:
        """Record a new sweep: its own command-line overrides (redacted), for parents made
        later.

        Args:
            overrides: The sweep's overrides.
            keep_parents: Keep the parents an earlier sweep in this directory registered (a
                sweeper that registers its own, per study, shared by every process of it).
                False: this sweep's jobs get parents of their own, never an earlier sweep's
                ended one (a grid sweep run again into a fixed ``hydra.sweep.dir``, or
                started in the same second as the last one).
        """
        with self._locked() as data:
            data["overrides"] = [redact_override(o) for o in overrides]
            if not keep_parents:
                data.pop("parents", None)

    def get_or_create(
        self, uri: str, experiment_id: str, create: Callable[[list[str] | None], str]
    ) -> str:
        """The parent run for ``experiment_id`` in store ``uri``, made once.

        ``create`` gets the sweep's recorded overrides (or None) and returns the new run id;
        it runs under the registry's lock and must not use the registry itself.
        """
        # Held until the new id is written: a kill in between would orphan a RUNNING parent.
        with interrupts.held(), self._locked() as data:
            parents = data.setdefault("parents", {}).setdefault(uri, {})
            if experiment_id not in parents:
                parents[experiment_id] = create(data.get("overrides"))
            return str(parents[experiment_id])

    def set(self, uri: str, experiment_id: str, run_id: str) -> None:
        """Record ``run_id`` as the parent for ``experiment_id`` (a sweeper that manages
        its own parent runs, e.g. one per Optuna study, registers it before any job)."""
        with self._locked() as data:
            data.setdefault("parents", {}).setdefault(uri, {})[experiment_id] = run_id

    def overrides(self) -> list[str] | None:
        """The sweep's own overrides recorded by :meth:`set_overrides` (None: not recorded)."""
        if not self.file.exists():
            return None
        with self._locked() as data:
            found = data.get("overrides")
            return [str(o) for o in found] if isinstance(found, list) else None

    def all(self) -> dict[str, dict[str, str]]:
        """``{uri: {experiment_id: parent run id}}`` of every parent made so far."""
        if not self.file.exists():
            return {}
        with self._locked() as data:
            return {uri: dict(p) for uri, p in data.get("parents", {}).items()}
