#!/usr/bin/env bash
# Tool-use RL (issue 20, "Must show" part 3): direct-answer SFT (the
# memorisation control), SFT with the company directory, and GRPO with the
# directory in the loop, from the demo's SFT model, 3 seeds; dev and test
# fact questions (stated in pretraining, or held out everywhere).
# Builds runs/demo_base (the demo's pretraining and SFT) first if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec ${PY:-.venv/bin/python} -m lifejax.sweep experiments/tool_use_rl "$@"
