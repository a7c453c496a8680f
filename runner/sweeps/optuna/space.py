"""The search space: Hydra's sweep grammar, parsed by Hydra, as Optuna distributions.

=================================  ===========================================================
Hydra override                     Optuna distribution
=================================  ===========================================================
``choice(a, b, c)`` / ``a,b,c``    ``CategoricalDistribution([a, b, c])``
``range(a, b[, step])`` (ints)     ``IntDistribution(a, b, step)``: b included, as the official
                                   hydra-optuna-sweeper maps it (Hydra's basic sweeper excludes it)
``range(a, b, step)`` (floats)     ``FloatDistribution(a, b, step=step)``, b included
``interval(a, b)``                 ``FloatDistribution(a, b)``
``int(interval(a, b))``            ``IntDistribution(a, b)``
``tag(log, <interval/range>)``     the same with ``log=True``
``key=value``                      a fixed override, applied to every trial
=================================  ===========================================================
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from runner.errors import ConfigError

__all__ = ["GRAMMAR", "SearchSpace", "format_value", "parse_space"]

GRAMMAR = (
    "choice(a, b, ...) | a,b,... | range(start, stop[, step]) (stop included) | "
    "interval(low, high) | int(interval(low, high)) | tag(log, interval(...)) | "
    "tag(log, range(...)) | key=value (fixed)"
)


@dataclass
class SearchSpace:
    """Distributions by key, the fixed overrides, and the raw text of both (for names)."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    raw: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The space as JSON ``{key: override text}`` (a param of the parent run)."""
        return json.dumps(self.raw, sort_keys=True)

    def fixed_values(self) -> dict[str, str]:
        """The fixed overrides as ``{key: value text}`` (``+``/``++``/``~`` prefixes dropped)."""
        out: dict[str, str] = {}
        for text in self.fixed:
            key, _, value = text.partition("=")
            out[key.lstrip("+~")] = value
        return out

    def digest(self, extra: list[str]) -> str:
        """Eight hex digits naming this space plus ``extra`` (fixed overrides, directions)."""
        text = json.dumps([sorted(self.raw.items()), sorted(self.fixed), extra])
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def grid(self) -> dict[str, list[Any]]:
        """The space as GridSampler's ``search_space`` (discrete distributions only)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        grid: dict[str, list[Any]] = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                grid[key] = list(range(dist.low, dist.high + 1, dist.step))
            elif isinstance(dist, FloatDistribution) and dist.step is not None:
                n = round((dist.high - dist.low) / dist.step)
                grid[key] = [round(dist.low + i * dist.step, 12) for i in range(n + 1)]
            else:
                raise ConfigError(
                    f"the grid sampler needs a discrete space, but {key}={self.raw[key]} is "
                    "continuous. Use choice(...) or range(...) for it, or another sampler "
                    "(hydra/sweeper/sampler=tpe)."
                )
        return grid


def format_value(value: Any) -> str:
    """A sampled value as Hydra override text."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _bad(text: str, why: str) -> ConfigError:
    from runner.tracking.redact import redact_override

    return ConfigError(
        f"the search-space override {redact_override(text)!r} cannot be used: {why}. The "
        f"grammar is: {GRAMMAR}."
    )


