"""The cost of `tracking.system_metrics=true`, measured side by side.

    python benchmarks/bench_system_metrics.py [--repeats 5] [--interval 10]

One logreg job on iris (local SQLite) with MLflow's system metrics on, against the same job
with them off, alternately in fresh stores; prints the medians and the median of the paired
ratios. The monitor is a background thread sampling psutil every `--interval` seconds; its
start and its final flush at the end of the run are what a short job pays for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, compare, fresh_store, timed_subprocess

JOB = [sys.executable, "-m", "runner", "model=logreg", "dataset=iris"]


def _job(directory: Path, *extra: str) -> float:
    uri = fresh_store(directory)
    return timed_subprocess(
        [*JOB, f"hydra.run.dir={directory}/out", *extra],
        cwd=ROOT,
        env={"MLFLOW_TRACKING_URI": uri},
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    on = ("tracking.system_metrics=true", f"tracking.system_metrics_interval={args.interval}")
    compare(
        f"system metrics on (interval {args.interval:g} s) vs off, one logreg job",
        lambda d: _job(d, *on),
        lambda d: _job(d),
        repeats=args.repeats,
    )


if __name__ == "__main__":
    main()
