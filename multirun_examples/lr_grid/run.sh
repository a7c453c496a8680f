#!/usr/bin/env bash
# A grid over the shared learning rate: one parent run, three nested xgboost runs.
set -euo pipefail
"${PYTHON:-python}" -m runner model=xgb -m lr=0.01,0.05,0.3 "$@"
