"""``python -m runner.replay <run_id>``: re-run a logged run exactly, optionally with changes.

The job's config is rebuilt from the run's own artifacts (``.hydra/config.yaml`` and the
group choices of ``.hydra/hydra.yaml``), never from today's ``conf/``, composed once, checked,
and that very config runs (:func:`runner.sweeps.hydra_job.run_config`: Hydra's job steps,
the MLflow callback, ``runner.app.run``), so the new run gets the same params. It is tagged
``runner.replay_of=<source id>`` and its description links the source run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import contract
from runner.cli import EXIT_FAILED, EXIT_OK, add_tracking_uri, fail
from runner.errors import ConfigError, DataError, RunnerError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from runner.replay.callback import ReplayCallback
    from runner.replay.rebuild import ComposedJob

__all__ = ["main"]


#: The backend of a replay: the store given by --tracking-uri (through the environment, so
#: the logged config keeps its `${oc.env:...}` reference and no URI lands in a file).
_BACKEND_URI = "${oc.env:MLFLOW_TRACKING_URI,null}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runner.replay",
        description=(
            "Re-run a logged run with the exact config it logged (not today's conf/), as a "
            "new run tagged runner.replay_of=<run_id>. Extra Hydra overrides change it."
        ),
        epilog=(
            "exit status: 0 ok, 1 the replayed job failed or --check found a difference, "
            "2 bad input (unknown run, not a runner run, refused target, config that no "
            "longer composes)."
        ),
    )
    p.add_argument("run_id", help="the run to replay (a job run, or a sweep's child run)")
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides applied on top (e.g. model.max_depth=3)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="compare every metric with the source run (*_time_s and system/* aside); "
        "exit 1 on a difference",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=0.0,
        help="relative tolerance of --check (default 0: bitwise equal)",
    )
    p.add_argument(
        "--trust",
        action="store_true",
        help="instantiate any _target_ of the logged config (skip the allow-list)",
    )
    p.add_argument(
        "--allow-target",
        action="append",
        default=[],
        metavar="PREFIX",
        help="also allow _target_ values under PREFIX (repeatable; e.g. mypkg.)",
    )
    p.add_argument(
        "--allow-changed-data",
        action="store_true",
        help=(
            "replay even when the data the config loads here differs from the source run's "
            "(its runner.dataset_digest); without it such a replay is refused"
        ),
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "rebuild, check and print the config, and the warnings: instantiate nothing and "
            "read no data (so the data digest is not compared)"
        ),
    )
    add_tracking_uri(p, "the store holding the run, where the replay logs too")
    return p


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _note(run: Run, overrides: Sequence[str]) -> str:
    from runner.tracking.redact import redact_override

    src = run.info.run_id
    link = f"#/experiments/{run.info.experiment_id}/runs/{src}"
    changes = " ".join(f"`{redact_override(o)}`" for o in overrides) if overrides else "none"
    return (
        f"Replay of run [{run.info.run_name or src}]({link}) (`{src}`), rebuilt from its "
        f"logged config by `python -m runner.replay`.\n\nNew overrides: {changes}."
    )


def _job_config(job: dict[str, Any]) -> dict[str, Any]:
    job = dict(job)
    backend = dict(job.get("backend") or {"name": "local"})
    backend.update(enabled=True, uri=_BACKEND_URI)
    job["backend"] = backend
    return job


def _dataset_digest(composed: ComposedJob, run_id: str) -> str:
    """The digest of the data the checked config loads here (this reads the data)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from runner.data import Dataset

    try:
        data = instantiate(composed.task.dataset, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, RunnerError):
            raise cause from None
        raise DataError(
            f"the dataset of run {run_id} cannot be loaded here: {cause or e}. Check the "
            "dataset.* values (python -m runner.replay --dry-run shows them)."
        ) from None
    if not isinstance(data, Dataset):
        raise DataError(
            f"the dataset of run {run_id} ({composed.resolved['dataset'].get('_target_')}) "
            f"returned a {type(data).__name__}, not a runner.data.Dataset; point "
            "dataset._target_ at one of the runner's loaders (runner.data.load_table, ...)."
        )
    return str(data.digest)


def _check_data(composed: ComposedJob, run: Run, *, allow_changed: bool, overridden: bool) -> None:
    """Refuse a replay on other data than the source run's, unless ``allow_changed``.

    A stranger who wrote the logged config cannot know the digest of a file of yours: a
    config pointed at one (``dataset.path: ~/.ssh/id_rsa``) is refused before its content
    can reach the store.
    """
    from runner.replay.checks import dataset_warnings, logged_digest

    source = run.info.run_id
    then = logged_digest(run)
    now = _dataset_digest(composed, source)
    if then == now:
        return
    if allow_changed:
        for message in dataset_warnings(run.data.tags, now, overridden=overridden, then=then):
            _warn(message)
        return
    shown = then or "none recorded"
    raise DataError(
        f"refusing to replay run {source} on other data: the dataset it loads here has digest "
        f"{now}, the source run's runner.dataset_digest is {shown}. A replay of other data is "
        "not a replay (and a logged config may point at a file of yours); pass "
        "--allow-changed-data to run it anyway (e.g. after changing dataset.* on purpose)."
    )


