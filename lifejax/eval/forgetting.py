"""The forgetting panel: task quality against general quality across evals.

Fine-tuning (SFT, continued pretraining) can buy task quality with general
quality; the panel watches both in every eval row and warns when general
perplexity rises past a margin while the task metric improves.
"""

from __future__ import annotations

import logging

import numpy as np


class ForgettingPanel:
  """Tracks task quality against general quality across evals.

  Warns (and records `eval/forgetting_warning` = 1) when general perplexity
  has risen by more than `margin` (relative) since the first eval while the
  task metric improved.
  """

  def __init__(self, margin: float):
    self.margin = margin
    self.first: dict[str, float] | None = None
    self.warnings: list[str] = []
    self.latest: dict[str, float] = {}

  def observe(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    general = [v for k, v in metrics.items()
               if k.startswith("eval/general_") and k.endswith("/perplexity")]
    task = metrics.get("eval/instruct/accuracy", None)
    if task is None:
      task_losses = [v for k, v in metrics.items()
                     if k.startswith("eval/sft_") and k.endswith("/loss")]
      task = -float(np.mean(task_losses)) if task_losses else None
    if task is None and "eval/loss" in metrics:  # continued pretraining
      task = -float(metrics["eval/loss"])
    if not general or task is None:
      return {}
    cur = {"general_ppl": float(np.mean(general)), "task": float(task)}
    if self.first is None:
      self.first = cur
      return {"eval/forgetting_warning": 0.0}
    rise = cur["general_ppl"] / self.first["general_ppl"] - 1.0
    warn = rise > self.margin and cur["task"] > self.first["task"]
    if warn:
      msg = (f"step {step}: general perplexity rose {rise:.1%} (> "
             f"{self.margin:.0%}) while the task metric improved "
             f"{self.first['task']:.3f} -> {cur['task']:.3f}: forgetting")
      logging.warning(msg)
      self.warnings.append(msg)
    return {"eval/forgetting_warning": float(warn),
            "eval/general_ppl_rise": rise}

  def __call__(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
    return self.observe(step, metrics)
