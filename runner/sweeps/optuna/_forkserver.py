"""Imported first by the n_jobs workers' forkserver (``_worker.start_forkserver``), only there.

The server is single-threaded in Python, but numpy's and scipy's OpenBLAS start OS threads
at import (they re-initialise across fork, pthread_atfork), and from Python 3.12 every
``os.fork()`` of a process with OS threads warns "This process is multi-threaded, use of
fork() may lead to deadlocks" (gh-100228); with ``PYTHONWARNINGS=error`` that would end the
server. Only the server's own fork call is matched (``module=``), so no warning of a trial's
is hidden; no other process imports this module.
"""

from __future__ import annotations

import warnings

warnings.filterwarnings(
    "ignore",
    message=r"This process .* is multi-threaded",
    category=DeprecationWarning,
    module=r"multiprocessing\.forkserver",
)