def _check_autolog(composed: ComposedJob, run_id: str) -> None:
    """Refuse MLflow's autolog when the config reads the environment: autolog logs the
    estimator's arguments itself, past the runner's redaction and masking.
    """
    tracking = composed.resolved.get("tracking")
    if composed.env_values and isinstance(tracking, dict) and tracking.get("autolog") is True:
        raise ConfigError(
            f"refusing to replay run {run_id} with MLflow's autolog on: its config reads your "
            "environment (${oc.env:...}), and autolog logs estimator arguments straight to "
            "the store, past the runner's redaction. Replay with tracking.autolog=false, or "
            "pass --trust if you wrote the run yourself."
        )


def _public(composed: ComposedJob) -> dict[str, Any]:
    """The job config as the run will log it (references kept, secrets redacted)."""
    from runner.replay.rebuild import hydra_set
    from runner.tracking.params import public_config

    with hydra_set(composed.config):
        return public_config(composed.config, skip=frozenset({"hydra"}))


def _shown_config(composed: ComposedJob, public: dict[str, Any]) -> dict[str, Any]:
    """What ``--dry-run`` prints: the checked values, as the run would log them.

    Values come from the one resolution replay checked; a leaf the run logs as its
    reference (anything read from the environment) or redacts (a secret, ``public``) is
    shown so.
    """
    from omegaconf import OmegaConf

    from runner.tracking.redact import REDACTED, redact_text

    raw = OmegaConf.to_container(composed.config, resolve=False)

    def merge(pub: Any, res: Any, unresolved: Any) -> Any:
        if isinstance(pub, dict) and isinstance(res, dict):
            sub = unresolved if isinstance(unresolved, dict) else {}
            return {k: merge(v, res.get(k), sub.get(k)) for k, v in pub.items()}
        if isinstance(pub, list) and isinstance(res, list) and len(pub) == len(res):
            items = unresolved if isinstance(unresolved, list) else [None] * len(res)
            return [merge(*t) for t in zip(pub, res, items, strict=True)]
        if pub == REDACTED or (isinstance(unresolved, str) and pub == unresolved != res):
            return pub
        if isinstance(pub, dict | list) or isinstance(res, dict | list):
            return pub
        return redact_text(res) if isinstance(res, str) else res

    shown = merge(public, composed.resolved, raw)
    assert isinstance(shown, dict)
    return shown


def _param_changes(
    public: dict[str, Any], choices: dict[str, str], run: Run
) -> dict[str, tuple[str | None, str | None]]:
    from runner.tracking.params import config_params

    new = config_params(public, choices)
    old = run.data.params
    return {
        k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }


def _run_job(composed: ComposedJob, callback: ReplayCallback) -> int:
    """Run the composed, checked config itself (nothing is composed again), with the MLflow
    callback it names and ``callback``, as ``python -m runner`` runs a job; the exit status.

    Signals are handled as under ``python -m runner``: a Ctrl-C or SIGTERM ends the job's
    run KILLED and gives 130.
    """
    from hydra.core.utils import JobStatus

    from runner import interrupts
    from runner.app import run
    from runner.sweeps.hydra_job import run_config
    from runner.tracking.redact import masking
    from runner.tracking.session import run_and_close

    def task(_: Any) -> float | list[float]:
        # The checked object itself, not the config Hydra hands the task (re-resolving it
        # could give other values: `${now:...}` or `${hydra:...}` inside `oc.select`).
        return run(composed.task)

    def job() -> int:
        ret = run_config(composed.config, task, extra_callbacks=[callback])
        if ret.status == JobStatus.COMPLETED:
            return 0
        error = ret._return_value  # not the property: it re-raises
        print(f"error: the replayed job raised {type(error).__name__}: {error}", file=sys.stderr)
        return 1

    # Whatever the logged config read from your environment never reaches the store, even
    # echoed by an estimator's error message into the run's runner.error tag.
    with interrupts.installed(), masking(composed.env_values):
        return run_and_close(job)


