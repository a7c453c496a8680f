#!/usr/bin/env bash
# A sweep in which one job fails: lr=1e6 makes the MLP diverge. The other jobs still run,
# the failed one is FAILED with its error as a tag, and the sweep exits non-zero.
set -uo pipefail
"${PYTHON:-python}" -m runner model=mlp -m lr=0.01,1e6,0.1 "$@"
status=$?
echo "sweep exit status: $status (1: a job failed, as intended)"
[ "$status" -eq 1 ]
