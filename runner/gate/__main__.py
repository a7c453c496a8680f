"""``python -m runner.gate``."""

from __future__ import annotations

from runner.gate._command import main

if __name__ == "__main__":
    from runner.cli import run_main

    run_main(main)
