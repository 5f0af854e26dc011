#!/usr/bin/env bash
# f32 / bf16 / fp16 / fp16 + loss scaling, 3 seeds, and the gradient probe
# (experiment.py; README.md).
# Full run: experiments/fp16_vs_bf16/run.sh  (22.9 min measured on 2 shared CPU
# cores at load average 5-8; README.md)
# Tiny run: experiments/fp16_vs_bf16/run.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/fp16_vs_bf16 "$@"
