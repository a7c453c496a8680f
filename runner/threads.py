"""Native thread pools of parallel workers on one machine: the cores shared, not multiplied.

numpy's OpenBLAS and scikit-learn's OpenMP start one thread per core in every process, so K
workers on a C-core machine run K x C busy threads on C cores. Measured here (2 cores,
logreg on iris, ``benchmarks/bench_scale.py``'s ceiling): two plain processes fitted 34
models/s between them against 68/s for one alone, and 133/s with one thread each; the
``n_jobs=2`` sweep's trials ran no faster than one worker's. Each of K workers on one host
therefore gets ``max(1, C // K)`` threads, as joblib's loky backend gives its workers
(``hydra/launcher=joblib`` workers arrive with those variables already set, so nothing is
changed there), unless the user set a thread count in the environment: theirs is kept.

A SLURM job gets the CPUs it asked for (``SLURM_CPUS_PER_TASK``), but a cluster without
SLURM's affinity plugin (``TaskPlugin=task/none``, as the one-node cluster of
``.ci/slurm-up``) leaves its processes free to run on every CPU of the node, and each library
then starts one thread per node CPU: two ``cpus_per_task=1`` worker jobs on a 2-core node ran
a 30-trial logreg sweep's trials in a 8.9-9.8 s window against 5.5-7.7 s with one thread each
(``benchmarks/bench_scale.py``'s ``slurm`` way). The allocation is therefore a limit too:
for an Optuna worker job, and for any job of the runner's app (:func:`runner.app.run`, e.g.
one job of a grid through ``hydra/launcher=slurm``).
"""

from __future__ import annotations

import logging
import os

__all__ = ["THREAD_VARIABLES", "allocated", "cores", "limit", "share"]

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


def _affinity() -> int:
    """The CPUs this process may run on, as the native libraries count them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def allocated() -> int | None:
    """The CPUs SLURM allocated to this job's task (``SLURM_CPUS_PER_TASK``), if it says.

    Only in a process that slurmd started on the job's node (a batch script or an ``srun``
    step: ``SLURMD_NODENAME`` set). A ``salloc -c N`` shell carries ``SLURM_JOB_ID`` and
    ``SLURM_CPUS_PER_TASK`` too but runs where salloc was typed, usually the login node,
    whose CPUs the allocation says nothing about (checked on the cluster of
    ``.ci/slurm-up``: the salloc shell has no ``SLURMD_NODENAME``, its ``srun`` step and an
    ``sbatch`` script do).
    """
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if not os.environ.get("SLURM_JOB_ID") or not os.environ.get("SLURMD_NODENAME"):
        return None
    if not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def cores() -> int:
    """The CPUs this process has: its affinity (taskset, a SLURM cgroup), and within a
    SLURM job no more than its allocation (:func:`allocated`)."""
    affinity = _affinity()
    return min(affinity, allocated() or affinity)


def share(workers: int) -> int | None:
    """Threads for each of ``workers`` workers on this host; None: leave the libraries be.

    Args:
        workers: How many workers of the sweep run on this host at once.

    Returns:
        ``max(1, cores() // workers)``; None for a single worker that may use every CPU
        it can run on, or when the environment already sets one of
        :data:`THREAD_VARIABLES`.
    """
    if any(name in os.environ for name in THREAD_VARIABLES):
        return None
    if workers <= 1 and cores() >= _affinity():
        return None
    return max(1, cores() // max(workers, 1))


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
