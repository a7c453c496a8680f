"""``python -m runner.compare``."""

from __future__ import annotations

from runner.compare._command import main

if __name__ == "__main__":
    from runner.cli import run_main

    run_main(main)
