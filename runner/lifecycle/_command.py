"""``python -m runner.lifecycle``: keep a tracking store tidy, safely.

Subcommands: ``archive``, ``prune-failed``, ``close-stale``, ``tag-best``, ``gc`` and
``policy FILE`` (all of them, in order, from a config in ``runner/resources/lifecycle/``).
Every command plans first (reads only; every check happens here), prints the plan, asks before a
destructive change unless ``--yes``, and with ``--dry-run`` stops after the plan. Everything
goes through ``MlflowClient`` (a local SQLite store or a tracking server alike) except ``gc``,
which is MLflow's own ``gc`` on the backend store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.cli import add_tracking_uri, fail
from runner.errors import RunnerError
from runner.lifecycle.durations import parse_duration
from runner.tracking.store import command_uri, connect

if TYPE_CHECKING:
    from runner.lifecycle.runs import Plan

__all__ = ["build_parser", "main"]

_COMMANDS = ("archive", "prune-failed", "close-stale", "tag-best", "gc")


# -- argument parsing -------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, top: bool) -> None:
    # On the subcommands the defaults are SUPPRESS, so a flag given before the subcommand
    # is not overwritten by the subparser's default.
    d: Any = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    add_tracking_uri(p, "the store to tidy", default=d(None))
    p.add_argument(
        "--yes", "-y", action="store_true", default=d(False), help="do not ask for confirmation"
    )
    p.add_argument(
        "--dry-run", action="store_true", default=d(False), help="print the plan, change nothing"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m runner.lifecycle``."""
    parser = argparse.ArgumentParser(
        prog="python -m runner.lifecycle",
        description="Archive idle experiments, prune failed runs, close stale runs, tag the "
        "best runs and collect garbage in an MLflow tracking store. Destructive steps print "
        "their plan and ask first (--yes skips the question, --dry-run only prints).",
    )
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, top=False)
        return p

    p = add("archive", "soft-delete experiments with no run activity in a while")
    p.add_argument("--older-than", required=True, help="idle for at least this long: 90d, 12w")
    p.add_argument("--export-csv", metavar="DIR", help="first write each one's runs to DIR/*.csv")
    p.add_argument(
        "--keep-tagged",
        choices=["best"],
        help="'best': spare experiments holding a run tagged runner.best=true",
    )

    p = add("prune-failed", "soft-delete FAILED (and KILLED) runs older than a cutoff")
    p.add_argument("--older-than", required=True, help="last activity at least this long ago")
    p.add_argument("--experiment", metavar="NAME", help="only this experiment (default: all)")
    p.add_argument("--include-killed", action="store_true", help="prune KILLED runs too")

    p = add("close-stale", "end RUNNING runs whose process died (no activity in a while)")
    p.add_argument("--older-than", required=True, help="no activity for this long: 2h, 30m")
    p.add_argument("--status", default="KILLED", choices=["KILLED", "FAILED"])

    p = add("tag-best", "tag the top runs of an experiment or sweep runner.best=true")
    p.add_argument("--experiment", metavar="NAME", required=True)
    p.add_argument("--sweep", metavar="PARENT_RUN_ID", help="rank only this sweep's runs")
    p.add_argument("--metric", required=True, help="metric to rank by, e.g. val_accuracy")
    p.add_argument("--top", type=int, default=1, help="how many runs are best (default 1)")
    p.add_argument(
        "--direction",
        choices=["maximize", "minimize"],
        help="default: the runs' `direction` param",
    )
    p.add_argument(
        "--register-best",
        metavar="NAME",
        help="also register the best run's logged model as a new version of model NAME",
    )
    p.add_argument(
        "--alias",
        default="champion",
        help="the alias --register-best points at the new version (default: champion)",
    )

    p = add("gc", "permanently delete soft-deleted runs (mlflow gc) and report space reclaimed")
    p.add_argument(
        "--older-than", default="30d", help="deleted at least this long ago (default 30d)"
    )
    p.add_argument(
        "--backend-store-uri",
        help="the tracking database; required when --tracking-uri is a server",
    )

    p = add(
        "policy",
        "run the routine a policy file describes (runner/resources/lifecycle/default.yaml)",
    )
    p.add_argument("file", help="policy YAML, or the name of one in runner/resources/lifecycle/")
    p.add_argument("overrides", nargs="*", help="OmegaConf dotlist overrides: steps.0.x=y")
    return parser


# -- one command ------------------------------------------------------------------------------
def _cutoff(text: str) -> tuple[int, int]:
    """``(older_than_ms, cutoff_ms)`` of an ``--older-than`` value."""
    from runner.lifecycle.runs import now_ms

    ms = int(parse_duration(text, what="--older-than").total_seconds() * 1000)
    return ms, now_ms() - ms


