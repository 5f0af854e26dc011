#!/usr/bin/env bash
# Issue 7 preference experiment, all from the demo's SFT model: DPO on the
# world's offline pairs; RLAIF (reward-model-labelled on-policy pairs) then
# DPO on them; RLAIF labelled by the programmatic judge (best-of-4 vs
# worst-of-4) then DPO on them; PPO on the reward model (GAE lambda 0.95 and
# 1) and on the programmatic judge; GRPO on the programmatic judge; then
# every policy is judged against SFT on the same 120 test prompts
# (evaluate.py -> results.md).
# Needs `make demo` first (runs/lifecycle). Takes ~60 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736}
run() {  # gin name, run directory (skipped once it has finished)
  if [ ! -f "$2/.experiment_done" ]; then
    $PY -m lifejax.main --gin_file="experiments/preference/$1.gin"
    touch "$2/.experiment_done"
  fi
}
run dpo_offline runs/experiments/dpo_offline
run rlaif runs/experiments/rlaif
run dpo_onpolicy runs/experiments/dpo_onpolicy
run ppo runs/experiments/ppo_rm
run ppo_lam1 runs/experiments/ppo_rm_lam1
run ppo_judge runs/experiments/ppo_judge
run rlaif_judge runs/experiments/rlaif_judge
run dpo_judge runs/experiments/dpo_judge
run dpo_judge_lr5e5 runs/experiments/dpo_judge_lr5e5
run dpo_judge_rpo runs/experiments/dpo_judge_rpo
run rlaif_greedy runs/experiments/rlaif_greedy
run dpo_greedy runs/experiments/dpo_greedy
run grpo_judge runs/experiments/grpo_judge
$PY experiments/preference/evaluate.py \
  --root=runs/lifecycle --records=120 \
  --run="SFT (reference)=runs/lifecycle/sft" \
  --run="DPO offline pairs=runs/experiments/dpo_offline" \
  --run="DPO on-policy RLAIF pairs=runs/experiments/dpo_onpolicy" \
  --run="PPO reward model (24 it.)=runs/experiments/ppo_rm/policy" \
  --run="PPO reward model, lambda 1=runs/experiments/ppo_rm_lam1/policy" \
  --run="PPO judge reward, lambda 1=runs/experiments/ppo_judge/policy" \
  --run="DPO on judge-labelled best-of-4 pairs=runs/experiments/dpo_judge" \
  --run="same, lr 5e-5=runs/experiments/dpo_judge_lr5e5" \
  --run="same, lr 5e-5 + chosen NLL (RPO)=runs/experiments/dpo_judge_rpo" \
  --run="RPO lr 2e-5, pairs with the greedy answer competing=runs/experiments/dpo_greedy" \
  --run="GRPO judge reward=runs/experiments/grpo_judge" \
  --run="demo DPO=runs/lifecycle/dpo" \
  --run="demo PPO (6 it.)=runs/lifecycle/ppo/policy" \
  --out=experiments/preference/results.md
