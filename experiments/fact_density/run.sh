#!/usr/bin/env bash
# Does pretraining at the demo's budget store the world's facts when they are
# fewer and stated more often, and does SFT then answer questions on them?
# The demo's lifecycle (lifecycle/default.gin) on worlds that differ in
# lifecycle.world_entity_scale (fewer entities over the same documents) and
# lifecycle.world_fact_restatements (the staff digest: every fact stated that
# many more times, an extra pretraining source) and in pretraining steps
# (the demo's 300, or more, with the cosine schedule stretched to match),
# stopped after pretrain (or UNTIL=sft). probe.py scores each model's
# ranking of the held-out facts; summarize.py tabulates.
#   ARMS="entity_scale:restatements:steps[:answer_style[:digest_qa]] ..."
#        (default: the arms below; 1.0:0:300 is the demo's own pretraining;
#        answer_style restate|pronoun, digest_qa the staff FAQ's repeats)
#   UNTIL=pretrain|sft   SEEDS="0 1 2"
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
SEEDS=${SEEDS:-0}
ARMS=${ARMS:-1.0:0:300 0.33:60:300 0.33:150:300 0.33:150:900}
UNTIL=${UNTIL:-pretrain}
OUT=${OUT:-runs/fact_density}
for seed in $SEEDS; do
  for arm in $ARMS; do
    IFS=: read -r es r steps style qa <<< "$arm"
    style=${style:-restate}
    qa=${qa:-0}
    sources="['wiki','support_chat','records','mail','web']"
    if [ "$r" != 0 ] || [ "$qa" != 0 ]; then
      sources="['wiki','support_chat','records','mail','web','digest']"
    fi
    root="$OUT/es${es}_r${r}_s${steps}_seed${seed}"
    if [ "$style" != restate ] || [ "$qa" != 0 ]; then
      root="$OUT/es${es}_r${r}_qa${qa}_s${steps}_${style}_seed${seed}"
    fi
    $PY -m lifejax.main --gin_file=lifecycle/default.gin \
      --gin_param="lifecycle.root='$root'" \
      --gin_param="lifecycle.world_seed=${seed}" \
      --gin_param="lifecycle.world_entity_scale=${es}" \
      --gin_param="lifecycle.world_fact_restatements=${r}" \
      --gin_param="lifecycle.world_answer_style='${style}'" \
      --gin_param="lifecycle.world_digest_qa=${qa}" \
      --gin_param="lifecycle.pretrain_sources=${sources}" \
      --gin_param="pretrain/LoopConfig.num_steps=${steps}" \
      --gin_param="pretrain/OptimizerConfig.total_steps=${steps}" \
      --gin_param="pretrain/LoopConfig.eval_every=$((steps / 2))" \
      --gin_param="lifecycle.until='${UNTIL}'"
    $PY experiments/fact_density/probe.py "$root"
  done
done
$PY experiments/fact_density/summarize.py "$OUT" \
  experiments/fact_density/fact_density.png > experiments/fact_density/results.md
cat experiments/fact_density/results.md
