"""Next-token cross-entropy with a loss mask and optional z-loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

LossFn = Callable[[Any, dict[str, jax.Array], jax.Array],
                  tuple[jax.Array, dict[str, jax.Array]]]


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
  """Per-token (-log p(target), logsumexp) in f32, both (B, T)."""
  logits = logits_BxTxV.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets_BxT[..., None],
                                     axis=-1)[..., 0]
  return lse - target_logit, lse


def lm_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
            loss_mask_BxT: jax.Array, z_loss: float = 0.0
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean token loss = sum(w * nll) / sum(w) (+ z-loss).

  Returns (loss, metrics); metrics["weight"] is sum(w), which the train step
  uses to combine microbatches into exactly the full-batch per-token mean.
  """
  w = loss_mask_BxT.astype(jnp.float32)
  nll, lse = token_cross_entropy(logits_BxTxV, targets_BxT)
  denom = jnp.maximum(jnp.sum(w), 1e-8)
  ce = jnp.sum(nll * w) / denom
  zl = z_loss * jnp.sum(jnp.square(lse) * w) / denom
  correct = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT)
  acc = jnp.sum(correct * w) / denom
  metrics = {"cross_entropy": ce, "z_loss": zl, "accuracy": acc,
             "weight": jnp.sum(w)}
  return ce + zl, metrics


def make_lm_loss_fn(graphdef: nnx.GraphDef, z_loss: float = 0.0) -> LossFn:
  """A pure `loss_fn(params, batch, rng)` for next-token LM training."""

  def loss_fn(params, batch, rng):
    del rng  # the decoder has no dropout
    model = nnx.merge(graphdef, params)
    logits = model(batch["tokens"], batch.get("positions"),
                   batch.get("segment_ids"))
    return lm_loss(logits, batch["targets"], batch["loss_mask"], z_loss)

  return loss_fn
