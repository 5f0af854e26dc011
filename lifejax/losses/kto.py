"""KTO (Ethayarajh et al., 2024): preference optimization on unpaired
completions, each labelled desirable or undesirable.

With r = log pi(y | x) - log ref(y | x) (sequence log-probs summed over
the completion's tokens) and z0 a batch estimate of KL(pi || ref):

  desirable:    L = lambda_D * (1 - sigmoid(beta * (r - z0)))
  undesirable:  L = lambda_U * (1 - sigmoid(beta * (z0 - r)))

the loss is the mean of L over the batch's completions (TRL's KTOTrainer:
`losses.nanmean()` of the weighted losses). z0 follows TRL: the mean over
the batch of log pi - log ref on *mismatched* pairs (prompt x_i with the
completion of another prompt), clamped at >= 0 and held constant (no
gradient flows through it). Each batch row carries its own mismatched row
("kl"), so one forward over 2B rows gives both; with gradient accumulation
z0 is estimated per microbatch. The paper suggests weights with
lambda_D * n_D / (lambda_U * n_U) in [1, 4/3].

Batch: {"completion": LM batch + "desirable" (B,) f32 (1 desirable, 0
undesirable), "kl": LM batch}, (B, T) rows with loss_mask on completion
tokens (`lifejax.data.unpaired`); each half carries its reference
log-probs as "ref_logp" (B,) f32 (precomputed with `make_reference_fn`)
unless the factory gets `ref_params`. metrics["weight"] = number of
completions (padding rows, with an empty loss_mask, excluded); "kl" is
z0; desirable_reward / undesirable_reward are the means of beta * r over
each label, reward_margin their difference, desirable_fraction the share
of desirable rows, logp the mean sequence log-prob.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax.losses import common
from lifejax.losses.lm import LossFn
from lifejax.losses.registry import register_loss

F32 = jnp.float32
HALVES = ("completion", "kl")
_LM_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


def kl_estimate(kl_logratio_B: jax.Array, valid_B: jax.Array) -> jax.Array:
  """z0: max(mean of log pi - log ref over the valid mismatched rows, 0),
  a constant for the gradient. Scalar f32."""
  z0 = jnp.maximum(common.masked_mean(kl_logratio_B, valid_B), 0.0)
  return jax.lax.stop_gradient(z0)


def kto_objective(logratio_B: jax.Array, desirable_B: jax.Array,
                  z0: jax.Array, *, beta: float, desirable_weight: float,
                  undesirable_weight: float
                  ) -> tuple[jax.Array, jax.Array]:
  """(losses (B,), implicit rewards beta * r (B,)); desirable_B is 1.0
  for desirable rows, 0.0 for undesirable ones."""
  r_B = logratio_B.astype(F32)
  desirable = desirable_B > 0.5
  loss_d_B = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r_B - z0)))
  loss_u_B = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - r_B)))
  return jnp.where(desirable, loss_d_B, loss_u_B), beta * r_B


def _concat(batch: dict[str, dict[str, jax.Array]]) -> dict[str, jax.Array]:
  """The completion rows then the mismatched rows, (2B, T) each."""
  return {k: jnp.concatenate([batch[h][k] for h in HALVES], axis=0)
          for k in _LM_KEYS if k in batch[HALVES[0]]}


def _logps(graphdef: nnx.GraphDef, params: Any,
           both: dict[str, jax.Array]) -> jax.Array:
  logits = common.model_forward(graphdef, params, both)
  return common.sequence_logprobs(logits, both["targets"],
                                  both["loss_mask"])[0]


def make_reference_fn(graphdef: nnx.GraphDef
                      ) -> Callable[[Any, dict[str, Any]],
                                    tuple[jax.Array, jax.Array]]:
  """`ref(params, batch) -> (completion_logp_B, kl_logp_B)`, f32: for
  precomputing each half's `ref_logp` once with the frozen reference."""

  def ref(params, batch):
    return common.split_pair(_logps(graphdef, params, _concat(batch)))

  return ref


def _nonempty(half: dict[str, jax.Array]) -> jax.Array:
  return jnp.any(half["loss_mask"] > 0, axis=-1).astype(F32)


@register_loss("kto", kind="unpaired")
def make_kto_loss_fn(graphdef: nnx.GraphDef, *, beta: float = 0.1,
                     desirable_weight: float = 1.0,
                     undesirable_weight: float = 1.0, ref_params: Any = None,
                     ref_graphdef: nnx.GraphDef | None = None) -> LossFn:
  """KTO with KL strength `beta` and label weights lambda_D / lambda_U
  (TRL's defaults). The reference comes from the batch's "ref_logp"
  entries, or from `ref_params` (run with `ref_graphdef`, default
  `graphdef`) inside the loss."""
  if beta <= 0:
    raise ValueError(f"beta must be > 0, got {beta}")
  if desirable_weight < 0 or undesirable_weight < 0:
    raise ValueError("desirable_weight and undesirable_weight must be >= 0, "
                     f"got {desirable_weight}, {undesirable_weight}")

  def reference(batch, both):
    if ref_params is not None:
      logp_2B = _logps(ref_graphdef or graphdef, ref_params, both)
      return common.split_pair(jax.lax.stop_gradient(logp_2B))
    for half in HALVES:
      if "ref_logp" not in batch[half]:
        raise KeyError(
            f'batch["{half}"] has no "ref_logp" (keys: '
            f"{sorted(batch[half])}); precompute it with "
            "kto.make_reference_fn or pass ref_params to the loss factory")
    return tuple(batch[h]["ref_logp"].astype(F32) for h in HALVES)

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    both = _concat(batch)
    logp_B, kl_logp_B = common.split_pair(_logps(graphdef, params, both))
    ref_B, kl_ref_B = reference(batch, both)
    valid_B = _nonempty(batch["completion"])
    z0 = kl_estimate(kl_logp_B - kl_ref_B,
                     valid_B * _nonempty(batch["kl"]))
    desirable_B = batch["completion"]["desirable"].astype(F32)
    losses_B, rewards_B = kto_objective(
        logp_B - ref_B, desirable_B, z0, beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight)
    d_B, u_B = valid_B * desirable_B, valid_B * (1.0 - desirable_B)
    r_d = common.masked_mean(rewards_B, d_B)
    r_u = common.masked_mean(rewards_B, u_B)
    metrics = {
        "kl": z0,
        "logp": common.masked_mean(logp_B, valid_B),
        "desirable_reward": r_d,
        "undesirable_reward": r_u,
        "reward_margin": r_d - r_u,
        "desirable_fraction": common.masked_mean(desirable_B, valid_B),
        "weight": jnp.sum(valid_B),
    }
    return common.masked_mean(losses_B, valid_B), metrics

  return loss_fn
