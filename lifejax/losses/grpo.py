"""The GRPO family (Shao et al., 2024, DeepSeekMath): PPO without a critic.

Each prompt is sampled G times; a sample's advantage is its score normalized
within its group, (r - mean_group) / (std_group + eps), given to every token
of the sample. The per-token objective is the clipped surrogate minus a KL
penalty to the reference policy with the k3 estimator,

    -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + kl_coef * k3,
    k3 = ref / pi - log(ref / pi) - 1,

and the per-token values are reduced to one loss by an aggregation. The
variants are options of this one registered loss, chosen from tables when
the loss is built (never by a branch on an algorithm name inside it):

  aggregation (names of verl's `loss_agg_mode`; x = per-token loss, m = mask,
  B rows, L = `norm_length`):
    "seq-mean-token-mean"  mean_i (sum_t m x / sum_t m): the GRPO paper
                           (TRL loss_type="grpo"); alias "sequence".
    "token-mean"           sum_it m x / sum_it m: DAPO's token-level loss
                           (TRL "bnpo"; "dapo" normalizes over the global
                           batch, which the engine's weighting gives); alias
                           "token".
    "seq-mean-token-sum"   mean_i sum_t m x: long answers count more.
    "seq-mean-token-sum-norm"  sum_it m x / (B L): Dr. GRPO (Liu et al.,
                           2025), a constant normalizer (TRL "dr_grpo" with
                           L = max_completion_length).
  clip_eps_low / clip_eps_high: DAPO's clip-higher (Yu et al., 2025), e.g.
    0.2 / 0.28; both default to clip_eps.
  importance_sampling_level:
    "token"           rho_t = pi(y_t) / pi_old(y_t) (GRPO, PPO).
    "sequence"        GSPO (Zheng et al., 2025): one ratio per sample,
                      s = exp(mean_t (log pi - log pi_old)) over its response
                      tokens, clipped at sequence level; its loss is given to
                      each of the sample's tokens and then aggregated (so
                      "seq-mean-token-mean" is the paper's objective, TRL's
                      importance_sampling_level="sequence" convention).
    "sequence-token"  GSPO-token: s_t = sg[s] pi(y_t) / sg[pi(y_t)], equal
                      to s in value, with a per-token gradient (token-level
                      advantages; with one advantage per sample its gradient
                      equals GSPO's under "seq-mean-token-mean").

The train step splits a batch into microbatches and combines them as
sum_k loss_k w_k / sum_k w_k, w_k = metrics["weight"]. Every aggregation
returns (value, weight) with value = numerator / weight for a numerator that
adds up over rows, so k microbatches give exactly the loss (and gradient) of
the whole batch: the weight is the number of tokens (token-mean), of rows
with tokens (seq-mean-*), or of rows (Dr. GRPO: B L is the normalizer).

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

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax.losses import common
from lifejax.losses.lm import LossFn
from lifejax.losses.ppo import kl_k3
from lifejax.losses.registry import register_loss
from lifejax.model import sampling

F32 = jnp.float32


def group_advantages(scores_B: jax.Array, group_size: int, *,
                     eps: float = 1e-4, scale: bool = True,
                     ddof: int = 0) -> jax.Array:
  """(r - group mean) / (group std + eps), (B,) f32; groups are consecutive
  rows of `group_size`. A group whose scores are all equal gets exactly 0.

  ddof: the std's delta degrees of freedom, std = sqrt(sum (r - mean)^2 /
  (G - ddof)). 0, the population std, is the GRPO paper's formula as
  written; 1, the unbiased sample std, is what TRL computes (torch.std).
  `scale=False` only centers (Dr. GRPO, Liu et al., 2025: dividing by the
  std up-weights prompts that are nearly always or never solved).
  """
  b = scores_B.shape[0]
  if group_size < 1 or b % group_size:
    raise ValueError(f"batch of {b} scores is not a whole number of groups "
                     f"of {group_size}")
  if ddof not in (0, 1) or (ddof and group_size < 2):
    raise ValueError(f"ddof={ddof!r}: expected 0 or 1 (1 needs groups of "
                     f"at least 2, got {group_size})")
  s_NxG = scores_B.astype(F32).reshape(b // group_size, group_size)
  # A group of equal scores carries no signal: exactly 0, even where the
  # rounded mean differs from the scores or eps = 0.
  same_Nx1 = (jnp.max(s_NxG, axis=1, keepdims=True)
              == jnp.min(s_NxG, axis=1, keepdims=True))
  centered_NxG = jnp.where(
      same_Nx1, 0.0, s_NxG - jnp.mean(s_NxG, axis=1, keepdims=True))
  if scale:
    std_Nx1 = jnp.std(s_NxG, axis=1, keepdims=True, ddof=ddof)
    centered_NxG = centered_NxG / jnp.where(same_Nx1, 1.0, std_Nx1 + eps)
  return centered_NxG.reshape(b)


# -- importance ratios ---------------------------------------------------------
# Each maps (logp, old_logp, mask), (B, T), to the log importance ratio used
# at every token, (B, T) f32.


def token_log_ratio(logp_BxT: jax.Array, old_logp_BxT: jax.Array,
                    mask_BxT: jax.Array) -> jax.Array:
  """log pi(y_t) - log pi_old(y_t): PPO's and GRPO's per-token ratio."""
  del mask_BxT
  return logp_BxT.astype(F32) - old_logp_BxT.astype(F32)


def sequence_log_ratio(logp_BxT: jax.Array, old_logp_BxT: jax.Array,
                       mask_BxT: jax.Array) -> jax.Array:
  """GSPO: log s = mean over the row's response tokens of log pi - log
  pi_old (0 for a row without tokens), the same at each of its tokens."""
  diff_BxT = logp_BxT.astype(F32) - old_logp_BxT.astype(F32)
  seq_B = common.masked_mean(diff_BxT, mask_BxT, axis=1)
  return jnp.broadcast_to(seq_B[:, None], diff_BxT.shape)


def sequence_token_log_ratio(logp_BxT: jax.Array, old_logp_BxT: jax.Array,
                             mask_BxT: jax.Array) -> jax.Array:
  """GSPO-token: sg[log s] + log pi(y_t) - sg[log pi(y_t)]: GSPO's value,
  the gradient of each token's own log-prob."""
  logp = logp_BxT.astype(F32)
  seq_BxT = jax.lax.stop_gradient(
      sequence_log_ratio(logp, old_logp_BxT, mask_BxT))
  return seq_BxT + logp - jax.lax.stop_gradient(logp)


