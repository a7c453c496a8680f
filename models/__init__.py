"""Model code that is ours: plain estimators, no Hydra or MLflow inside."""
