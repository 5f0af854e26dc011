"""Logit knowledge distillation: a student LM matches a frozen teacher's
next-token distributions (Hinton et al., 2015), one registered loss.

At every position t with loss weight w_t, with p = softmax(teacher / T) and
q = softmax(student / T) the soft distributions at temperature T:

  "forward"  KL(p || q) = sum_v p_v (log p_v - log q_v)   (classic KD:
             mass-covering, the student spreads over every teacher mode)
  "reverse"  KL(q || p) = sum_v q_v (log q_v - log p_v)   (mode-seeking; on
             the student's own samples this is on-policy distillation,
             Agarwal et al., 2024 "GKD"; Gu et al., 2024 "MiniLLM")

  kd   = T^2 * sum_t w_t KL_t / sum_t w_t
  ce   = sum_t w_t (-log softmax(student)[target_t]) / sum_t w_t   (T = 1)
  loss = alpha * ce + (1 - alpha) * kd

The T^2 factor keeps the soft-target gradient's scale independent of T
(the gradient of KL at temperature T carries a 1/T per softmax; Hinton et
al., section 2). alpha = 1 is plain next-token training (the teacher is
then only read for metrics, or not run at all with teacher_metrics=False);
alpha = 0 is pure distillation.

The teacher runs inside the loss on the same batch (its params are closed
over: jit passes them as arguments, not embedded constants; no gradient
reaches them). Its logits are never stored: a (B, T, V) f32 tensor per
batch is cheaper to recompute than to keep.

Batch: an LM batch (tokens, targets, loss_mask, positions, segment_ids).
metrics["weight"] = sum(loss_mask), so microbatches combine into the
full-batch per-token mean; the other metrics are per-token means:
cross_entropy, accuracy, and with the teacher kl (KL at T, without T^2),
teacher_cross_entropy (the teacher's own CE on the targets) and agreement
(argmax of student == argmax of teacher).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax import checks
from lifejax.losses import common
from lifejax.losses.lm import LossFn, token_cross_entropy
from lifejax.losses.registry import register_loss

F32 = jnp.float32
DIVERGENCES = ("forward", "reverse")


def check_options(divergence: str, temperature: float, alpha: float,
                  prefix: str = "") -> None:
  """ValueError naming the option (`prefix` + name) for a bad value."""
  checks.choice(f"{prefix}divergence", divergence, DIVERGENCES)
  if not temperature > 0:
    raise ValueError(f"{prefix}temperature={temperature!r}: must be > 0")
  checks.in_range(f"{prefix}alpha", alpha, 0.0, 1.0)


def token_divergence(student_BxTxV: jax.Array, teacher_BxTxV: jax.Array,
                     divergence: str = "forward", temperature: float = 1.0
                     ) -> jax.Array:
  """Per-token KL between the soft distributions at `temperature`, (B, T)
  f32: KL(teacher || student) ("forward") or KL(student || teacher)
  ("reverse"). 0 * log 0 is taken as 0, so -inf logits are allowed."""
  log_q = jax.nn.log_softmax(student_BxTxV.astype(F32) / temperature, -1)
  log_p = jax.nn.log_softmax(teacher_BxTxV.astype(F32) / temperature, -1)
  if divergence == "forward":
    src, log_src, log_dst = jnp.exp(log_p), log_p, log_q
  elif divergence == "reverse":
    src, log_src, log_dst = jnp.exp(log_q), log_q, log_p
  else:
    raise ValueError(f"divergence={divergence!r}: expected one of "
                     f"{DIVERGENCES}")
  terms = jnp.where(src > 0, src * (log_src - log_dst), 0.0)
  return jnp.sum(terms, axis=-1)


def distill_loss(student_BxTxV: jax.Array, teacher_BxTxV: jax.Array | None,
                 targets_BxT: jax.Array, loss_mask_BxT: jax.Array, *,
                 divergence: str = "forward", temperature: float = 1.0,
                 alpha: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of the module docstring from logits. teacher None is
  only allowed with alpha = 1 (plain cross-entropy)."""
  if teacher_BxTxV is None and alpha < 1:
    raise ValueError(f"alpha={alpha} < 1 needs the teacher's logits")
  w = loss_mask_BxT.astype(F32)
  nll, _ = token_cross_entropy(student_BxTxV, targets_BxT)
  ce = common.masked_mean(nll, w)
  student_top = jnp.argmax(student_BxTxV, axis=-1)
  metrics = {"cross_entropy": ce,
             "accuracy": common.masked_mean(
                 (student_top == targets_BxT).astype(F32), w),
             "weight": jnp.sum(w)}
  loss = ce
  if teacher_BxTxV is not None:
    teacher = jax.lax.stop_gradient(teacher_BxTxV)
    kl = common.masked_mean(
        token_divergence(student_BxTxV, teacher, divergence, temperature), w)
    t_nll, _ = token_cross_entropy(teacher, targets_BxT)
    metrics.update(
        kl=kl, teacher_cross_entropy=common.masked_mean(t_nll, w),
        agreement=common.masked_mean(
            (student_top == jnp.argmax(teacher, axis=-1)).astype(F32), w))
    kd = temperature ** 2 * kl
    if alpha == 0:
      loss = kd
    elif alpha < 1:
      loss = alpha * ce + (1.0 - alpha) * kd
  return loss, metrics


@register_loss("distill", kind="distill")
def make_distill_loss_fn(graphdef: nnx.GraphDef,
                         teacher_graphdef: nnx.GraphDef | None = None,
                         teacher_params: Any = None, *,
                         divergence: str = "forward",
                         temperature: float = 1.0, alpha: float = 0.0,
                         teacher_metrics: bool = True) -> LossFn:
  """`loss_fn(params, batch, rng)` of the student `graphdef` distilled from
  the frozen teacher (`teacher_graphdef`, `teacher_params`; the stage
  supplies both). teacher_metrics=False with alpha = 1 skips the teacher's
  forward pass (plain next-token training, no teacher metrics)."""
  check_options(divergence, temperature, alpha)
  if (teacher_graphdef is None) != (teacher_params is None):
    raise ValueError("teacher_graphdef and teacher_params go together")
  use_teacher = alpha < 1 or teacher_metrics
  if use_teacher and teacher_params is None:
    raise ValueError(f"the distill loss (alpha={alpha}, teacher_metrics="
                     f"{teacher_metrics}) needs teacher_graphdef and "
                     "teacher_params")

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    student = common.model_forward(graphdef, params, batch)
    teacher = (common.model_forward(teacher_graphdef, teacher_params, batch)
               if use_teacher else None)
    return distill_loss(student, teacher, batch["targets"],
                        batch["loss_mask"], divergence=divergence,
                        temperature=temperature, alpha=alpha)

  return loss_fn
