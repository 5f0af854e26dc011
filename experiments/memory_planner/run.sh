#!/bin/sh
# Regenerates the memory planner's tables (run from the repository root).
#   validation.md: planner vs XLA's compiled memory analysis on 8 simulated
#     CPU devices (about 3 minutes on 2 cores);
#   published.md: largest batch per device for published shapes on the
#     gin_configs/mesh/ meshes (planner only, seconds).
set -e
python tools/plan_memory.py --validate --out=experiments/memory_planner/validation.md
python tools/plan_memory.py --published --seq=4096 --out=experiments/memory_planner/published.md
