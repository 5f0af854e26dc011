#!/usr/bin/env bash
# MoE vs dense at equal active parameters / FLOPs, 3 seeds (experiment.py;
# README.md). Resumable; extra arguments go to the sweep (e.g. --tiny,
# --seeds=0, --only=dense).
# Full run: experiments/moe_vs_dense/run.sh
# Tiny run: experiments/moe_vs_dense/run.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/moe_vs_dense "$@"
