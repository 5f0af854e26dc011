"""One generic builder: pure loss_fn -> jitted train_step(state, batch).

`loss_fn(params, batch, rng) -> (loss, metrics)` returns the weighted mean
loss of its batch and `metrics["weight"]`, the sum of its loss weights (token
count for LM losses, pair count for preference losses; 1 if absent). The step
combines microbatches as sum(loss_i * w_i) / sum(w_i), so accumulated
gradients and reported metrics equal those of the full batch. A step whose
loss, gradients or new params are not all finite is skipped (the state
keeps its params and optimizer state; metrics["skipped"] = 1); the loop
counts skips and halts after too many in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lifejax import sharding
from lifejax.losses.lm import ROW_PREFIX, LossFn
from lifejax.train.state import LossScaleConfig, TrainState

Batch = dict[str, Any]


def loss_params(state: TrainState, params: Any = None) -> Any:
  """What a loss_fn receives: the params, or, when the state holds frozen
  params (adapters over a frozen base), {"trainable": ..., "frozen": ...}."""
  params = state["params"] if params is None else params
  if "frozen" in state:
    return {"trainable": params, "frozen": state["frozen"]}
  return params
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def _split_microbatches(batch: Batch, num: int) -> Batch:
  """(B, ...) -> (num, B/num, ...), microbatch i = rows i, i+num, ...

  Strided rows keep every microbatch spread over all data-parallel devices
  (a contiguous split would put microbatch i on a subset of them).
  """
  def one(x):
    b = x.shape[0]
    if b % num:
      raise ValueError(f"batch size {b} is not divisible by "
                       f"num_microbatches={num}")
    return jnp.swapaxes(x.reshape(b // num, num, *x.shape[1:]), 0, 1)
  return jax.tree.map(one, batch)


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def build_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    num_microbatches: int = 1,
    loss_scale: LossScaleConfig | None = None,
    schedule: optax.Schedule | None = None,
) -> StepFn:
  """Returns the pure (unjitted) `train_step(state, batch)`."""

  def weighted_grads(state, params, batch, rng, scale):
    def scaled_loss(p):
      loss, metrics = loss_fn(loss_params(state, p), batch, rng)
      w = jax.lax.stop_gradient(metrics.get("weight", jnp.float32(1.0)))
      return loss * w * scale, (loss, w, metrics)
    grads, (loss, w, metrics) = jax.grad(scaled_loss, has_aux=True)(params)
    return grads, loss, w, metrics

  def train_step(state: TrainState, batch: Batch):
    params = state["params"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    scale = (state["loss_scale"]["scale"] if loss_scale is not None
             else jnp.float32(1.0))

    if num_microbatches == 1:
      grads, loss, w, metrics = weighted_grads(state, params, batch, rng,
                                               scale)
      metrics = {k: v * w for k, v in metrics.items() if k != "weight"}
    else:
      micro = _split_microbatches(batch, num_microbatches)

      def body(carry, xs):
        g_acc, l_acc, w_acc, m_acc = carry
        i, mb = xs
        g, l, w, m = weighted_grads(state, params, mb,
                                    jax.random.fold_in(rng, i), scale)
        m = {k: v * w for k, v in m.items() if k != "weight"}
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + l * w, w_acc + w,
                jax.tree.map(jnp.add, m_acc, m)), None

      first = jax.tree.map(lambda x: x[0], micro)
      m_shape = jax.eval_shape(
          lambda: weighted_grads(state, params, first, rng, scale)[3])
      zeros_m = {k: jnp.zeros((), jnp.float32) for k in m_shape
                 if k != "weight"}
      zeros_g = jax.tree.map(jnp.zeros_like, params)
      (grads, loss_w, w, metrics), _ = jax.lax.scan(
          body, (zeros_g, jnp.float32(0.0), jnp.float32(0.0), zeros_m),
          (jnp.arange(num_microbatches), micro))
      loss = loss_w / jnp.maximum(w, 1e-8)

    denom = jnp.maximum(w, 1e-8)
    grads = jax.tree.map(lambda g: g / (denom * scale), grads)
    metrics = {k: v / denom for k, v in metrics.items()}
    metrics["loss"] = loss
    metrics["weight"] = w
    # The scope names the update's ops in the compiled HLO's metadata (so a
    # profile can attribute them: tools/profile_train_step.py); it changes
    # no computation.
    with jax.named_scope("optimizer"):
      metrics["grad_norm"] = optax.global_norm(grads)
      updates, new_opt_state = optimizer.update(grads, state["opt_state"],
                                                params)
      new_params = optax.apply_updates(params, updates)
    new_state = dict(state)

    # The non-finite guard: a step whose loss, gradients or updated params
    # are not all finite changes neither params nor optimizer state. The
    # gradients' finiteness is read off grad_norm, a reduction the step makes
    # anyway, and the choice is a lax.cond, not an elementwise select: both
    # leave the update's fusions as they were, so a finite step computes bit
    # for bit what it did without the guard (the golden tests hold it to
    # that; a select fused into the update changed a reward run's last bits).
    finite = (jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
              & _all_finite(new_params))
    new_params, new_opt_state = jax.lax.cond(
        finite, lambda: (new_params, new_opt_state),
        lambda: (params, state["opt_state"]))
    metrics["skipped"] = (~finite).astype(jnp.float32)

    if loss_scale is not None:
      good = state["loss_scale"]["good_steps"]
      grow = finite & (good + 1 >= loss_scale.growth_interval)
      new_scale = jnp.where(
          finite, jnp.where(grow, scale * 2.0, scale),
          jnp.maximum(scale / 2.0, loss_scale.min_scale))
      new_state["loss_scale"] = {
          "scale": new_scale,
          "good_steps": jnp.where(finite & ~grow, good + 1, 0).astype(
              jnp.int32)}
      metrics["loss_scale"] = scale

    if schedule is not None:
      metrics["learning_rate"] = schedule(state["step"])
    new_state["params"] = new_params
    new_state["opt_state"] = new_opt_state
    new_state["step"] = state["step"] + 1
    return new_state, metrics

  return train_step


def jit_train_step(step_fn: StepFn, state_shardings: TrainState,
                   batch_shardings: Any, mesh: Mesh,
                   rules: sharding.Rules) -> StepFn:
  """jit once with explicit shardings; the state is donated."""

  def traced(state, batch):
    with sharding.activation_sharding(mesh, rules):
      return step_fn(state, batch)

  jitted = jax.jit(traced, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))
  call = sharding.compiled_together(jitted)

  def run(state, batch):
    with jax.set_mesh(mesh):
      return call(state, batch)

  run.jitted = jitted  # for compile-count checks and AOT lowering
  return run


def build_eval_step(loss_fn: LossFn, param_shardings: Any,
                    batch_shardings: Any, mesh: Mesh,
                    rules: sharding.Rules) -> Callable[..., dict[str, jax.Array]]:
  """jitted `eval_step(params, batch) -> metrics` (weighted sums; the caller
  divides by the summed weight over all eval batches). `params` is what the
  loss_fn takes (see `loss_params`), placed like `param_shardings`.
  Per-row metrics (names under losses.lm.ROW_PREFIX) pass through as they
  are."""

  def traced(params, batch):
    with sharding.activation_sharding(mesh, rules):
      loss, metrics = loss_fn(params, batch, jax.random.PRNGKey(0))
    w = metrics.get("weight", jnp.float32(1.0))
    out = {k: v if k.startswith(ROW_PREFIX) else v * w
           for k, v in metrics.items() if k != "weight"}
    out["loss"] = loss * w
    out["weight"] = w
    return out

  jitted = jax.jit(traced, in_shardings=(param_shardings, batch_shardings))
  call = sharding.compiled_together(jitted)

  def run(params, batch):
    with jax.set_mesh(mesh):
      return call(params, batch)

  run.jitted = jitted
  return run
