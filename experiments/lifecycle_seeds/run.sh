#!/usr/bin/env bash
# The whole `make demo` lifecycle on 3 seeds, then the chain's table
# (README.md). Each seed is one demo (lifecycle/fact_world.gin: ~75 min on a
# 2-core AVX2 host); a killed run resumes stage by stage when launched again.
# Full run:  experiments/lifecycle_seeds/run.sh
# Seeds:     SEEDS="0 1" experiments/lifecycle_seeds/run.sh
# Another lifecycle: GIN=lifecycle/default.gin ROOT=runs/lifecycle_seeds_v1
# The summary goes to OUT (default experiments/lifecycle_seeds/<gin name>/,
# e.g. .../fact_world/results.md), so each configuration keeps its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
# The Makefile's glibc malloc tunables (CPU only), as `make demo` runs.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
# One host device per core, as `make demo` runs (evals and rollouts
# generate data parallel over them).
export XLA_FLAGS="--xla_force_host_platform_device_count=$(nproc) ${XLA_FLAGS:-}"
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-runs/lifecycle_seeds}
GIN=${GIN:-lifecycle/fact_world.gin}
OUT=${OUT:-experiments/lifecycle_seeds/$(basename "$GIN" .gin)}
roots=()
for seed in ${SEEDS:-0 1 2}; do
  # One seed moves everything random: the world (its text, tokenizer, facts
  # and splits), every stage's initialization and data order.
  "$PY" -m lifejax.main --gin_file="$GIN" \
    --gin_param="lifecycle.root='$ROOT/seed$seed'" \
    --gin_param="lifecycle.world_seed=$seed" \
    --gin_param="pretrain.seed=$seed" --gin_param="sft.seed=$seed" \
    --gin_param="reward.seed=$seed" --gin_param="dpo.seed=$seed" \
    --gin_param="ppo.seed=$seed"
  roots+=("$ROOT/seed$seed")
done
"$PY" experiments/lifecycle_seeds/summarize.py --out="$OUT" "${roots[@]}"