def make_plan(args: argparse.Namespace, uri: str) -> Plan:
    """Build (and so validate) the plan of one subcommand; reads only."""
    from runner.lifecycle import gc as gcmod
    from runner.lifecycle import runs

    older_ms, cutoff = _cutoff(args.older_than)
    if args.command == "gc":
        return gcmod.plan_gc(
            tracking_uri=uri,
            backend_store_uri=args.backend_store_uri,
            older_than_ms=older_ms,
            older_than=args.older_than,
        )
    client = connect(uri)
    if args.command == "archive":
        return runs.plan_archive(
            client,
            cutoff_ms=cutoff,
            older_than=args.older_than,
            keep_best=args.keep_tagged == "best",
            export_dir=Path(args.export_csv).resolve() if args.export_csv else None,
        )
    if args.command == "prune-failed":
        return runs.plan_prune_failed(
            client,
            cutoff_ms=cutoff,
            older_than=args.older_than,
            experiment=args.experiment,
            include_killed=args.include_killed,
        )
    if args.command == "close-stale":
        return runs.plan_close_stale(
            client, cutoff_ms=cutoff, older_than=args.older_than, status=args.status
        )
    raise AssertionError(args.command)  # pragma: no cover


def _plan_tag_best(args: argparse.Namespace, uri: str) -> Plan:
    from runner.lifecycle.runs import plan_tag_best

    if args.top < 1:
        raise RunnerError(f"--top {args.top}: it must be at least 1.")
    client = connect(uri)
    plan = plan_tag_best(
        client,
        experiment=args.experiment,
        metric=args.metric,
        top=args.top,
        direction=args.direction,
        sweep=args.sweep,
    )
    if getattr(args, "register_best", None):
        _plan_registration(plan, client, args.register_best, args.alias)
    return plan


def _plan_registration(plan: Plan, client: Any, name: str, alias: str) -> None:
    """``tag-best --register-best NAME``: one more step, registering the best run's model."""
    from runner.tracking.reader import get_run
    from runner.tracking.registry import (
        check_names,
        current_version,
        describe,
        find_logged_model,
        register_best,
    )

    # plan_tag_best's first note is "best: <id>, <id>...", best first.
    best = plan.notes[0].removeprefix("best: ").split(",")[0].strip() if plan.notes else ""
    if not best:
        raise RunnerError("tag-best found no best run, so --register-best has nothing to register.")
    check_names(name, alias)
    current = current_version(client, name, alias)
    if current is not None and current.run_id == best:
        plan.notes.append(f"{name}@{alias} already is version {current.version}, from run {best}")
        return
    find_logged_model(client, get_run(client, best))  # a run without a model fails here
    plan.targets.append(f"register run {best}'s model as {name}, alias {alias!r}")
    tagging = plan.execute

    def execute(report: Any) -> None:
        tagging(report)
        report(describe(register_best(client, best, name, alias=alias)))

    plan.execute = execute


def _plan(args: argparse.Namespace, uri: str) -> Plan:
    if args.command == "tag-best":
        return _plan_tag_best(args, uri)
    return make_plan(args, uri)


def _confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():
        print()  # piped answers are not echoed: end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def _show(plan: Plan) -> None:
    n = len(plan.targets)
    print(f"{plan.command}: {plan.title}: {n} {'change' if n == 1 else 'changes'}")
    for t in plan.targets:
        print(f"  {t}")
    for note in plan.notes:
        print(f"  ({note})")
    sys.stdout.flush()  # a log of both streams keeps the warnings after the plan's lines
    for warning in plan.warnings:
        print(f"warning: {plan.command}: {warning}", file=sys.stderr)


def _carry_out(plan: Plan, *, yes: bool, dry_run: bool) -> int:
    """Show, confirm and execute one plan; the exit code."""
    _show(plan)
    if not plan.targets:
        print(f"{plan.command}: nothing to do.")
        return 0
    if dry_run:
        print(f"{plan.command}: dry run, nothing changed.")
        return 0
    question = f"{plan.command}: go ahead with these {len(plan.targets)} changes?"
    if plan.destructive and not yes and not _confirm(question):
        print(
            f"{plan.command}: not confirmed, nothing changed (answer y, or pass --yes "
            "to run unattended).",
            file=sys.stderr,
        )
        return 1
    done: list[str] = []

    from runner.cli import CommandProgress

    # Thousands of runs take minutes: a bar on a terminal, a line per tenth otherwise.
    with CommandProgress(plan.command, len(plan.targets)) as progress:

        def report(line: str) -> None:
            done.append(line)
            print(f"  {line}")
            progress.advance()

        plan.execute(report)
    for line in plan.epilogue:
        print(f"  {line}")
    print(f"{plan.command}: done, {len(done)} action{'' if len(done) == 1 else 's'}.")
    return 0


