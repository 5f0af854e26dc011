"""The cost-split experiment's cell (imported by experiment.gin).

A cell makes sure a lifecycle root exists through stage `until` (built with
the gin config in force by sweep.ensure_lifecycle when missing: `make
demo`'s run, when `base_root` is its root), then counts each stage's
training FLOPs (cost.stage_costs) and writes them, with the ledger's wall
seconds, to <cell>/cost.json. Nothing is trained by the cell itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import gin

from lifejax import sweep

from experiments.cost_split import cost

COST_FILE = "cost.json"


@gin.configurable
def cost_split_cell(root: str = gin.REQUIRED, base_root: str | None = None,
                    until: str = "release") -> dict[str, Any]:
  """Counts the stages of lifecycle root `base_root` (default <sweep
  root>/base), built through `until` if that stage has not finished."""
  lr = sweep.ensure_lifecycle(base_root or sweep.default_base_root(root),
                              until)
  costs = cost.stage_costs(lr.root)
  out = {"lifecycle_root": os.path.relpath(lr.root),
         "stages": [c.as_dict() for c in costs],
         "explained": cost.demo_explained(costs),
         "real_scale": cost.real_scale_split()}
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, COST_FILE), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  return out