def _distribution(override: Any, text: str) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    raw = override.value()
    value: Any = raw  # Hydra's sweep types are loosely typed; checked below
    log = "log" in (getattr(value, "tags", None) or set())
    if isinstance(raw, ChoiceSweep):
        if log:
            raise _bad(text, "tag(log, ...) applies to interval(...) and range(...), not choice")
        choices = list(value.list)
        if not choices:
            raise _bad(text, "an empty choice")
        if any(isinstance(c, dict | list) for c in choices):
            raise _bad(text, "choices must be plain values (numbers, strings, bools, null)")
        return CategoricalDistribution(choices)
    if isinstance(raw, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step is None or step == 0:
            raise _bad(text, "the step is zero")
        if step < 0 or stop < start:
            raise _bad(text, "it is descending")
        # As the official plugin maps it: `stop` included (where the steps reach it).
        if all(isinstance(x, int) for x in (start, stop, step)):
            if log and step != 1:
                raise _bad(text, "tag(log, range(...)) needs step 1")
            last = start + ((stop - start) // step) * step
            return IntDistribution(start, last, step=step, log=log)
        if log:
            raise _bad(text, "tag(log, range(...)) needs integers")
        # The last point the steps reach, computed here (Optuna would warn and round
        # `high` down itself); counted, since adding steps up accumulates rounding.
        n = math.floor((stop - start) / step + 1e-9)
        last = round(start + n * step, 12)
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(raw, IntervalSweep):
        low, high = value.start, value.end
        if not low < high:
            raise _bad(text, f"low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise _bad(text, f"a log interval needs low > 0 (got {low})")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise _bad(text, f"{type(value).__name__} sweeps are not supported")


def parse_space(params: dict[str, str] | None, arguments: list[str]) -> SearchSpace:
    """Build the space from ``hydra.sweeper.params`` and the command line (which wins).

    Raises:
        ConfigError: An override that Hydra's parser rejects or that has no Optuna
            equivalent; the message shows the override and the grammar.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    texts: dict[str, str] = {}
    for key, value in (params or {}).items():
        texts[str(key)] = f"{key}={value}"
    fixed: list[str] = []
    for arg in arguments:
        try:
            override = parser.parse_override(arg)
        except Exception as e:
            raise _bad(arg, str(e).strip().splitlines()[0]) from None
        if override.is_sweep_override():
            texts[override.get_key_element()] = arg
            continue
        key = override.get_key_element()
        texts.pop(key, None)  # a fixed value on the command line pins a preset's param
        fixed.append(arg)
    space = SearchSpace(fixed=fixed)
    for key, text in texts.items():
        try:
            override = parser.parse_override(text)
        except Exception as e:
            raise _bad(text, str(e).strip().splitlines()[0]) from None
        if not override.is_sweep_override():
            space.fixed.append(text)
            continue
        if override.is_delete() or override.is_add() or override.is_force_add():
            raise _bad(text, "+key, ++key and ~key cannot be swept")
        space.distributions[key] = _distribution(override, text)
        space.raw[key] = text.split("=", 1)[1]
    return space


_LEGACY_TYPES = ("int", "float", "categorical")


def legacy_params(search_space: dict[str, Any]) -> dict[str, str]:
    """Hydra 1.1's ``hydra.sweeper.search_space`` as ``hydra.sweeper.params`` overrides.

    The official plugin still reads that deprecated node (Hydra's 1.1-to-1.2 upgrade
    page): ``{type: float|int, low, high, step, log}`` or ``{type: categorical, choices}``.
    Each entry becomes the 1.2 override that makes the same Optuna distribution.

    Raises:
        ConfigError: An entry that is not one of those shapes; the message names it.
    """
    out: dict[str, str] = {}
    for key, spec in search_space.items():
        where = f"hydra.sweeper.search_space.{key}"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in _LEGACY_TYPES:
            raise ConfigError(
                f"{where}={spec!r} is not a distribution: give type: "
                f"{' | '.join(_LEGACY_TYPES)} with low/high[/step/log] or choices, or move it "
                f"to hydra.sweeper.params as an override ({GRAMMAR})."
            )
        unknown = set(spec) - {"type", "low", "high", "step", "log", "choices"}
        if unknown:
            raise ConfigError(
                f"{where} has key(s) {sorted(unknown)}: the keys of a search_space entry are "
                "type, low, high, step, log (int, float) and choices (categorical)."
            )
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: a categorical entry needs a list of choices.")
            out[str(key)] = f"choice({', '.join(format_value(c) for c in choices)})"
            continue
        if spec.get("low") is None or spec.get("high") is None:
            raise ConfigError(f"{where}: an {kind} entry needs low and high.")
        low, high, step = spec["low"], spec["high"], spec.get("step")
        if kind == "int":
            text = (
                f"range({int(low)}, {int(high)}, {int(step)})"
                if step not in (None, 1)
                else f"int(interval({int(low)}, {int(high)}))"
            )
        else:
            bounds = f"{format_value(float(low))}, {format_value(float(high))}"
            text = (
                f"range({bounds}, {format_value(float(step))})"
                if step is not None
                else f"interval({bounds})"
            )
        out[str(key)] = f"tag(log, {text})" if spec.get("log") else text
    return out
