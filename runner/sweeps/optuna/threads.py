"""Native thread pools of parallel workers on one machine: the cores shared, not multiplied.

numpy's OpenBLAS and scikit-learn's OpenMP start one thread per core in every process, so K
workers on a C-core machine run K x C busy threads on C cores. Measured here (2 cores,
logreg on iris, ``benchmarks/bench_scale.py``'s ceiling): two plain processes fitted 34
models/s between them against 68/s for one alone, and 133/s with one thread each; the
``n_jobs=2`` sweep's trials ran no faster than one worker's. Each of K workers on one host
therefore gets ``max(1, C // K)`` threads, as joblib's loky backend gives its workers
(``hydra/launcher=joblib`` workers arrive with those variables already set, so nothing is
changed there), unless the user set a thread count in the environment: theirs is kept.
"""

from __future__ import annotations

import logging
import os

__all__ = ["THREAD_VARIABLES", "cores", "limit", "share"]

log = logging.getLogger(__name__)

#: The variables native libraries read their thread count from (threadpoolctl's and
#: loky's list); any one of them set means the user chose: nothing is limited.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def cores() -> int:
    """The CPUs this process may run on (its affinity: a SLURM allocation, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def share(workers: int) -> int | None:
    """Threads for each of ``workers`` workers on this host; None: leave the libraries be.

    Args:
        workers: How many workers of the sweep run on this host at once.

    Returns:
        ``max(1, cores() // workers)``, or None for a single worker or when the environment
        already sets one of :data:`THREAD_VARIABLES`.
    """
    if workers <= 1 or any(name in os.environ for name in THREAD_VARIABLES):
        return None
    return max(1, cores() // workers)


def limit(workers: int) -> int | None:
    """Limit this worker process's native thread pools to its :func:`share` of the cores.

    Both halves are needed: the variables reach libraries that this process loads later
    (the user's model module, torch), and threadpoolctl resizes the pools already loaded
    (numpy's OpenBLAS, preloaded by the n_jobs forkserver, reads its variable only once).

    Args:
        workers: How many workers of the sweep run on this host at once.

    Returns:
        The threads each pool now has, or None when nothing was limited.
    """
    threads = share(workers)
    if threads is None:
        return None
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    log.debug("%d workers on %d cores: %d native threads each", workers, cores(), threads)
    return threads
