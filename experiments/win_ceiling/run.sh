#!/usr/bin/env bash
# The win-rate ceilings over a lifecycle root's SFT model (README.md):
# reference answers on the learnable tasks, everywhere, and the judge's best
# of N SFT samples, each paired with SFT's greedy test answers.
#   ROOT=runs/fact_world  SAMPLES=8  OUT=experiments/win_ceiling/results.md
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-runs/fact_world}
"$PY" experiments/win_ceiling/ceiling.py "$ROOT" --samples="${SAMPLES:-8}" \
  --out="${OUT:-experiments/win_ceiling/results.md}"
