#!/usr/bin/env bash
# Online vs offline DPO, complete (issue 20, "Must show" part 2): both arms
# from the demo's SFT model at 16 optimizer steps of 8 pairs, 3 seeds; the
# final policies on the test split. Builds runs/demo_base (the demo's
# pretraining, SFT and reward model) first if it is missing. One cell at a
# time; glibc's default arena count is capped (memory only: the machine is
# shared).
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=2}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/online_vs_offline_dpo "$@"
