#!/usr/bin/env bash
# Gradient accumulation vs one big batch, and the batch size / learning rate
# coupling, 3 seeds (experiment.py; README.md).
# Full run: experiments/grad_accumulation/run.sh  (15.5 min measured on 2
# shared CPU cores at load average 1-6; README.md)
# Tiny run: experiments/grad_accumulation/run.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/grad_accumulation "$@"
