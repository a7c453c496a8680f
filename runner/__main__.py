"""``python -m runner``: the Hydra entry point, a thin shim over :func:`runner.app.run`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from runner.config import CONFIG_MODULE, register

__all__ = ["main", "normalize_argv"]

_MULTIRUN_FLAGS = ("-m", "--multirun")


def normalize_argv(argv: list[str]) -> list[str]:
    """Move ``-m``/``--multirun`` to the front so it works anywhere on the line.

    Stock Hydra's argparse rejects ``-m`` after an override (``unrecognized arguments``);
    overrides never start with ``-``, so the flag is unambiguous wherever it stands.
    """
    flags = [a for a in argv if a in _MULTIRUN_FLAGS]
    rest = [a for a in argv if a not in _MULTIRUN_FLAGS]
    return flags[:1] + rest


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | list[float]:
    from runner.app import run
    from runner.interrupts import interruptible

    # The task is the user's code: a signal stops it at once (elsewhere it waits for a
    # safe point, see runner.interrupts).
    with interruptible():
        return run(cfg)


def _run_hydra() -> int:
    """Hydra's app, its ``sys.exit`` as a status (Hydra has printed what went wrong)."""
    try:
        _hydra_main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # what Python prints for a SystemExit message
        return 1
    return 0


def main() -> None:
    """Entry point of ``python -m runner`` and the ``runner`` console script."""
    from runner.interrupts import install
    from runner.shutdown import quick_exit
    from runner.tracking.redact import install_log_redaction
    from runner.tracking.session import run_and_close

    quick_exit()
    # Every line logged (to the console and to the job's log file) is redacted.
    install_log_redaction()
    sys.argv[1:] = normalize_argv(sys.argv[1:])
    register()
    # SIGTERM takes Ctrl-C's way out, so runs end KILLED instead of RUNNING; both wait for
    # a safe point outside the user's code.
    install()
    code = run_and_close(_run_hydra)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
