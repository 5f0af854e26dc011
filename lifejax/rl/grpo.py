"""GRPO and its family (DAPO, Dr. GRPO, GSPO) for `learner.run`.

Each prompt is sampled `group_size` times (rows b*G .. b*G + G - 1); a
sample's advantage is its score normalized within its group
(`losses.grpo.group_advantages`), given to each of its tokens. The
registered "grpo" loss adds the k3 KL to the frozen reference, so the
rollout carries reference log-probs but no values. The loss-side options
(aggregation, clip-higher, GSPO ratios) are documented in
`lifejax/losses/grpo.py`; the rollout-side ones live here:

  std_ddof: the group std's ddof (0: population, the paper's formula; 1:
    the unbiased std, TRL's).
  dynamic_sampling_rounds (DAPO, Yu et al., 2025): groups whose scores are
    all equal (zero advantage, no policy gradient) are dropped and the batch
    is refilled from up to this many extra rollout rounds of fresh prompts
    (`dynamic_sampling.refill_groups`); what is still missing then is
    filled with flat groups, so the batch keeps its shape. 0: off.
  overlong_filter (DAPO): truncated samples (no stop token before
    max_new_tokens) get no loss; they still count in their group's mean and
    std (TRL's mask_truncated_completions convention).
  overlong_buffer / overlong_penalty (DAPO's soft overlong punishment): with
    L_max = max_new_tokens and L_cache = overlong_buffer, a response of |y|
    tokens (its stop token included) gets
      0                                  if |y| <= L_max - L_cache,
      penalty * (L_max - L_cache - |y|) / L_cache   otherwise (down to
                                         -penalty at |y| = L_max),
    added to its score before the group advantages (verl's
    overlong_buffer convention). Dynamic sampling judges the raw scores.
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
from lifejax.model import sampling
from lifejax.rl import rollout as rollout_lib
from lifejax.rl.layout import Layout

LM_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """group_size: samples per prompt (G). kl_coef: weight of the k3 KL to
  the reference in the loss. aggregation: a name in
  `losses.grpo.AGGREGATIONS` ("seq-mean-token-mean", the paper's;
  "token-mean", DAPO's; "seq-mean-token-sum"; "seq-mean-token-sum-norm",
  Dr. GRPO's, which takes norm_length, normally max_new_tokens).
  scale_rewards: divide by the group std (False: Dr. GRPO, centering only).
  clip_eps_low / clip_eps_high: the clip range [1 - low, 1 + high] (None:
  clip_eps; DAPO: 0.2 / 0.28). importance_sampling_level: "token",
  "sequence" (GSPO) or "sequence-token" (GSPO-token). The rest: see the
  module docstring."""

  group_size: int = 4
  clip_eps: float = 0.2
  kl_coef: float = 0.04
  aggregation: str = "seq-mean-token-mean"
  scale_rewards: bool = True
  eps: float = 1e-4
  std_ddof: int = 0
  clip_eps_low: float | None = None
  clip_eps_high: float | None = None
  importance_sampling_level: str = "token"
  norm_length: int = 0
  dynamic_sampling_rounds: int = 0
  overlong_filter: bool = False
  overlong_buffer: int = 0
  overlong_penalty: float = 1.0

  def __post_init__(self):
    if self.group_size < 2:
      raise ValueError(f"GRPOConfig.group_size must be >= 2 (advantages are "
                       f"relative to the group), got {self.group_size}")
    checks.choice("GRPOConfig.aggregation", self.aggregation,
                  list(grpo_loss.AGGREGATIONS))
    checks.choice("GRPOConfig.importance_sampling_level",
                  self.importance_sampling_level,
                  list(grpo_loss.RATIO_LEVELS))
    checks.in_range("GRPOConfig.clip_eps", self.clip_eps, 0.0, 1.0,
                    low_open=True, high_open=True)
    if self.clip_eps_low is not None:
      checks.in_range("GRPOConfig.clip_eps_low", self.clip_eps_low, 0.0,
                      1.0, low_open=True, high_open=True)
    if self.clip_eps_high is not None:
      checks.in_range("GRPOConfig.clip_eps_high", self.clip_eps_high, 0.0,
                      float("inf"), low_open=True, high_open=True)
    checks.at_least("GRPOConfig.kl_coef", self.kl_coef, 0.0)
    checks.at_least("GRPOConfig.eps", self.eps, 0.0)
    checks.choice("GRPOConfig.std_ddof", self.std_ddof, (0, 1))
    if self.std_ddof and not self.scale_rewards:
      raise checks.unused("GRPOConfig.std_ddof", "scale_rewards is False: "
                          "advantages are not divided by the std")
    if self.aggregation == grpo_loss.NORMALIZED:
      checks.at_least("GRPOConfig.norm_length", self.norm_length, 1)
    elif self.norm_length:
      raise checks.unused("GRPOConfig.norm_length", "only aggregation="
                          f"{grpo_loss.NORMALIZED!r} divides by it")
    checks.at_least("GRPOConfig.dynamic_sampling_rounds",
                    self.dynamic_sampling_rounds, 0)
    checks.at_least("GRPOConfig.overlong_buffer", self.overlong_buffer, 0)
    checks.in_range("GRPOConfig.overlong_penalty", self.overlong_penalty,
                    0.0, float("inf"), low_open=True, high_open=True)
    if not self.overlong_buffer and self.overlong_penalty != 1.0:
      raise checks.unused("GRPOConfig.overlong_penalty",
                          "overlong_buffer is 0 (no length shaping)")


def overlong_penalty(lengths_B: np.ndarray, max_len: int, buffer: int,
                     penalty: float = 1.0) -> np.ndarray:
  """DAPO's soft overlong punishment, (B,) f32 <= 0: 0 up to max_len -
  buffer tokens, then linear down to -penalty at max_len (and below it for
  longer responses, which a rollout of max_len tokens cannot hold)."""
  if not 1 <= buffer <= max_len:
    raise ValueError(f"GRPOConfig.overlong_buffer={buffer}: must be in "
                     f"[1, max_new_tokens={max_len}]")
  expected = max_len - buffer
  over_B = np.asarray(lengths_B, np.float64) - expected
  return (np.minimum(-over_B / buffer, 0.0) * penalty).astype(np.float32)


class GRPO:
  """The GRPO algorithm of an RL run (layout "policy"); stateless."""

  loss_kind = "grpo"

  def __init__(self, cfg: GRPOConfig, loss: str = "grpo"):
    """loss: a registered loss of kind "grpo"."""
    self.cfg, self.loss = cfg, loss
    self.group_size = cfg.group_size
    # Read by iteration.RolloutSource: extra rollout rounds to refill
    # dropped groups (0: no dynamic sampling).
    self.dynamic_sampling_rounds = cfg.dynamic_sampling_rounds
    self.make_loss_fn = get_loss(loss, kind="grpo", option="grpo.loss")
    # RolloutConfig.ratio_distribution="sampled": set by the RL job.
    self.logprob_dist: sampling.Distribution | None = None

  @property
  def _dist_kwargs(self) -> dict[str, Any]:
    return ({} if self.logprob_dist is None
            else {"logprob_dist": self.logprob_dist})

  def loss_graphdefs(self, layout: Layout) -> tuple[Any, ...]:
    if layout.kind != "policy":
      raise ValueError("GRPO trains the policy alone: layout 'policy'")
    return (layout.lm_graphdef,)

  @property
  def loss_kwargs(self) -> dict[str, Any]:
    c = self.cfg
    return dict(clip_eps=c.clip_eps, kl_coef=c.kl_coef,
                aggregation=c.aggregation, clip_eps_low=c.clip_eps_low,
                clip_eps_high=c.clip_eps_high,
                importance_sampling_level=c.importance_sampling_level,
                norm_length=c.norm_length, **self._dist_kwargs)

  def make_loss(self, layout: Layout) -> LossFn:
    return self.make_loss_fn(*self.loss_graphdefs(layout), **self.loss_kwargs)

  def example_minibatch(self, size: int, seq_len: int
                        ) -> dict[str, np.ndarray]:
    """The LM layout plus GRPO's float32 (B, T) old_logp and ref_logp and
    per-sample (B,) advantages."""
    f = np.zeros((size, seq_len), np.float32)
    return {**batching.example_lm_batch(size, seq_len), "old_logp": f,
            "ref_logp": f, "advantages": np.zeros((size,), np.float32)}

  def informative_groups(self, rollout: rollout_lib.Rollout) -> np.ndarray:
    """(num_groups,) bool: groups whose raw scores are not all equal (a
    flat group has zero advantage: dynamic sampling drops it)."""
    if rollout.score_B is None:
      raise ValueError("dynamic sampling needs the rollout's scores")
    groups_NxG = np.asarray(rollout.score_B).reshape(-1, self.group_size)
    return groups_NxG.max(axis=1) != groups_NxG.min(axis=1)

  def prepare(self, rollout: rollout_lib.Rollout
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if rollout.score_B is None or rollout.ref_logp is None:
      raise ValueError("a GRPO rollout needs scores and reference log-probs")
    c, g = self.cfg, self.cfg.group_size
    score_B = rollout.score_B
    metrics: dict[str, float] = {}
    if c.overlong_buffer:
      penalty_B = overlong_penalty(rollout.lengths_B,
                                   rollout.response_BxN.shape[1],
                                   c.overlong_buffer, c.overlong_penalty)
      score_B = score_B + penalty_B
      metrics["overlong_penalty"] = float(np.mean(penalty_B))
    adv_B = np.asarray(grpo_loss.group_advantages(
        jnp.asarray(score_B), g, eps=c.eps, scale=c.scale_rewards,
        ddof=c.std_ddof))
    batch = {k: rollout.rows[k] for k in LM_KEYS}
    if c.overlong_filter:
      truncated_B = ~np.asarray(rollout.stopped_B, bool)
      batch["loss_mask"] = (batch["loss_mask"]
                            * (~truncated_B)[:, None]).astype(np.float32)
      metrics["overlong_filtered"] = float(np.mean(truncated_B))
    batch.update(old_logp=rollout.old_logp, ref_logp=rollout.ref_logp,
                 advantages=adv_B)
    groups_NxG = rollout.score_B.reshape(-1, g)
    std_N = groups_NxG.std(axis=1)
    metrics.update({
        "group_score_std": float(np.mean(std_N)),
        # Groups whose samples all scored the same teach nothing.
        "flat_group_rate": float(np.mean(
            groups_NxG.max(axis=1) == groups_NxG.min(axis=1)))})
    return batch, metrics

  def observe(self, metrics: dict[str, float], num_samples: int) -> None:
    del metrics, num_samples

  def get_state(self) -> dict:
    return {}

  def set_state(self, state: dict) -> None:
    del state
