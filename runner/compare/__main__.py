"""``python -m runner.compare``."""

from __future__ import annotations

from runner.compare._command import main
from runner.shutdown import quick_exit

if __name__ == "__main__":
    quick_exit()
    raise SystemExit(main())
