#!/usr/bin/env bash
# Reward hacking, complete (issue 19, row 11): PPO from the demo's SFT model
# against the demo's learned reward model, beta in {0, 0.01, 0.05, 0.2, 1},
# 3 seeds; the final policies on the test split.
# Builds runs/demo_base (the demo's pretraining, SFT and reward model) first
# if it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/ppo_reward_hacking "$@"
