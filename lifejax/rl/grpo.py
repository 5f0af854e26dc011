"""GRPO (Shao et al., 2024): PPO without a critic, for `learner.run`.

Each prompt is sampled `group_size` times (rows b*G .. b*G + G - 1); a
sample's advantage is its score normalized within its group
(`losses.grpo.group_advantages`), given to each of its tokens. The
registered "grpo" loss adds the k3 KL to the frozen reference, so the
rollout carries reference log-probs but no values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from lifejax import checks
from lifejax.data import batching
from lifejax.losses import grpo as grpo_loss
from lifejax.losses.lm import LossFn
from lifejax.losses.registry import get_loss
from lifejax.rl import rollout as rollout_lib
from lifejax.rl.layout import Layout

LM_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """group_size: samples per prompt (G). kl_coef: weight of the k3 KL to
  the reference in the loss. aggregation: "sequence" (the paper's mean of
  per-sample token means) or "token" (DAPO). scale_rewards: divide by the
  group std (False: Dr. GRPO, centering only)."""

  group_size: int = 4
  clip_eps: float = 0.2
  kl_coef: float = 0.04
  aggregation: str = "sequence"
  scale_rewards: bool = True
  eps: float = 1e-4

  def __post_init__(self):
    if self.group_size < 2:
      raise ValueError(f"GRPOConfig.group_size must be >= 2 (advantages are "
                       f"relative to the group), got {self.group_size}")
    if self.aggregation not in grpo_loss.AGGREGATIONS:
      raise ValueError(f"GRPOConfig.aggregation={self.aggregation!r}: choose "
                       f"one of {sorted(grpo_loss.AGGREGATIONS)}")
    checks.in_range("GRPOConfig.clip_eps", self.clip_eps, 0.0, 1.0,
                    low_open=True, high_open=True)
    checks.at_least("GRPOConfig.kl_coef", self.kl_coef, 0.0)
    checks.at_least("GRPOConfig.eps", self.eps, 0.0)


class GRPO:
  """The GRPO algorithm of an RL run (layout "policy"); stateless."""

  loss_kind = "grpo"

  def __init__(self, cfg: GRPOConfig, loss: str = "grpo"):
    """loss: a registered loss of kind "grpo"."""
    self.cfg, self.loss = cfg, loss
    self.group_size = cfg.group_size
    self.make_loss_fn = get_loss(loss, kind="grpo", option="grpo.loss")

  def loss_graphdefs(self, layout: Layout) -> tuple[Any, ...]:
    if layout.kind != "policy":
      raise ValueError("GRPO trains the policy alone: layout 'policy'")
    return (layout.lm_graphdef,)

  @property
  def loss_kwargs(self) -> dict[str, Any]:
    c = self.cfg
    return dict(clip_eps=c.clip_eps, kl_coef=c.kl_coef,
                aggregation=c.aggregation)

  def make_loss(self, layout: Layout) -> LossFn:
    return self.make_loss_fn(*self.loss_graphdefs(layout), **self.loss_kwargs)

  def example_minibatch(self, size: int, seq_len: int
                        ) -> dict[str, np.ndarray]:
    """The LM layout plus GRPO's float32 (B, T) old_logp and ref_logp and
    per-sample (B,) advantages."""
    f = np.zeros((size, seq_len), np.float32)
    return {**batching.example_lm_batch(size, seq_len), "old_logp": f,
            "ref_logp": f, "advantages": np.zeros((size,), np.float32)}

  def prepare(self, rollout: rollout_lib.Rollout
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if rollout.score_B is None or rollout.ref_logp is None:
      raise ValueError("a GRPO rollout needs scores and reference log-probs")
    g = self.cfg.group_size
    adv_B = np.asarray(grpo_loss.group_advantages(
        jnp.asarray(rollout.score_B), g, eps=self.cfg.eps,
        scale=self.cfg.scale_rewards))
    batch = {k: rollout.rows[k] for k in LM_KEYS}
    batch.update(old_logp=rollout.old_logp, ref_logp=rollout.ref_logp,
                 advantages=adv_B)
    groups_NxG = rollout.score_B.reshape(-1, g)
    std_N = groups_NxG.std(axis=1)
    metrics = {"group_score_std": float(np.mean(std_N)),
               # Groups whose samples all scored the same teach nothing.
               "flat_group_rate": float(np.mean(
                   groups_NxG.max(axis=1) == groups_NxG.min(axis=1)))}
    return batch, metrics

  def observe(self, metrics: dict[str, float], num_samples: int) -> None:
    del metrics, num_samples

  def get_state(self) -> dict:
    return {}

  def set_state(self, state: dict) -> None:
    del state
