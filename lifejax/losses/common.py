"""Shared pieces of the sequence-level losses: log-probs, entropy, masked
statistics.

Everything here computes in f32 whatever the logits' dtype, and every
reduction takes a float mask of loss weights (1.0 on response tokens, 0.0 on
prompt and padding). Rows or batches whose mask is all zero give 0, never NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax.losses.lm import token_cross_entropy
from lifejax.model import sampling

F32 = jnp.float32

# Keys of an LM batch that a forward pass reads.
MODEL_INPUT_KEYS = ("tokens", "positions", "segment_ids")


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array
                   ) -> jax.Array:
  """log p(target_t) per token, (B, T) f32, via a stable logsumexp."""
  nll_BxT, _ = token_cross_entropy(logits_BxTxV, targets_BxT)
  return -nll_BxT


def target_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                    dist: sampling.Distribution | None = None
                    ) -> jax.Array:
  """Log-probs of the targets (B, T) f32: under the model's own softmax
  (dist None: what every loss uses by default), or under the sampled
  distribution `dist` (temperature, top-k, top-p, vocab limit), the
  policy an RL run actually samples from."""
  if dist is None or dist.is_softmax(logits_BxTxV.shape[-1]):
    # One formula for the plain softmax, whoever asks (bitwise the same).
    return token_logprobs(logits_BxTxV, targets_BxT)
  return sampling.sampled_logprobs(logits_BxTxV, targets_BxT, dist)


def token_entropy(logits_BxTxV: jax.Array) -> jax.Array:
  """Entropy of the next-token distribution in nats, (B, T) f32.

  H = lse - sum_v p_v * logit_v, with 0 * log 0 taken as 0 so that logits of
  -inf (banned tokens) are allowed.
  """
  logits = logits_BxTxV.astype(F32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def sequence_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                      mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum_t mask * log p(target_t), sum_t mask), both (B,) f32."""
  logp_BxT = token_logprobs(logits_BxTxV, targets_BxT)
  mask = mask_BxT.astype(F32)
  return jnp.sum(logp_BxT * mask, axis=-1), jnp.sum(mask, axis=-1)


def masked_sum(x: jax.Array, mask: jax.Array,
               axis: int | None = None) -> jax.Array:
  """sum(x * mask) over `axis` (all axes if None), f32."""
  return jnp.sum(x.astype(F32) * mask.astype(F32), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array,
                axis: int | None = None) -> jax.Array:
  """Weighted mean sum(x * mask) / sum(mask); 0 where the mask is empty."""
  denom = jnp.sum(mask.astype(F32), axis=axis)
  return masked_sum(x, mask, axis) / jnp.maximum(denom, 1e-8)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True
               ) -> jax.Array:
  """Variance of the masked entries of x (a scalar).

  `unbiased` applies Bessel's correction n / (n - 1) with n = sum(mask),
  as the usual PPO whitening does; it is skipped when n <= 1.
  """
  mask = mask.astype(F32)
  mean = masked_mean(x, mask)
  var = masked_mean(jnp.square(x.astype(F32) - mean), mask)
  if unbiased:
    n = jnp.sum(mask)
    var = var * jnp.where(n > 1, n / jnp.maximum(n - 1, 1e-8), 1.0)
  return var


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """(x - mean) / sqrt(var + eps) over the masked entries; 0 outside the mask.

  With `shift_mean=False` the mean is added back (only the scale changes),
  which is how rewards are whitened without changing their sign structure.
  """
  mask = mask.astype(F32)
  mean = masked_mean(x, mask)
  white = (x.astype(F32) - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
  if not shift_mean:
    white = white + mean
  return white * mask


def model_forward(graphdef: nnx.GraphDef, params: Any,
                  batch: dict[str, jax.Array]) -> Any:
  """Merges `params` into `graphdef` and calls it on an LM batch's inputs."""
  model = nnx.merge(graphdef, params)
  return model(batch["tokens"], batch.get("positions"),
               batch.get("segment_ids"))


def concat_pair(batch: dict[str, dict[str, jax.Array]],
                keys: tuple[str, ...]) -> dict[str, jax.Array]:
  """{"chosen": {k: (B, ...)}, "rejected": {...}} -> {k: (2B, ...)}.

  Chosen rows come first, so row b and row B + b are the two halves of pair b.
  One forward over both halves is cheaper than two.
  """
  return {k: jnp.concatenate([batch["chosen"][k], batch["rejected"][k]],
                             axis=0) for k in keys if k in batch["chosen"]}


def valid_pairs(batch: dict[str, dict[str, jax.Array]]) -> jax.Array:
  """(B,) f32: 1 where both halves have response tokens (0 on padding rows)."""
  def nonempty(half):
    return jnp.any(half["loss_mask"] > 0, axis=-1)
  return (nonempty(batch["chosen"]) & nonempty(batch["rejected"])).astype(F32)


def split_pair(x_2BxN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Inverse of `concat_pair` along the leading axis: (chosen, rejected)."""
  b = x_2BxN.shape[0] // 2
  return x_2BxN[:b], x_2BxN[b:]
