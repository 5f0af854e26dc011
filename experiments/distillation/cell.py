"""The distillation experiment's cells (imported by experiment.gin).

A sweep cell of arm <arm> and seed k runs in <root>/<arm>/seed<k>. It first
makes sure the teacher exists: the demo's pretraining, a lifecycle root
(`base_root`, default <sweep root>/base) run through `until='pretrain'`
with the gin config in force, built once by the first cell that needs it
(a file lock keeps two processes from building it at once; the lock file
is the one the other experiments sharing runs/demo_base take) and found
finished by every later cell. The cell then runs the distill stage from
the base's pretrain run into <cell>/student, in gin scope `distill`, with
its arm's bindings and `seed` as the student's init and data-order seed.
So the arms of one seed share the student's initial params and batches
and differ only in the loss.
"""

from __future__ import annotations

import os
from typing import Any

import gin

from lifejax import sweep
from lifejax.model.config import TransformerConfig
from lifejax.stages import distill

STUDENT_DIR = "student"


default_base_root = sweep.default_base_root


def ensure_teacher(base_root: str) -> str:
  """The pretrain run of the lifecycle root `base_root`, built (through
  `until='pretrain'`) unless it finished already."""
  return sweep.ensure_lifecycle(base_root, "pretrain").stage("pretrain").root


@gin.configurable
def distillation_cell(root: str = gin.REQUIRED, seed: int = 0,
                      student: TransformerConfig = gin.REQUIRED,
                      base_root: str | None = None) -> dict[str, Any]:
  """Ensures the teacher, then distils it into `root`/student."""
  teacher = ensure_teacher(base_root or default_base_root(root))
  with gin.config_scope("distill"):
    return distill(run_dir=os.path.join(root, STUDENT_DIR), teacher=teacher,
                   model=student, seed=seed)
