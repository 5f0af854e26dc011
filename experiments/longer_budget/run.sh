#!/usr/bin/env bash
# The demo lifecycle at a bigger budget (see lifecycle.gin), into
# runs/longer_budget; reruns skip finished stages and resume interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
$PY -m lifejax.main --gin_file=experiments/longer_budget/lifecycle.gin
