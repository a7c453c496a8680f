"""The runner's grid sweeper for Hydra (``hydra/sweeper=grid``, the runner's default).

Hydra's basic sweeper with one change: each job's config is composed once, from a template
per set of config-group choices (:mod:`runner.composer`), instead of twice in full.
"""
