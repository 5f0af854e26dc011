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

import fcntl
import os
from typing import Any

import gin

from lifejax.model.config import TransformerConfig
from lifejax.run.layout import LifecycleRoot
from lifejax.stages import distill, lifecycle

STUDENT_DIR = "student"
LOCK = ".build.lock"


def default_base_root(root: str) -> str:
  """<sweep root>/base for a cell at <sweep root>/<arm>/seed<k>."""
  return os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(root))), "base")


def ensure_teacher(base_root: str) -> str:
  """The pretrain run of the lifecycle root `base_root`, built (through
  `until='pretrain'`, under a file lock) unless it finished already."""
  lr = LifecycleRoot(base_root)
  run = lr.stage("pretrain")
  if not os.path.exists(run.eval):
    os.makedirs(lr.root, exist_ok=True)
    with open(os.path.join(lr.root, LOCK), "w", encoding="utf-8") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not os.path.exists(run.eval):
        lifecycle(root=lr.root, until="pretrain")
  return run.root


@gin.configurable
def distillation_cell(root: str = gin.REQUIRED, seed: int = 0,
                      student: TransformerConfig = gin.REQUIRED,
                      base_root: str | None = None) -> dict[str, Any]:
  """Ensures the teacher, then distils it into `root`/student."""
  teacher = ensure_teacher(base_root or default_base_root(root))
  with gin.config_scope("distill"):
    return distill(run_dir=os.path.join(root, STUDENT_DIR), teacher=teacher,
                   model=student, seed=seed)
