#!/usr/bin/env bash
# Does pretraining at the demo's budget store the world's facts when they are
# fewer and stated more often? The demo's pretraining (lifecycle/default.gin,
# stopped after pretrain's evaluation) on worlds that differ only in
# lifecycle.world_entity_scale, same seed; the fact probe is read from each
# run's eval.json by summarize.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
SEEDS=${SEEDS:-0}
SCALES=${SCALES:-1.0 0.33}
for seed in $SEEDS; do
  for es in $SCALES; do
    $PY -m lifejax.main --gin_file=lifecycle/default.gin \
      --gin_param="lifecycle.root='runs/fact_density/es${es}_seed${seed}'" \
      --gin_param="lifecycle.world_seed=${seed}" \
      --gin_param="lifecycle.world_entity_scale=${es}" \
      --gin_param="lifecycle.until='pretrain'"
  done
done
$PY experiments/fact_density/summarize.py runs/fact_density > experiments/fact_density/results.md
cat experiments/fact_density/results.md
