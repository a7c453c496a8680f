"""``python -m runner.lifecycle``."""

from __future__ import annotations

from runner.lifecycle._command import main
from runner.shutdown import quick_exit

if __name__ == "__main__":
    quick_exit()
    raise SystemExit(main())
