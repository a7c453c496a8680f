"""``python -m runner.replay <run_id>``: re-run a logged run exactly, optionally with changes.

``_command`` is the command; ``logged`` reads a logged run's config back, ``rebuild`` makes
a Hydra config directory of it, ``checks`` compares and warns, ``callback`` tags the new
run. ``runner.diff`` uses ``logged``, ``rebuild`` and ``checks`` too.
"""

from __future__ import annotations

from runner.replay._command import main, replay

__all__ = ["main", "replay"]
