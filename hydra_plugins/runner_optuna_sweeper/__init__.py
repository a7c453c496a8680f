"""The runner's Optuna sweeper for Hydra (``hydra/sweeper=optuna``), on the current Optuna.

A thin plugin: the config schema lives in :mod:`.config`, the sweeper class in
:mod:`.optuna_sweeper`, and the logic in :mod:`runner.optuna_sweep`.
"""
