#!/usr/bin/env bash
# Every model on two datasets: 8 jobs, one experiment (and one parent run) per dataset.
set -euo pipefail
"${PYTHON:-python}" -m runner -m model=logreg,rf,xgb,mlp dataset=iris,wine "$@"
