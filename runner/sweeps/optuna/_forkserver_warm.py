"""Imported last by the n_jobs workers' forkserver when the trials log models, only there.

MLflow's first-use work for a logged model (:func:`runner.tracking.store.warm_up`: its map
of installed packages, 0.3 s here) is done once, in the server, and every worker forked from
it inherits the map: each worker paid it inside its first trial before, K times over on a
K-worker pool. A launched worker, which no forkserver warmed, does the same for itself
(``warm.import_ahead``).
"""

from __future__ import annotations

import logging

from runner.tracking.store import warm_up

try:
    warm_up()
except Exception as e:  # an exception other than ImportError would end the forkserver
    logging.getLogger(__name__).debug("MLflow's warm-up failed in the forkserver: %s", e)
