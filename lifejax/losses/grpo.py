"""GRPO (Shao et al., 2024, DeepSeekMath): PPO without a critic.

Each prompt is sampled G times; a sample's advantage is its score normalized
within its group, (r - mean_group) / (std_group + eps), given to every token
of the sample. The per-token objective is the clipped surrogate minus a KL
penalty to the reference policy with the k3 estimator,

    -min(rho A, clip(rho, 1 -+ eps) A) + kl_coef * k3(pi, ref),
    k3 = ref / pi - log(ref / pi) - 1.

Group advantages need the whole group, but the train step splits a batch into
microbatches by strided rows, so they are computed once per rollout with
`group_advantages` and stored in the batch.

Rollout batch ((B, T) unless noted; rows b*G .. b*G + G - 1 are one prompt's
group when computing advantages):
  tokens, targets (int32), loss_mask (f32, 1 on generated response targets),
  positions, segment_ids (int32);
  advantages (B,) f32: from `group_advantages`;
  ref_logp (f32): reference log-probs of the targets (needed if kl_coef > 0);
  old_logp (f32, optional): sampling-policy log-probs. Without it the ratio is
  taken against the current policy with its gradient stopped (one update per
  rollout, the common setting), which saves a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax.losses import common
from lifejax.losses.lm import LossFn
from lifejax.losses.ppo import kl_k3
from lifejax.losses.registry import register_loss

F32 = jnp.float32


def group_advantages(scores_B: jax.Array, group_size: int, *,
                     eps: float = 1e-4, scale: bool = True) -> jax.Array:
  """(r - group mean) / (group std + eps), (B,) f32; groups are consecutive
  rows of `group_size`. std is the population std (ddof = 0); a group whose
  scores are all equal gets exactly 0.

  `scale=False` only centers (Dr. GRPO, Liu et al., 2025: dividing by the
  std up-weights prompts that are nearly always or never solved).
  """
  b = scores_B.shape[0]
  if group_size < 1 or b % group_size:
    raise ValueError(f"batch of {b} scores is not a whole number of groups "
                     f"of {group_size}")
  s_NxG = scores_B.astype(F32).reshape(b // group_size, group_size)
  # A group of equal scores carries no signal: exactly 0, even where the
  # rounded mean differs from the scores or eps = 0.
  same_Nx1 = (jnp.max(s_NxG, axis=1, keepdims=True)
              == jnp.min(s_NxG, axis=1, keepdims=True))
  centered_NxG = jnp.where(
      same_Nx1, 0.0, s_NxG - jnp.mean(s_NxG, axis=1, keepdims=True))
  if scale:
    std_Nx1 = jnp.std(s_NxG, axis=1, keepdims=True)
    centered_NxG = centered_NxG / jnp.where(same_Nx1, 1.0, std_Nx1 + eps)
  return centered_NxG.reshape(b)


def grpo_token_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array,
                    ref_logp_BxT: jax.Array | None, advantages_B: jax.Array,
                    *, clip_eps: float, kl_coef: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-token GRPO loss, k3 KL and clipped indicator, each (B, T) f32."""
  ratio_BxT = jnp.exp(logp_BxT.astype(F32) - old_logp_BxT.astype(F32))
  adv_Bx1 = advantages_B.astype(F32)[:, None]
  surrogate_BxT = jnp.minimum(
      ratio_BxT * adv_Bx1,
      jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps) * adv_Bx1)
  clipped_BxT = (surrogate_BxT < ratio_BxT * adv_Bx1).astype(F32)
  if ref_logp_BxT is None:
    kl_BxT = jnp.zeros_like(ratio_BxT)
  else:
    kl_BxT = kl_k3(logp_BxT, ref_logp_BxT)
  return -surrogate_BxT + kl_coef * kl_BxT, kl_BxT, clipped_BxT


# An aggregation maps (per-token values, mask) to (mean, weight) so that the
# train step's weighted microbatch combination reproduces the full-batch mean.
Aggregation = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def sequence_mean(x_BxT: jax.Array, mask_BxT: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """The GRPO paper's 1/G sum_i 1/|o_i| sum_t: mean over sequences of each
  sequence's token mean; weight = number of sequences with tokens."""
  has_tokens_B = jnp.any(mask_BxT > 0, axis=1).astype(F32)
  per_seq_B = common.masked_mean(x_BxT, mask_BxT, axis=1)
  return common.masked_mean(per_seq_B, has_tokens_B), jnp.sum(has_tokens_B)


def token_mean(x_BxT: jax.Array, mask_BxT: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """Mean over all response tokens of the batch (DAPO's token-level loss,
  long answers count more); weight = number of tokens."""
  return common.masked_mean(x_BxT, mask_BxT), jnp.sum(mask_BxT.astype(F32))


AGGREGATIONS: dict[str, Aggregation] = {"sequence": sequence_mean,
                                        "token": token_mean}


@register_loss("grpo", kind="grpo")
def make_grpo_loss_fn(graphdef: nnx.GraphDef, *, clip_eps: float = 0.2,
                      kl_coef: float = 0.04,
                      aggregation: str = "sequence") -> LossFn:
  """GRPO `loss_fn(params, rollout_batch, rng)`; keys in the module docstring.

  `aggregation`: "sequence" (the paper's per-sequence mean; weight = number
  of sequences) or "token" (weight = number of response tokens). Metrics,
  aggregated the same way: kl (k3 to the reference), clip_fraction,
  policy_loss (the loss without the KL term).
  """
  if aggregation not in AGGREGATIONS:
    raise KeyError(f"unknown aggregation {aggregation!r}; choose one of "
                   f"{', '.join(AGGREGATIONS)}")
  aggregate = AGGREGATIONS[aggregation]

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    mask = batch["loss_mask"].astype(F32)
    logits_BxTxV = common.model_forward(graphdef, params, batch)
    logp_BxT = common.token_logprobs(logits_BxTxV, batch["targets"])
    old_logp_BxT = batch.get("old_logp")
    if old_logp_BxT is None:
      old_logp_BxT = jax.lax.stop_gradient(logp_BxT)
    ref_logp_BxT = batch.get("ref_logp")
    if ref_logp_BxT is None and kl_coef:
      raise KeyError('GRPO with kl_coef > 0 needs batch["ref_logp"]')
    per_token_BxT, kl_BxT, clipped_BxT = grpo_token_loss(
        logp_BxT, old_logp_BxT, ref_logp_BxT, batch["advantages"],
        clip_eps=clip_eps, kl_coef=kl_coef)
    loss, weight = aggregate(per_token_BxT, mask)
    kl, _ = aggregate(kl_BxT, mask)
    metrics = {
        "kl": jax.lax.stop_gradient(kl),
        "clip_fraction": aggregate(clipped_BxT, mask)[0],
        "policy_loss": jax.lax.stop_gradient(loss - kl_coef * kl),
        "weight": weight,
    }
    return loss, metrics

  return loss_fn