RATIO_LEVELS: dict[str, Callable[[jax.Array, jax.Array, jax.Array],
                                 jax.Array]] = {
    "token": token_log_ratio,
    "sequence": sequence_log_ratio,
    "sequence-token": sequence_token_log_ratio,
}


def grpo_token_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array,
                    ref_logp_BxT: jax.Array | None, advantages_B: jax.Array,
                    *, clip_eps: float, kl_coef: float,
                    clip_eps_high: float | None = None,
                    importance_sampling_level: str = "token",
                    mask_BxT: jax.Array | None = None,
                    is_weight_BxT: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-token GRPO loss, k3 KL and clipped indicator, each (B, T) f32.

  The ratio is clipped to [1 - clip_eps, 1 + clip_eps_high] (clip_eps_high
  None: clip_eps). A sequence-level ratio needs `mask_BxT`, the response
  tokens it averages over. is_weight_BxT: an off-policy rollout's
  truncated importance weight pi_prox / mu (no gradient), multiplying the
  surrogate (decoupled PPO: the ratio is to the proximal policy, the
  weight corrects for the stale sampler); None: 1.
  """
  if importance_sampling_level not in RATIO_LEVELS:
    raise KeyError(f"unknown importance_sampling_level "
                   f"{importance_sampling_level!r}; choose one of "
                   f"{', '.join(RATIO_LEVELS)}")
  if mask_BxT is None:
    if importance_sampling_level != "token":
      raise ValueError(f"importance_sampling_level="
                       f"{importance_sampling_level!r} needs mask_BxT")
    mask_BxT = jnp.ones(logp_BxT.shape, F32)
  high = clip_eps if clip_eps_high is None else clip_eps_high
  log_ratio_BxT = RATIO_LEVELS[importance_sampling_level](
      logp_BxT, old_logp_BxT, mask_BxT)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  adv_Bx1 = advantages_B.astype(F32)[:, None]
  surrogate_BxT = jnp.minimum(
      ratio_BxT * adv_Bx1,
      jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + high) * adv_Bx1)
  clipped_BxT = (surrogate_BxT < ratio_BxT * adv_Bx1).astype(F32)
  if is_weight_BxT is not None:
    surrogate_BxT = surrogate_BxT * jax.lax.stop_gradient(
        is_weight_BxT.astype(F32))
  if ref_logp_BxT is None:
    kl_BxT = jnp.zeros_like(ratio_BxT)
  else:
    kl_BxT = kl_k3(logp_BxT, ref_logp_BxT)
  return -surrogate_BxT + kl_coef * kl_BxT, kl_BxT, clipped_BxT


# -- aggregations --------------------------------------------------------------
# An aggregation maps (per-token values, mask) to (value, weight) so that the
# train step's weighted microbatch combination reproduces the full-batch value
# (see the module docstring).
Aggregation = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def sequence_mean(x_BxT: jax.Array, mask_BxT: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """"seq-mean-token-mean", the GRPO paper's 1/G sum_i 1/|o_i| sum_t: mean
  over sequences of each sequence's token mean; weight = number of
  sequences with tokens."""
  has_tokens_B = jnp.any(mask_BxT > 0, axis=1).astype(F32)
  per_seq_B = common.masked_mean(x_BxT, mask_BxT, axis=1)
  return common.masked_mean(per_seq_B, has_tokens_B), jnp.sum(has_tokens_B)


def token_mean(x_BxT: jax.Array, mask_BxT: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """"token-mean": mean over all response tokens of the batch (DAPO's
  token-level loss, long answers count more); weight = number of tokens."""
  return common.masked_mean(x_BxT, mask_BxT), jnp.sum(mask_BxT.astype(F32))


def sequence_mean_token_sum(x_BxT: jax.Array, mask_BxT: jax.Array
                            ) -> tuple[jax.Array, jax.Array]:
  """"seq-mean-token-sum": mean over sequences of each sequence's token
  sum; weight = number of sequences with tokens."""
  has_tokens_B = jnp.any(mask_BxT > 0, axis=1).astype(F32)
  per_seq_B = common.masked_sum(x_BxT, mask_BxT, axis=1)
  return common.masked_mean(per_seq_B, has_tokens_B), jnp.sum(has_tokens_B)


def token_sum_norm(x_BxT: jax.Array, mask_BxT: jax.Array, *,
                   norm_length: int) -> tuple[jax.Array, jax.Array]:
  """"seq-mean-token-sum-norm" (Dr. GRPO): the sum over all response tokens
  / (B * norm_length), a normalizer that depends on no mask; weight = B
  (every row, with tokens or not, as TRL's dr_grpo counts them)."""
  b = x_BxT.shape[0]
  return (common.masked_sum(x_BxT, mask_BxT) / F32(b * norm_length),
          jnp.asarray(b, F32))


def row_mean(x_BxT: jax.Array, mask_BxT: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
  """Mean over all B rows of each row's token mean (0 for a row without
  tokens); weight = B. Dr. GRPO's metrics: they share its weight."""
  per_row_B = common.masked_mean(x_BxT, mask_BxT, axis=1)
  return jnp.mean(per_row_B), jnp.asarray(x_BxT.shape[0], F32)


# "sequence" and "token" are this module's earlier names of two of them.
AGGREGATIONS: dict[str, Aggregation] = {
    "seq-mean-token-mean": sequence_mean,
    "token-mean": token_mean,
    "seq-mean-token-sum": sequence_mean_token_sum,
    "seq-mean-token-sum-norm": token_sum_norm,
    "sequence": sequence_mean,
    "token": token_mean,
}
NORMALIZED = "seq-mean-token-sum-norm"  # the one that takes norm_length
# Metrics (kl, clip_fraction) are means, reduced with the same weight as the
# loss: a token sum per sequence of clip indicators would be no fraction.
METRIC_AGGREGATIONS: dict[str, Aggregation] = {
    "seq-mean-token-sum": sequence_mean,
    "seq-mean-token-sum-norm": row_mean,
}


def aggregation_fns(aggregation: str, norm_length: int = 0
                    ) -> tuple[Aggregation, Aggregation]:
  """(loss aggregation, metric aggregation) of a name in AGGREGATIONS, both
  with the same weight. KeyError for an unknown name; ValueError when
  norm_length is missing (Dr. GRPO) or cannot apply (the others)."""
  if aggregation not in AGGREGATIONS:
    raise KeyError(f"unknown aggregation {aggregation!r}; choose one of "
                   f"{', '.join(AGGREGATIONS)}")
  aggregate = AGGREGATIONS[aggregation]
  if aggregation == NORMALIZED:
    if not norm_length >= 1:
      raise ValueError(f"aggregation={NORMALIZED!r} needs norm_length >= 1 "
                       f"(the longest response, e.g. max_new_tokens), got "
                       f"{norm_length!r}")
    aggregate = functools.partial(token_sum_norm, norm_length=norm_length)
  elif norm_length:
    raise ValueError(f"norm_length={norm_length!r} is set but has no effect: "
                     f"only aggregation={NORMALIZED!r} takes it")
  return aggregate, METRIC_AGGREGATIONS.get(aggregation, aggregate)


def make_grpo_objective(*, clip_eps: float = 0.2, kl_coef: float = 0.04,
                        aggregation: str = "seq-mean-token-mean",
                        clip_eps_low: float | None = None,
                        clip_eps_high: float | None = None,
                        importance_sampling_level: str = "token",
                        norm_length: int = 0
                        ) -> Callable[[jax.Array, dict[str, jax.Array]],
                                      tuple[jax.Array, dict[str, jax.Array]]]:
  """`objective(logp_BxT, batch) -> (loss, metrics)`: the GRPO loss of the
  current policy's log-probs of batch["targets"] (see `make_grpo_loss_fn`).
  """
  aggregate, aggregate_metric = aggregation_fns(aggregation, norm_length)
  if importance_sampling_level not in RATIO_LEVELS:
    raise KeyError(f"unknown importance_sampling_level "
                   f"{importance_sampling_level!r}; choose one of "
                   f"{', '.join(RATIO_LEVELS)}")
  low = clip_eps if clip_eps_low is None else clip_eps_low
  high = clip_eps if clip_eps_high is None else clip_eps_high
  if not (0.0 < low < 1.0 and high > 0.0):
    raise ValueError(f"clip range [1 - {low}, 1 + {high}]: the low epsilon "
                     "must be in (0, 1) and the high one > 0")

  def objective(logp_BxT, batch):
    mask = batch["loss_mask"].astype(F32)
    old_logp_BxT = batch.get("old_logp")
    if old_logp_BxT is None:
      old_logp_BxT = jax.lax.stop_gradient(logp_BxT)
    ref_logp_BxT = batch.get("ref_logp")
    if ref_logp_BxT is None and kl_coef:
      raise KeyError('GRPO with kl_coef > 0 needs batch["ref_logp"]')
    per_token_BxT, kl_BxT, clipped_BxT = grpo_token_loss(
        logp_BxT, old_logp_BxT, ref_logp_BxT, batch["advantages"],
        clip_eps=low, kl_coef=kl_coef, clip_eps_high=high,
        importance_sampling_level=importance_sampling_level, mask_BxT=mask,
        is_weight_BxT=batch.get("is_weight"))
    loss, weight = aggregate(per_token_BxT, mask)
    kl, _ = aggregate(kl_BxT, mask)
    kl_mean = (kl if aggregate_metric is aggregate
               else aggregate_metric(kl_BxT, mask)[0])
    metrics = {
        "kl": jax.lax.stop_gradient(kl_mean),
        "clip_fraction": aggregate_metric(clipped_BxT, mask)[0],
        "policy_loss": jax.lax.stop_gradient(loss - kl_coef * kl),
        "weight": weight,
    }
    return loss, metrics

  return objective


@register_loss("grpo", kind="grpo")
def make_grpo_loss_fn(graphdef: nnx.GraphDef, *, clip_eps: float = 0.2,
                      kl_coef: float = 0.04,
                      aggregation: str = "seq-mean-token-mean",
                      clip_eps_low: float | None = None,
                      clip_eps_high: float | None = None,
                      importance_sampling_level: str = "token",
                      norm_length: int = 0,
                      logprob_dist: sampling.Distribution | None = None
                      ) -> LossFn:
  """GRPO `loss_fn(params, rollout_batch, rng)`; keys and options in the
  module docstring.

  logprob_dist: the distribution the policy's log-probs are taken under
  (None: the full softmax; RolloutConfig.ratio_distribution="sampled" sets
  the sampler's, so old_logp / ref_logp must be taken under it too).

  aggregation: a name in AGGREGATIONS (norm_length: Dr. GRPO's constant L,
  required by "seq-mean-token-sum-norm" and only by it). clip_eps_low /
  clip_eps_high: the clip range [1 - low, 1 + high] (None: clip_eps).
  importance_sampling_level: "token" | "sequence" (GSPO) |
  "sequence-token" (GSPO-token). Metrics: kl (k3 to the reference) and
  clip_fraction, means with the loss's weight (per token for token-mean,
  per sequence otherwise); policy_loss (the loss without the KL term).
  """
  objective = make_grpo_objective(
      clip_eps=clip_eps, kl_coef=kl_coef, aggregation=aggregation,
      clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
      importance_sampling_level=importance_sampling_level,
      norm_length=norm_length)

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    logits_BxTxV = common.model_forward(graphdef, params, batch)
    logp_BxT = common.target_logprobs(logits_BxTxV, batch["targets"],
                                        logprob_dist)
    return objective(logp_BxT, batch)

  return loss_fn
