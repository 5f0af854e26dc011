#!/usr/bin/env bash
# Issue 7 reward-hacking experiment: PPO on a flawed (length-hackable) reward
# with beta = 0 and with beta = 0.2, from the demo's SFT model, then the
# comparison table and plot in this directory.
# Needs `make demo` first (runs/lifecycle). Takes ~10 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
for arm in beta0 beta; do
  $PY -m lifejax.main --gin_file="experiments/ppo_reward_hacking/$arm.gin"
done
$PY experiments/ppo_reward_hacking/summarize.py \
  --arm="beta=0=runs/experiments/ppo_hack_beta0" \
  --arm="beta=0.2=runs/experiments/ppo_hack_beta0.2" \
  --out=experiments/ppo_reward_hacking
