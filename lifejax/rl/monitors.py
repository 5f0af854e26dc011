"""Training-health monitors of an RL run: the policy's entropy and its KL
to the reference, with alerts.

Entropy collapse (the policy turning near-deterministic, which ends
exploration: DAPO's motivation for clip-higher) is measured as the mean
entropy of the sampling policy's next-token distributions over the
rollout's response tokens, against its first-iteration value; drift from
the reference as the rollout's `kl` (log pi - log ref summed over a
response, mean over samples: the estimate PPO's KL controller reads). An
alert is a logged warning plus metrics alert/<name> (1 in that iteration)
and alert/<name>_count (alerts so far, kept in checkpoints).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax
import numpy as np
from flax import nnx

from lifejax import sharding
from lifejax.data import batching
from lifejax.losses import common
from lifejax.rl.rollout import Rows


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _entropy(graphdef: nnx.GraphDef, mesh: Any, rules: sharding.Rules,
             params: Any, rows: Rows) -> jax.Array:
  with sharding.activation_sharding(mesh, rules):
    logits_BxTxV = common.model_forward(graphdef, params, rows)
  return common.token_entropy(logits_BxTxV)


def policy_entropy(graphdef: nnx.GraphDef, params: Any, rows: Rows,
                   mesh: Any, rules: sharding.Rules, chunk_size: int = 0
                   ) -> float:
  """Mean entropy (nats) of the LM's next-token distributions over the
  response tokens of `rows` (loss_mask > 0): one forward, in chunks of
  `chunk_size` rows (0: all at once), summed in float64."""
  keys = ("tokens", "positions", "segment_ids")

  def one(chunk, _):
    chunk = sharding.put(chunk, sharding.batch_shardings(chunk, mesh, rules))
    with jax.set_mesh(mesh):
      return _entropy(graphdef, mesh, rules, params, chunk)

  entropy_BxT = batching.map_padded(one, {k: rows[k] for k in keys},
                                    chunk_size)
  mask = np.asarray(rows["loss_mask"], np.float64)
  return float(np.sum(entropy_BxT * mask) / max(np.sum(mask), 1e-8))


@dataclasses.dataclass
class Monitors:
  """Alerts when policy_entropy < entropy_floor * its first value
  (entropy_floor: a fraction, 0: off) or kl > kl_ceiling (0: off); its
  state (the first-iteration entropy, the alert counts) is resumable."""

  entropy_floor: float = 0.0
  kl_ceiling: float = 0.0
  first_entropy: float | None = None
  entropy_alerts: int = 0
  kl_alerts: int = 0

  @property
  def active(self) -> bool:
    return bool(self.entropy_floor or self.kl_ceiling)

  def check(self, iteration: int, metrics: dict[str, float]
            ) -> dict[str, float]:
    """Alert flags and counts for one iteration's metrics (which hold
    policy_entropy when entropy_floor is set, kl when kl_ceiling is)."""
    out: dict[str, float] = {}
    if self.entropy_floor:
      entropy = metrics["policy_entropy"]
      if self.first_entropy is None:
        self.first_entropy = entropy
      collapsed = entropy < self.entropy_floor * self.first_entropy
      if collapsed:
        self.entropy_alerts += 1
        logging.warning(
            "iteration %d: policy entropy %.4g fell below "
            "RLLoopConfig.entropy_floor=%g x its first-iteration value %.4g "
            "(alert %d)", iteration, entropy, self.entropy_floor,
            self.first_entropy, self.entropy_alerts)
      out["alert/entropy_collapse"] = float(collapsed)
      out["alert/entropy_collapse_count"] = float(self.entropy_alerts)
    if self.kl_ceiling:
      if "kl" not in metrics:
        raise ValueError("RLLoopConfig.kl_ceiling needs the rollout's KL "
                         "(policy and reference log-probs)")
      over = metrics["kl"] > self.kl_ceiling
      if over:
        self.kl_alerts += 1
        logging.warning(
            "iteration %d: KL to the reference %.4g exceeds "
            "RLLoopConfig.kl_ceiling=%g (alert %d)", iteration,
            metrics["kl"], self.kl_ceiling, self.kl_alerts)
      out["alert/kl"] = float(over)
      out["alert/kl_count"] = float(self.kl_alerts)
    return out

  def get_state(self) -> dict:
    return {"first_entropy": self.first_entropy,
            "entropy_alerts": self.entropy_alerts,
            "kl_alerts": self.kl_alerts}

  def set_state(self, state: dict) -> None:
    first = state["first_entropy"]
    self.first_entropy = None if first is None else float(first)
    self.entropy_alerts = int(state["entropy_alerts"])
    self.kl_alerts = int(state["kl_alerts"])
