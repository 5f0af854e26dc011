#!/usr/bin/env bash
# Issue 6 forgetting experiment: careful vs reckless SFT from the demo's
# pretrained model, then the comparison table and plot in this directory.
# Needs `make demo` first (runs/lifecycle). Takes ~10 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
for arm in careful reckless; do
  if [ ! -f "runs/experiments/sft_$arm/summary.json" ]; then
    $PY -m lifejax.main --gin_file="experiments/sft_forgetting/$arm.gin"
  fi
done
$PY experiments/sft_forgetting/summarize.py \
  --base_eval=runs/lifecycle/pretrain/eval.json \
  --arm=careful=runs/experiments/sft_careful \
  --arm=reckless=runs/experiments/sft_reckless \
  --out=experiments/sft_forgetting
