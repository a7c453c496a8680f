"""``python -m runner.sync``: replay runs buffered while the tracking server was down.

With ``tracking.on_unavailable=buffer``, a job whose server does not answer logs to
``.runner_buffer/mlflow.db`` in its launch directory and tags its runs ``runner.buffered_for``
with the server's URI. This command copies those runs onto the server (or ``--to URI``):
params, metrics with their steps and timestamps, tags, artifacts, logged models, start and
end times, status, and parent/child links. A run whose parent tag is garbled or names a run
the buffer lacks is copied as a top-level run; one in a cycle of parent runs is left in the
buffer; each is a ``warning:`` line, and the exit status stays 0.

Idempotent: each copy is tagged ``runner.synced_from`` = the buffered run's id, and the
buffered run ``runner.synced_to`` = the copy's id once the copy is complete; a second sync
skips it, and a copy left half-done by an interrupted sync is deleted and made again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner import contract
from runner.cli import EXIT_FAILED, CommandProgress, fail
from runner.errors import RunnerError, TrackingError
from runner.tracking.transfer import SyncResult, sync

__all__ = ["SyncResult", "main", "sync"]


def main(argv: list[str] | None = None) -> int:
    """Replay buffered runs; see the module docstring."""
    from runner.tracking.session import BUFFER_DIR

    parser = argparse.ArgumentParser(
        prog="python -m runner.sync",
        description="Replay runs buffered while the tracking server was down "
        "(tracking.on_unavailable=buffer) onto the server, idempotently.",
    )
    parser.add_argument(
        "--buffer",
        type=Path,
        default=Path(BUFFER_DIR) / "mlflow.db",
        help=f"the buffer store (default ./{BUFFER_DIR}/mlflow.db)",
    )
    parser.add_argument(
        "--to",
        metavar="URI",
        help=f"the tracking URI to replay onto (default: each run's {contract.BUFFERED_FOR} tag)",
    )
    args = parser.parse_args(argv)
    if not args.buffer.is_file():
        print(f"nothing to sync: no buffer store at {args.buffer}", file=sys.stderr)
        return 0
    try:
        from runner.tracking.store import resolve_uri

        to = resolve_uri(args.to, Path.cwd()) if args.to else None
        # Thousands of buffered runs take minutes: a bar on a terminal, a line per tenth
        # otherwise (RUNNER_PROGRESS=none: quiet).
        with CommandProgress("sync") as progress:
            result = sync(f"sqlite:///{args.buffer.resolve()}", to, progress=progress.update)
    except TrackingError as e:
        # The target failed (it does not answer, or refused a write): the documented 1.
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except RunnerError as e:
        return fail(e)
    for rid, why in result.unlinked:
        print(f"warning: buffered run {rid} {why}", file=sys.stderr)
    for rid, why in result.skipped:
        print(f"warning: skipped buffered run {rid} (left in the buffer): {why}", file=sys.stderr)
    skipped = f"; {len(result.skipped)} skipped (see the warnings)" if result.skipped else ""
    print(
        f"synced {len(result.synced)} run(s); {len(result.already)} already synced; "
        f"{len(result.running)} still running (not synced){skipped}"
    )
    for old, new in result.synced:
        print(f"  {old} -> {new}")
    return 0


if __name__ == "__main__":
    from runner.cli import run_main

    run_main(main)
