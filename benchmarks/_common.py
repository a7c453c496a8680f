"""Timing helpers shared by the benchmarks: side-by-side, median of repeats."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_subprocess(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, inherit: bool = True
) -> float:
    """Wall time of one subprocess, which must succeed.

    ``env`` is added to this process's environment; with ``inherit=False`` it is the whole
    environment (a side that must not see this process's ``MLFLOW_*`` variables).
    """
    start = time.perf_counter()
    full = {**os.environ, **(env or {})} if inherit else dict(env or {})
    proc = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {args}\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def python(code: str) -> list[str]:
    """Command line running ``code`` with this interpreter."""
    return [sys.executable, "-c", code]


def compare(
    name: str,
    ours: Callable[[Path], float],
    baseline: Callable[[Path], float],
    *,
    repeats: int = 3,
    target: float | None = None,
) -> float:
    """Run both sides alternately in fresh directories; print the medians and the ratio."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            b.append(baseline(Path(d2)))
            a.append(ours(Path(d1)))
    # Each repeat runs both sides back to back: the median of those paired ratios cancels
    # the slow drifts of a shared machine's speed better than a ratio of medians.
    ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
    verdict = "" if target is None else (" OK" if ratio <= target else f" ABOVE TARGET {target}")
    pairs = ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(a, b, strict=True))
    print(
        f"{name}: runner {statistics.median(a):.2f}s, baseline {statistics.median(b):.2f}s "
        f"(medians); ratio {ratio:.2f} (median of paired ratios){verdict} [pairs: {pairs}]",
        flush=True,
    )
    return ratio


def fresh_store(directory: Path) -> str:
    """A migrated SQLite store in ``directory`` (migration time is not what we measure)."""
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    subprocess.run(
        python(
            f"from mlflow.tracking import MlflowClient; MlflowClient({uri!r}).search_experiments()"
        ),
        check=True,
        capture_output=True,
    )
    return uri
