"""Next-token cross-entropy with a loss mask and optional z-loss."""

from __future__ import annotations

import dataclasses
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


def target_is_top(logits_BxTxV: jax.Array, targets_BxT: jax.Array
                  ) -> jax.Array:
  """(B, T) bool: the target's logit is the row's largest (the accuracy
  metric). Equal to `argmax(logits) == target` except on exact ties, which
  count as hits here. It compares the target logit with the row max, which
  XLA shares with the log-sum-exp's max: on XLA:CPU the (value, index)
  reduce of an argmax cost 62 ms of a 1.1 s cpu10m train step
  (experiments/bench_train_step/profile.md); this costs ~1 ms."""
  logits = logits_BxTxV.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets_BxT[..., None],
                                     axis=-1)[..., 0]
  return target_logit >= jnp.max(logits, axis=-1)


# Metrics under this prefix are per-row vectors (B,), not weighted means:
# the eval step passes them through unweighted (train.step.build_eval_step).
ROW_PREFIX = "rows/"


def lm_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
            loss_mask_BxT: jax.Array, z_loss: float = 0.0,
            per_row: bool = False
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean token loss = sum(w * nll) / sum(w) (+ z-loss).

  Returns (loss, metrics); metrics["weight"] is sum(w), which the train step
  uses to combine microbatches into exactly the full-batch per-token mean.
  per_row: metrics also hold each row's summed cross-entropy and weight,
  "rows/loss_sum" and "rows/weight" (B,) (evaluation: paired confidence
  intervals over rows, eval.stats.paired_perplexity_ratio).
  """
  w = loss_mask_BxT.astype(jnp.float32)
  nll, lse = token_cross_entropy(logits_BxTxV, targets_BxT)
  denom = jnp.maximum(jnp.sum(w), 1e-8)
  ce = jnp.sum(nll * w) / denom
  zl = z_loss * jnp.sum(jnp.square(lse) * w) / denom
  correct = target_is_top(logits_BxTxV, targets_BxT)
  acc = jnp.sum(correct * w) / denom
  metrics = {"cross_entropy": ce, "z_loss": zl, "accuracy": acc,
             "weight": jnp.sum(w)}
  if per_row:
    metrics[ROW_PREFIX + "loss_sum"] = jnp.sum(nll * w, axis=-1)
    metrics[ROW_PREFIX + "weight"] = jnp.sum(w, axis=-1)
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


def lm_loss_sums(logits_BxTxV: jax.Array, extras: dict[str, jax.Array],
                 z_loss: float = 0.0
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`lm_loss` as sums over rows (not means), for a loss computed by
  microbatches (`Transformer.pipelined_loss`): (sum(w * nll) + z_loss *
  sum(w * lse^2), {"ce", "zl", "correct"} sums). extras: "targets" and
  "loss_mask" (B, T)."""
  w = extras["loss_mask"].astype(jnp.float32)
  nll, lse = token_cross_entropy(logits_BxTxV, extras["targets"])
  ce = jnp.sum(nll * w)
  zl = jnp.sum(jnp.square(lse) * w)
  correct = jnp.sum(target_is_top(logits_BxTxV, extras["targets"]) * w)
  return ce + z_loss * zl, {"ce": ce, "zl": zl, "correct": correct}


def _pipelined_lm_loss(model: Any, batch: dict[str, jax.Array],
                       z_loss: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`lm_loss` of the model on `batch` through `pipelined_loss` (the 1F1B
  schedule computes the loss per microbatch, next to its backward)."""
  w = batch["loss_mask"].astype(jnp.float32)
  denom = jnp.maximum(jnp.sum(w), 1e-8)
  total, sums = model.pipelined_loss(
      batch["tokens"], batch.get("positions"), batch.get("segment_ids"),
      lambda logits, ex: lm_loss_sums(logits, ex, z_loss),
      {"targets": batch["targets"], "loss_mask": batch["loss_mask"]})
  metrics = {"cross_entropy": sums["ce"] / denom,
             "z_loss": z_loss * sums["zl"] / denom,
             "accuracy": sums["correct"] / denom, "weight": jnp.sum(w)}
  return total / denom, metrics


def make_lm_loss_fn(graphdef: nnx.GraphDef, z_loss: float = 0.0,
                    moe_losses: bool = True, per_row: bool = False
                    ) -> LossFn:
  """A pure `loss_fn(params, batch, rng)` for next-token LM training.

  With a mixture-of-experts model the loss adds its weighted aux losses
  unless `moe_losses` is False (evals: the loss is then the cross-entropy
  and z-loss alone, so perplexity = exp(loss)); their values are logged
  either way. A dense model whose `pipeline_schedule` is "1f1b" computes
  it through `Transformer.pipelined_loss` (the same loss; see
  pipeline.py). per_row: see `lm_loss`; a 1F1B model then runs its forward
  with the GPipe schedule instead (1F1B sums the loss per microbatch, and an
  evaluation, the only per-row user, needs no backward to interleave)."""

  def loss_fn(params, batch, rng):
    del rng  # the decoder has no dropout
    model = nnx.merge(graphdef, params)
    cfg = getattr(model, "cfg", None)
    if (getattr(cfg, "pipeline_schedule", "gpipe") == "1f1b"
        and not getattr(cfg, "num_experts", 0)):
      if not per_row:
        return _pipelined_lm_loss(model, batch, z_loss)
      # A static attribute of this trace's own module copy: the forward
      # reads the schedule from it.
      model.cfg = dataclasses.replace(cfg, pipeline_schedule="gpipe")
    logits, aux = model.logits_and_aux(batch["tokens"], batch.get("positions"),
                                       batch.get("segment_ids"))
    loss, metrics = lm_loss(logits, batch["targets"], batch["loss_mask"],
                            z_loss, per_row)
    return add_moe_losses(loss, metrics, aux, model.cfg, moe_losses)

  return loss_fn
