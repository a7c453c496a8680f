"""``python -m runner.lifecycle``: keep a tracking store tidy, safely.

``_command`` is the command line (plan, confirm, apply); ``runs`` plans the run-level
subcommands, ``gc`` the permanent deletion, ``durations`` parses ``--older-than``.
"""

from __future__ import annotations

from runner.lifecycle._command import main

__all__ = ["main"]
