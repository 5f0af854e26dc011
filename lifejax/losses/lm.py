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


def add_moe_losses(loss: jax.Array, metrics: dict[str, jax.Array],
                   aux: dict[str, jax.Array], cfg: Any, add: bool = True
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """loss + moe_aux_loss_coef * moe_aux_loss + moe_z_loss_coef *
  moe_z_loss (the model's means over layers, `cfg` its TransformerConfig;
  `add` False leaves the loss as it is); the three aux values (unweighted)
  join the metrics. No-op for a dense model (empty `aux`)."""
  if not aux:
    return loss, metrics
  if add:
    loss = (loss + cfg.moe_aux_loss_coef * aux["moe_aux_loss"]
            + cfg.moe_z_loss_coef * aux["moe_z_loss"])
  return loss, {**metrics, **aux}


def make_lm_loss_fn(graphdef: nnx.GraphDef, z_loss: float = 0.0,
                    moe_losses: bool = True) -> LossFn:
  """A pure `loss_fn(params, batch, rng)` for next-token LM training. With
  a mixture-of-experts model the loss adds its weighted aux losses unless
  `moe_losses` is False (evals: the loss is then the cross-entropy and
  z-loss alone, so perplexity = exp(loss)); their values are logged
  either way."""

  def loss_fn(params, batch, rng):
    del rng  # the decoder has no dropout
    model = nnx.merge(graphdef, params)
    logits, aux = model.logits_and_aux(batch["tokens"], batch.get("positions"),
                                       batch.get("segment_ids"))
    loss, metrics = lm_loss(logits, batch["targets"], batch["loss_mask"],
                            z_loss)
    return add_moe_losses(loss, metrics, aux, model.cfg, moe_losses)

  return loss_fn
