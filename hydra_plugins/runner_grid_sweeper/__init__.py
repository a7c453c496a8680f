"""The runner's grid sweeper for Hydra (``hydra/sweeper=grid``, the runner's default).

Hydra's basic sweeper with two changes: each job's config is composed once, from a template
per set of config-group choices (:mod:`runner.sweeps.composer`), instead of twice in full; and
the sweep ends with a summary (best, counts, parent run, where to look; docs/summaries.md),
quiet with ``hydra.sweeper.progress=none``.
"""
