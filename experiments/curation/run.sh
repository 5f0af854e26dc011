#!/usr/bin/env bash
# Curation: raw / curated / curated without decontamination, 3 seeds
# (experiment.py; README.md). Resumable; extra arguments go to the sweep
# (e.g. --tiny, --seeds=0, --only=raw).
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/curation "$@"
