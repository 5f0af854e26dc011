"""Optimizer: AdamW with a learning-rate schedule, clipping and a decay mask."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from lifejax import checks

# Parameter-path components that mark parameters exempt from weight decay.
# Gains, biases and gate logits (smear: the smeared keys' mix) keep their
# values unless the loss moves them.
NO_DECAY_MARKERS = ("norm", "bias", "scale", "smear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW hyperparameters and the schedule.

  schedule: `cosine` (linear warmup, cosine decay to `end_lr_ratio * lr` at
  `total_steps`), `linear` (warmup, then linear decay to the same end value),
  or `constant` (warmup, then flat).
  """

  learning_rate: float = 3e-4
  schedule: str = "cosine"
  warmup_steps: int = 100
  total_steps: int = 1000
  end_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float | None = 1.0

  def __post_init__(self):
    if self.schedule not in ("cosine", "linear", "constant"):
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: expected "
                       "'cosine', 'linear' or 'constant'")
    if self.warmup_steps < 0 or self.total_steps < 1:
      raise ValueError("OptimizerConfig: warmup_steps must be >= 0 and "
                       f"total_steps >= 1, got {self.warmup_steps}, "
                       f"{self.total_steps}")
    checks.at_least("OptimizerConfig.learning_rate", self.learning_rate, 0.0)
    checks.at_least("OptimizerConfig.end_lr_ratio", self.end_lr_ratio, 0.0)
    checks.in_range("OptimizerConfig.b1", self.b1, 0.0, 1.0, high_open=True)
    checks.in_range("OptimizerConfig.b2", self.b2, 0.0, 1.0, high_open=True)
    checks.at_least("OptimizerConfig.weight_decay", self.weight_decay, 0.0)
    if not self.eps > 0:
      raise ValueError(f"OptimizerConfig.eps={self.eps!r}: must be > 0")
    if self.clip_norm is not None and not self.clip_norm > 0:
      # 0 used to switch clipping off silently; None is the one way to.
      raise ValueError(f"OptimizerConfig.clip_norm={self.clip_norm!r}: must "
                       "be > 0 (None turns clipping off)")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Learning rate as a function of the optimizer step count."""
  peak, warm = cfg.learning_rate, cfg.warmup_steps
  end = peak * cfg.end_lr_ratio
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warm,
        decay_steps=max(cfg.total_steps, warm + 1), end_value=end)
  warmup = optax.linear_schedule(0.0, peak, max(warm, 1))
  if cfg.schedule == "constant":
    rest = optax.constant_schedule(peak)
  else:
    rest = optax.linear_schedule(peak, end, max(cfg.total_steps - warm, 1))
  if warm == 0:
    return rest
  return optax.join_schedules([warmup, rest], [warm])


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: not norms, biases or scales."""
  def keep(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))).lower()
             for k in path]
    return not any(m in n for n in names for m in NO_DECAY_MARKERS)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with the schedule and the decay mask."""
  parts = []
  if cfg.clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                           eps=cfg.eps, weight_decay=cfg.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)
