#!/usr/bin/env bash
# DPO vs PPO (README.md): the demo's reward model once (if missing), then the
# dpo and ppo arms over seeds 0, 1, 2; resumable. Cells run as subprocesses
# (no --in_process) so each records its peak RSS. Extra arguments go to the
# sweep (e.g. --tiny, --seeds=0, --only=ppo).
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
# glibc's default malloc, not the sweep's keep-everything-mapped tuning
# (lifejax.sweep.MALLOC_TUNING never returns freed memory, so a cell's RSS
# only grows): the peak RSS recorded is then closer to what the arm needs
# at once, and the cells fit on a machine shared with other runs (with the
# tuning, DPO cells reached 5 GiB and were OOM-killed there).
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.arena_max=2}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/dpo_vs_ppo "$@"