def _check(
    client: MlflowClient,
    source: str,
    replay: str,
    *,
    rtol: float,
    expected_param_changes: set[str],
) -> bool:
    from runner.replay.checks import compare_metrics, format_table, metric_table

    rows = compare_metrics(client, source, replay, rtol=rtol)
    print(metric_table(rows))
    bad = [r for r in rows if not r.equal]
    old = client.get_run(source).data.params
    new = client.get_run(replay).data.params
    params = [
        (k, old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and k not in expected_param_changes
    ]
    if params:
        print("\nparams that differ although no override changed them:")
        print(
            format_table(
                ["param", "original", "replay"], [[k, str(a), str(b)] for k, a, b in params]
            )
        )
    tol = "exactly" if rtol == 0 else f"within rtol={rtol:g}"
    if bad or params:
        print(
            f"\ncheck FAILED: {len(bad)} of {len(rows)} metrics differ"
            + (f", {len(params)} params differ" if params else "")
            + f" (compared {tol}; *_time_s and system/* left out)."
        )
        return False
    print(f"\ncheck passed: all {len(rows)} metrics match {tol} (*_time_s and system/* left out).")
    return True


def replay(args: argparse.Namespace) -> int:
    """Replay ``args.run_id`` (see :func:`main` for the arguments)."""
    from runner.config import register
    from runner.replay.callback import ReplayCallback
    from runner.replay.checks import provenance_warnings, redacted_keys
    from runner.replay.logged import fetch_config, get_run
    from runner.replay.rebuild import (
        allow_list,
        check_targets,
        choices_from_params,
        compose,
        write_config_dir,
    )
    from runner.tracking import provenance
    from runner.tracking.redact import redact_override
    from runner.tracking.store import command_uri, connect, public_uri

    if args.rtol < 0:
        raise RunnerError(f"--rtol is {args.rtol}; it must be 0 or positive (e.g. --rtol 1e-9).")
    uri = command_uri(args.tracking_uri)
    client = connect(uri)
    run = get_run(client, args.run_id)
    source = run.info.run_id
    if run.data.tags.get(contract.KIND) == "sweep":
        raise RunnerError(
            f"run {source} is a sweep's parent run, which has no job config of its own; replay "
            "one of its child runs (in the MLflow UI, expand the parent) instead."
        )
    logged = fetch_config(client, run)
    choices = logged.choices
    if choices is None:
        _warn(f"run {source} has no .hydra/hydra.yaml; group choices are taken from its params.")
        choices = choices_from_params(run.data.params)
    register()
    overrides = list(args.overrides)
    with (
        _env("MLFLOW_TRACKING_URI", uri),
        tempfile.TemporaryDirectory(prefix="runner-replay-conf-") as tmp,
    ):
        conf = Path(tmp)
        callback = ReplayCallback(
            source_run_id=source,
            source_overrides=logged.overrides or [],
            note=_note(run, overrides),
        )
        write_config_dir(conf, _job_config(logged.job), choices, run_id=source)
        composed = compose(conf, overrides, run_id=source)
        if args.trust:
            _warn("--trust: the config's _target_ values are not checked against the allow-list.")
        else:
            check_targets(composed.resolved, allow_list(args.allow_target), run_id=source)
            _check_autolog(composed, source)

        for message in provenance_warnings(run.data.tags, provenance.collect(str(Path.cwd()))):
            _warn(message)
        secrets = redacted_keys(logged.job)
        if secrets:
            _warn(
                f"the logged config has redacted secrets at {', '.join(secrets)}; pass them "
                "as overrides (e.g. from the environment: key='${oc.env:VAR}')."
            )
        public = _public(composed)
        changes = _param_changes(public, composed.choices, run)
        if changes:
            lines = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changes.items())
            if overrides:
                print(f"params that differ from run {source}: {lines}", file=sys.stderr)
            else:
                _warn(f"params that differ from run {source} with no override: {lines}")
        shown = " ".join(redact_override(o) for o in overrides)
        print(
            f"replaying run {source} ({run.info.run_name}) from {public_uri(uri)}"
            + (f" with {shown}" if overrides else ""),
            file=sys.stderr,
        )
        if args.dry_run:
            import yaml

            print(yaml.safe_dump(_shown_config(composed, public), sort_keys=False), end="")
            print(
                "dry run: nothing was instantiated or started, and no data was read (so the "
                "dataset digest was not compared).",
                file=sys.stderr,
            )
            return EXIT_OK
        # Reads the data: only once the targets passed, and never under --dry-run.
        touched = any(o.lstrip("+~").startswith("dataset") for o in overrides)
        _check_data(composed, run, allow_changed=args.allow_changed_data, overridden=touched)
        code = _run_job(composed, callback)
    if code == 130:
        return code
    if callback.run_id is None:
        print(
            f"error: the replay of run {source} did not start a run (exit status {code}); "
            "the messages above say why.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    new = callback.run_id
    status = client.get_run(new).info.status
    print(f"replay run {new} of {source}: {status}", file=sys.stderr)
    if code != 0 or status != "FINISHED":
        print(
            f"error: the replayed job failed (run {new} is {status}); its runner.error tag "
            "and the messages above say why.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.check:
        ok = _check(client, source, new, rtol=args.rtol, expected_param_changes=set(changes))
        return EXIT_OK if ok else EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m runner.replay``; returns the exit status."""
    # Intermixed: options may come after the overrides (`<id> model.max_depth=3 --check`).
    args = _parser().parse_intermixed_args(argv)
    try:
        return replay(args)
    except RunnerError as e:
        return fail(e)
