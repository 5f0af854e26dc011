#!/usr/bin/env bash
# Issue 7 reward-hacking experiment: PPO on two flawed judges (length- and
# safety-hackable, plus a strong verbosity flaw) with beta = 0 and with
# beta = 0.2, from the demo's SFT
# model, then a table and a plot per flaw in this directory.
# Needs `make demo` first (runs/lifecycle). Takes ~40 min on 2 CPU cores
# (ARMS="..." runs a subset).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
ARMS=${ARMS:-beta0 beta safety_beta0 safety_beta verbose_beta0 verbose_beta}
for arm in $ARMS; do
  $PY -m lifejax.main --gin_file="experiments/ppo_reward_hacking/$arm.gin"
done
$PY experiments/ppo_reward_hacking/summarize.py \
  --title="length_hackable reward (+0.01 per word, no length penalty)" \
  --arm="beta=0=runs/experiments/ppo_hack_beta0" \
  --arm="beta=0.2=runs/experiments/ppo_hack_beta0.2" \
  --out=experiments/ppo_reward_hacking --name=length
$PY experiments/ppo_reward_hacking/summarize.py \
  --title="safety_hackable reward (+0.2 per safe-sounding phrase)" \
  --arm="beta=0=runs/experiments/ppo_safety_beta0" \
  --arm="beta=0.2=runs/experiments/ppo_safety_beta0.2" \
  --out=experiments/ppo_reward_hacking --name=safety
$PY experiments/ppo_reward_hacking/summarize.py \
  --title="verbosity flaw (+0.03 per word up to +3, no length penalty)" \
  --arm="beta=0=runs/experiments/ppo_verbose_beta0" \
  --arm="beta=0.2=runs/experiments/ppo_verbose_beta0.2" \
  --out=experiments/ppo_reward_hacking --name=verbose