# -- policy -----------------------------------------------------------------------------------
def _policy_file(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    # A bare name (`default`) means a policy shipped in runner/resources/lifecycle/.
    from importlib.resources import files

    shipped = Path(str(files("runner.resources") / "lifecycle" / f"{path.stem}.yaml"))
    if path.suffix in ("", ".yaml") and path.parent == Path() and shipped.is_file():
        return shipped
    raise RunnerError(
        f"policy file {name!r} does not exist; pass a YAML path such as "
        "runner/resources/lifecycle/default.yaml (or the name of one there: default)."
    )


def _step_argv(step: Any, index: int) -> list[str]:
    if not isinstance(step, dict) or len(step) != 1:
        raise RunnerError(
            f"policy step {index} is {step!r}; each step is a mapping with one key, the "
            f"command ({', '.join(_COMMANDS)}), holding its options, e.g. "
            "`- prune-failed: {older_than: 7d}`."
        )
    ((command, options),) = step.items()
    if command not in _COMMANDS:
        raise RunnerError(
            f"policy step {index}: {command!r} is not a command; use one of {', '.join(_COMMANDS)}."
        )
    argv = [str(command)]
    for key, value in (options or {}).items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def _load_policy(file: str, overrides: Sequence[str]) -> tuple[dict[str, Any], Path]:
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = _policy_file(file)
    try:
        cfg = OmegaConf.load(path)
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r} is not KEY=VALUE (steps.0.close-stale.x=y)")
            # OmegaConf.update, not a merged dotlist: it indexes into the steps list.
            OmegaConf.update(cfg, key, yaml.safe_load(raw), force_add=True)
        data = OmegaConf.to_container(cfg, resolve=True)
    except (OmegaConfBaseException, OSError, ValueError, yaml.YAMLError) as e:
        raise RunnerError(f"policy file {path} cannot be read: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise RunnerError(
            f"policy file {path} has no `steps:` list; see runner/resources/lifecycle/default.yaml."
        )
    return {str(k): v for k, v in data.items()}, path


def _run_policy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    data, path = _load_policy(args.file, args.overrides)
    uri = command_uri(args.tracking_uri or data.get("tracking_uri"))
    steps: list[argparse.Namespace] = []
    for i, step in enumerate(data["steps"]):
        argv = _step_argv(step, i)
        if argv[0] == "gc" and data.get("backend_store_uri") and "--backend-store-uri" not in argv:
            argv += ["--backend-store-uri", str(data["backend_store_uri"])]
        try:
            steps.append(parser.parse_args(argv))
        except SystemExit:
            raise RunnerError(
                f"policy step {i} ({' '.join(argv)}) in {path} has bad options (see above)."
            ) from None
    # Validate everything before acting: every step's plan is built once (reads only), so
    # a bad duration, experiment or metric in step 5 stops the routine before step 1 acts.
    for ns in steps:
        _plan(ns, uri)
    print(f"policy {path}: {len(steps)} steps on {_public(uri)}")
    worst = 0
    for ns in steps:
        # Planned again: the earlier steps changed the store.
        worst = max(worst, _carry_out(_plan(ns, uri), yes=args.yes, dry_run=args.dry_run))
    return worst


def _public(uri: str) -> str:
    from runner.tracking.store import public_uri

    return public_uri(uri)


# -- entry point ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m runner.lifecycle``; returns the exit code."""
    parser = build_parser()
    try:
        # Policy overrides may follow flags (`policy FILE --yes steps.0.x=y`), which a
        # positional nargs="*" after optionals does not accept: collect them as leftovers.
        args, extra = parser.parse_known_args(argv)
        if extra and (args.command != "policy" or any(a.startswith("-") for a in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if args.command == "policy":
            return _run_policy(args, parser)
        uri = command_uri(args.tracking_uri)
        return _carry_out(_plan(args, uri), yes=args.yes, dry_run=args.dry_run)
    except RunnerError as e:
        return fail(e)
    except Exception as e:
        from runner.tracking.reader import is_store_error

        if not is_store_error(e):
            raise
        print(
            f"error: the tracking store refused a request: {e}. Re-run the same command: "
            "each step is idempotent and picks up where this one stopped.",
            file=sys.stderr,
        )
        return 1
