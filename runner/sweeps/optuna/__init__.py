"""The Optuna sweep behind ``hydra/sweeper=optuna`` (the plugin class is a thin shell).

Public surface: :class:`OptunaSweep` (used by the plugin), :func:`parse_space`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OptunaSweep", "parse_space"]


def __getattr__(name: str) -> Any:
    # Lazy: the plugin scan imports hydra_plugins, which must stay cheap.
    if name == "OptunaSweep":
        from runner.sweeps.optuna._core import OptunaSweep

        return OptunaSweep
    if name == "parse_space":
        from runner.sweeps.optuna.space import parse_space

        return parse_space
    raise AttributeError(name)
