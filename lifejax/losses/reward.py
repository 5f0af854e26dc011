"""Reward modeling: the pairwise Bradley-Terry loss and reward statistics.

A reward model (`lifejax.model.heads.RewardModel`) scores a sequence with the
scalar at its last response token. Trained on preference pairs with

    loss = -log sigmoid(r_chosen - r_rejected - margin)

(the margin per pair is optional; Llama 2 uses one that grows with how
clearly the chosen answer is better). `RewardStats` gives the mean/std of
rewards on a set, which PPO uses to normalize scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from lifejax.losses import common
from lifejax.losses.lm import LossFn
from lifejax.losses.registry import register_loss
from lifejax.model.heads import last_token_values

F32 = jnp.float32


def bradley_terry_loss(r_chosen_B: jax.Array, r_rejected_B: jax.Array,
                       margin_B: jax.Array | None = None) -> jax.Array:
  """Per-pair -log sigmoid(r_chosen - r_rejected - margin), (B,) f32."""
  diff_B = r_chosen_B.astype(F32) - r_rejected_B.astype(F32)
  if margin_B is not None:
    diff_B = diff_B - margin_B.astype(F32)
  return -jax.nn.log_sigmoid(diff_B)


def sequence_scores(model: Any, batch: dict[str, jax.Array]) -> jax.Array:
  """Reward of each sequence of an LM batch: the scalar at the last token
  with loss_mask 1, (B,) f32 (0 for rows without response tokens)."""
  values_BxT = model(batch["tokens"], batch.get("positions"),
                     batch.get("segment_ids"))
  return last_token_values(values_BxT, batch["loss_mask"])


def make_score_fn(graphdef: nnx.GraphDef
                  ) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
  """A pure `score(params, lm_batch) -> (B,)` for a RewardModel."""

  def score(params, batch):
    return sequence_scores(nnx.merge(graphdef, params), batch)

  return score


@register_loss("reward", kind="reward")
def make_reward_loss_fn(graphdef: nnx.GraphDef) -> LossFn:
  """Bradley-Terry `loss_fn(params, batch, rng)` for a RewardModel.

  batch: {"chosen": LM batch, "rejected": LM batch} of (B, T) arrays, and
  optionally "margin" (B,) f32. Pairs where either half has no response
  token (padding rows) get zero weight. metrics["weight"] = number of pairs;
  the other metrics are means over pairs: accuracy (r_chosen > r_rejected),
  margin (r_chosen - r_rejected), chosen_reward, rejected_reward.
  """

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    model = nnx.merge(graphdef, params)
    both = common.concat_pair(batch, ("tokens", "positions", "segment_ids",
                                      "loss_mask"))
    r_chosen_B, r_rejected_B = common.split_pair(sequence_scores(model, both))
    valid_B = common.valid_pairs(batch)
    losses_B = bradley_terry_loss(r_chosen_B, r_rejected_B,
                                  batch.get("margin"))
    diff_B = r_chosen_B - r_rejected_B
    metrics = {
        "accuracy": common.masked_mean((diff_B > 0).astype(F32), valid_B),
        "margin": common.masked_mean(diff_B, valid_B),
        "chosen_reward": common.masked_mean(r_chosen_B, valid_B),
        "rejected_reward": common.masked_mean(r_rejected_B, valid_B),
        "weight": jnp.sum(valid_B),
    }
    return common.masked_mean(losses_B, valid_B), metrics

  return loss_fn


@struct.dataclass
class RewardStats:
  """Running count / mean / sum of squared deviations of rewards.

  A pytree (it can live in a jitted state). Merging uses Chan et al.'s
  parallel update, so statistics over many batches equal those of their
  concatenation without storing it.
  """

  count: jax.Array
  mean: jax.Array
  m2: jax.Array

  @classmethod
  def empty(cls) -> RewardStats:
    zero = jnp.zeros((), F32)
    return cls(count=zero, mean=zero, m2=zero)

  @classmethod
  def from_rewards(cls, rewards_N: jax.Array,
                   mask_N: jax.Array | None = None) -> RewardStats:
    """Statistics of the rewards where mask > 0 (all of them by default)."""
    r = rewards_N.astype(F32).reshape(-1)
    w = (jnp.ones_like(r) if mask_N is None
         else (mask_N.reshape(-1) > 0).astype(F32))
    count = jnp.sum(w)
    mean = common.masked_mean(r, w)
    return cls(count=count, mean=mean,
               m2=jnp.sum(w * jnp.square(r - mean)))

  def merge(self, other: RewardStats) -> RewardStats:
    count = self.count + other.count
    safe = jnp.maximum(count, 1.0)
    delta = other.mean - self.mean
    mean = self.mean + delta * other.count / safe
    m2 = (self.m2 + other.m2
          + jnp.square(delta) * self.count * other.count / safe)
    return RewardStats(count=count, mean=mean, m2=m2)

  @property
  def std(self) -> jax.Array:
    """Population standard deviation."""
    return jnp.sqrt(self.m2 / jnp.maximum(self.count, 1.0))

  def normalize(self, rewards: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(r - mean) / (std + eps): zero mean, unit std on the measured set."""
    return (rewards.astype(F32) - self.mean) / (self.std + eps)


def reward_stats_over(score_fn: Callable[[Any, dict[str, jax.Array]],
                                         jax.Array],
                      params: Any, batches: Iterable[dict[str, jax.Array]]
                      ) -> RewardStats:
  """RewardStats of `score_fn(params, batch)` over LM batches (jitted once).

  Rows without response tokens (padding) are left out.
  """

  @jax.jit
  def one(params, batch):
    valid_B = jnp.any(batch["loss_mask"] > 0, axis=-1)
    return RewardStats.from_rewards(score_fn(params, batch), valid_B)

  stats = RewardStats.empty()
  for batch in batches:
    stats = stats.merge(one(params, batch))
  return stats
