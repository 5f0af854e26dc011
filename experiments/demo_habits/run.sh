#!/usr/bin/env bash
# Do SFT models repeat their demonstrators' systematic flaws, and does
# preference tuning then remove them? The demo's lifecycle
# (lifecycle/fact_world.gin) with the world option demo_habits: every SFT
# training demonstration whose prompt triggers an annotator habit
# (lifejax/world/items.py HABITS) carries that habit's flaw. The corpus is
# the same as without habits, so the run reuses BASE's curation and
# pretrained model (copied) and trains SFT, the reward model, DPO and PPO.
#   BASE=runs/lifecycle_seeds/seed0  ROOT=runs/demo_habits/seed0  SEED=0
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
BASE=${BASE:-runs/lifecycle_seeds/seed0}
ROOT=${ROOT:-runs/demo_habits/seed0}
SEED=${SEED:-0}
mkdir -p "$ROOT"
for d in curated pretrain; do
  [ -d "$ROOT/$d" ] || cp -r "$BASE/$d" "$ROOT/$d"
done
"$PY" -m lifejax.main --gin_file=lifecycle/fact_world.gin \
  --gin_param="lifecycle.root='$ROOT'" \
  --gin_param="lifecycle.world_demo_habits=True" \
  --gin_param="lifecycle.world_seed=$SEED" \
  --gin_param="pretrain.seed=$SEED" --gin_param="sft.seed=$SEED" \
  --gin_param="reward.seed=$SEED" --gin_param="dpo.seed=$SEED" \
  --gin_param="ppo.seed=$SEED"
