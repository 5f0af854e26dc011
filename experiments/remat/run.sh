#!/usr/bin/env bash
# Remat policies: memory vs step time vs the planner (remat.py; README.md).
# Full run: experiments/remat/run.sh   (writes results.md, results.json,
#   remat.png here)
# Tiny run: experiments/remat/run.sh --tiny --out=runs/remat_tiny
# The timing process runs with the Makefile's malloc tuning (as the sweep's
# cells do); remat.py's memory workers set their own.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
exec ${PY:-.venv/bin/python} experiments/remat/remat.py "$@"
