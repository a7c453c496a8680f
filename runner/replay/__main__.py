"""``python -m runner.replay``."""

from __future__ import annotations

from runner.replay._command import main

if __name__ == "__main__":
    from runner.cli import run_main

    run_main(main)
