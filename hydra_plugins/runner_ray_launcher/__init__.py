"""The runner's Hydra launcher over Ray (``hydra/launcher=ray``, the ``[ray]`` extra).

A thin launcher in the manner of hydra-joblib-launcher: each job of a batch runs as a Ray
remote task that calls Hydra's ``run_job``. hydra-ray-launcher's release pins cloudpickle<3
and cannot be installed beside MLflow, hence this one. Ray is imported by ``_core`` only, when
a batch is launched.
"""
