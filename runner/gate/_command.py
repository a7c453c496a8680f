"""The command line of ``python -m runner.gate``: parse, resolve, compare, exit 0/1/2."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runner.cli import EXIT_FAILED, EXIT_OK, add_tracking_uri, fail
from runner.errors import RunnerError
from runner.gate.checks import GateError, MetricRule, gate, render

__all__ = ["main"]

_EPILOG = """\
Each --max-drop, --higher-is-better or --lower-is-better applies to the --metric before it.
A drop is how much worse the candidate is: baseline - candidate for a metric where higher
is better, candidate - baseline where lower is. The direction comes from the name (losses,
errors, rmse, times: lower is better; anything else: higher) unless given.

examples:
  python -m runner.gate --run RUN_ID --baseline champion:iris-clf \\
      --metric val_accuracy --max-drop 0.01 --metric val_log_loss --max-drop 5%
  python -m runner.gate --run RUN_ID --baseline best --metric val_rmse --max-drop 0.5

exit status: 0 no regression, 1 a regression (or the candidate did not finish),
2 usage (unknown run or model, a metric missing on either side).
"""


class _Metric(argparse.Action):
    def __call__(self, parser: Any, ns: argparse.Namespace, value: Any, opt: Any = None) -> None:
        name = str(value).removeprefix("metrics.").strip()
        if not name:
            parser.error("--metric needs a metric name, e.g. --metric val_accuracy")
        ns.rules = [*(ns.rules or []), {"name": name}]


class _OfLastMetric(argparse.Action):
    """An option that sets one field of the rule of the --metric before it."""

    def __call__(self, parser: Any, ns: argparse.Namespace, value: Any, opt: Any = None) -> None:
        if not ns.rules:
            parser.error(f"{opt} must follow the --metric it applies to")
        rule = ns.rules[-1]
        if self.dest == "max_drop":
            rule.update(_parse_drop(parser, str(value)))
        else:
            rule["direction"] = self.const


def _parse_drop(parser: Any, text: str) -> dict[str, Any]:
    relative = text.endswith("%")
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        parser.error(f"--max-drop {text!r} is not a number; write e.g. 0.01 or 1%")
    if not value >= 0:  # also refuses nan
        parser.error(f"--max-drop {text!r} is negative; a drop allowed is 0 or more")
    return {"max_drop": value / 100 if relative else value, "relative": relative}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m runner.gate``."""
    p = argparse.ArgumentParser(
        prog="python -m runner.gate",
        description=(
            "A CI/CD gate: compare a candidate run with a baseline (a registered model's "
            "alias, the best-tagged run, or a run id) on chosen metrics, print the comparison "
            "and exit 1 when a metric got worse by more than it may."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, metavar="RUN_ID", help="the candidate run")
    p.add_argument(
        "--baseline",
        required=True,
        metavar="SPEC",
        help="ALIAS:MODEL_NAME (e.g. champion:iris-clf; also models:/NAME@ALIAS), "
        "`best` (the run tagged runner.best=true in the candidate's sweep, else its "
        "experiment), or a RUN_ID",
    )
    p.add_argument(
        "--metric",
        action=_Metric,
        dest="rules",
        metavar="NAME",
        help="a metric to hold (repeatable)",
    )
    p.add_argument(
        "--max-drop",
        action=_OfLastMetric,
        dest="max_drop",
        metavar="X",
        help="how much worse the previous --metric may get: absolute (0.01) or relative "
        "to the baseline (1%%); default 0",
    )
    p.add_argument(
        "--higher-is-better",
        action=_OfLastMetric,
        nargs=0,
        const="maximize",
        dest="direction",
        help="the previous --metric is better larger (default: from its name)",
    )
    p.add_argument(
        "--lower-is-better",
        action=_OfLastMetric,
        nargs=0,
        const="minimize",
        dest="direction",
        help="the previous --metric is better smaller (default: from its name)",
    )
    add_tracking_uri(p, "the store holding both runs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m runner.gate``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if not args.rules:
            raise GateError(
                "no metric to compare; pass at least one --metric NAME (with --max-drop X), "
                "e.g. --metric val_accuracy --max-drop 0.01."
            )
        rules = [MetricRule(**r) for r in args.rules]
        from runner.tracking.store import command_uri, connect

        comparison = gate(connect(command_uri(args.tracking_uri)), args.run, args.baseline, rules)
    except RunnerError as e:
        return fail(e)
    print(render(comparison))
    sys.stdout.flush()
    return EXIT_OK if comparison.passed else EXIT_FAILED
