"""How sweeps run: the composer and ``run_job`` (lighter copies of Hydra internals, each
tested against Hydra) and the Optuna sweep (``optuna/``). The Hydra plugin classes in
``hydra_plugins/`` are thin shells over these."""
