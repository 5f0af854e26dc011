"""The generic train step: gradient accumulation, fp16 loss scaling, and a
single compilation across steps.

The update checks use SGD, whose update is linear in the gradient: Adam's
first step is ~lr * sign(g) and would hide a wrongly scaled gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lifejax import sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import transformer
from lifejax.train import state as state_lib
from lifejax.train import step as step_lib

Z_LOSS = 1e-3


def plain_state(params, optimizer, loss_scale: float | None = None) -> dict:
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": optimizer.init(params), "rng": jax.random.PRNGKey(0)}
  if loss_scale is not None:
    state["loss_scale"] = {"scale": jnp.float32(loss_scale),
                           "good_steps": jnp.zeros((), jnp.int32)}
  return state


@pytest.fixture(scope="module")
def reference(tiny_lm, lm_batch):
  """Full-batch loss and gradient straight from jax.grad (no train step)."""
  loss_fn = make_lm_loss_fn(tiny_lm.graphdef, z_loss=Z_LOSS)
  # Microbatch i of the step holds rows i, i+4 (strided split).
  micro = [jax.tree.map(lambda x, i=i: x[i::4], lm_batch) for i in range(4)]

  @jax.jit
  def run(params):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(p, lm_batch, None), has_aux=True)(params)
    # What a mean of per-microbatch means would report instead.
    mean_of_means = sum(loss_fn(params, mb, None)[0] for mb in micro) / 4
    return loss, metrics, grads, mean_of_means

  return run(tiny_lm.params)


def _assert_update(new, old, want_delta, rel: float = 1e-4):
  """new - old == want_delta, to `rel` of the delta's scale plus the f32
  round-off of storing old + delta (params are ~1e4x larger than some
  gradients, e.g. wq's at init)."""
  def one(n, o, d):
    n, o, d = (np.asarray(x, np.float64) for x in (n, o, d))
    tol = rel * np.abs(d).max() + 4 * np.finfo(np.float32).eps * np.abs(o).max()
    np.testing.assert_allclose(n - o, d, rtol=0, atol=tol)
  jax.tree.map(one, new, old, want_delta)


def test_accumulation_equals_full_batch(tiny_lm, lm_batch, reference):
  ref_loss, ref_metrics, ref_grads, mean_of_means = reference
  # The data really exercises per-token weighting across microbatches: a
  # mean of microbatch means is 100x outside the loss tolerance used below.
  assert abs(float(mean_of_means) - float(ref_loss)) > 100 * 1e-6 * float(
      ref_loss)

  loss_fn = make_lm_loss_fn(tiny_lm.graphdef, z_loss=Z_LOSS)
  sgd = optax.sgd(1.0)
  state = plain_state(tiny_lm.params, sgd)
  steps = {n: step_lib.build_train_step(loss_fn, sgd, num_microbatches=n)
           for n in (1, 4)}
  # One program for both: compiling is what costs here.
  out = jax.jit(lambda s, b: {n: f(s, b) for n, f in steps.items()})(
      state, lm_batch)

  for n, (new_state, metrics) in out.items():
    # One SGD step at lr 1 moves the params by exactly -grad.
    _assert_update(new_state["params"], tiny_lm.params,
                   jax.tree.map(jnp.negative, ref_grads))
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-6)
    for k in ("cross_entropy", "z_loss", "accuracy", "weight"):
      np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-6,
                                 err_msg=f"{k} with {n} microbatches")
    np.testing.assert_allclose(metrics["grad_norm"],
                               optax.global_norm(ref_grads), rtol=1e-5)
    assert int(new_state["step"]) == 1
  assert float(out[4][1]["z_loss"]) > 0


def test_microbatch_count_must_divide_batch(tiny_lm, lm_batch):
  step = step_lib.build_train_step(make_lm_loss_fn(tiny_lm.graphdef),
                                   optax.sgd(1.0), num_microbatches=3)
  with pytest.raises(ValueError, match="batch size 8 .* num_microbatches=3"):
    jax.eval_shape(step, plain_state(tiny_lm.params, optax.sgd(1.0)), lm_batch)


# -- fp16 dynamic loss scaling, and one compilation ----------------------------


@pytest.fixture(scope="module")
def scaled_run(tiny_lm, lm_batch, devices):
  """Four steps through the jitted, donated, mesh-placed step with a loss
  that overflows when batch["poison"] is set: finite, overflow, finite,
  finite. Returns host copies of every state and the metrics."""
  traces = []
  base = make_lm_loss_fn(tiny_lm.graphdef, z_loss=Z_LOSS)

  def poisoned(params, batch, rng):
    traces.append(1)  # a Python side effect: runs once per trace
    loss, metrics = base(params, batch, rng)
    bad = jnp.max(batch["poison"]) > 0
    return loss * jnp.where(bad, jnp.inf, 1.0), metrics

  sgd = optax.sgd(0.1)
  cfg = state_lib.LossScaleConfig(initial_scale=2.0 ** 10, growth_interval=2)
  mesh = sharding.make_mesh(sharding.MeshConfig(), devices[:1])
  specs = jax.tree.map(lambda _: P(), tiny_lm.params)
  state, shardings = state_lib.create_train_state(
      lambda: tiny_lm.params, sgd, specs, mesh, seed=0, loss_scale=cfg)
  batches = [dict(lm_batch, poison=np.full((8,), p, np.float32))
             for p in (0, 1, 0, 0)]
  batch_sh = sharding.batch_shardings(batches[0], mesh, sharding.DEFAULT_RULES)
  train_step = step_lib.jit_train_step(
      step_lib.build_train_step(poisoned, sgd, loss_scale=cfg), shardings,
      batch_sh, mesh, sharding.DEFAULT_RULES)
  states, metrics = [jax.device_get(state)], []
  for batch in batches:
    state, m = train_step(state, sharding.put(batch, batch_sh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return {"states": states, "metrics": metrics, "traces": len(traces),
          "cache_size": train_step.jitted._cache_size()}


def test_step_compiles_once(scaled_run):
  assert scaled_run["traces"] == 1
  assert scaled_run["cache_size"] == 1


def test_loss_scale_unscales_gradients(scaled_run, reference):
  s0, s1 = scaled_run["states"][:2]
  assert float(s0["loss_scale"]["scale"]) == 2.0 ** 10
  assert float(scaled_run["metrics"][0]["skipped"]) == 0.0
  _assert_update(s1["params"], s0["params"],
                 jax.tree.map(lambda g: -0.1 * g, reference[2]))


def test_overflow_skips_update_and_halves_scale(scaled_run):
  states, metrics = scaled_run["states"], scaled_run["metrics"]
  before, after = states[1], states[2]
  assert float(metrics[1]["skipped"]) == 1.0
  assert not np.isfinite(float(metrics[1]["loss"]))
  jax.tree.map(np.testing.assert_array_equal, after["params"],
               before["params"])
  jax.tree.map(np.testing.assert_array_equal, after["opt_state"],
               before["opt_state"])
  assert float(after["loss_scale"]["scale"]) == 2.0 ** 9
  assert int(after["loss_scale"]["good_steps"]) == 0
  assert int(after["step"]) == 2  # the step counter still advances


def test_finite_steps_update_and_grow_scale(scaled_run):
  states, metrics = scaled_run["states"], scaled_run["metrics"]
  scales = [float(s["loss_scale"]["scale"]) for s in states]
  good = [int(s["loss_scale"]["good_steps"]) for s in states]
  # finite, overflow, finite, finite with growth_interval=2:
  assert scales == [2.0 ** 10, 2.0 ** 10, 2.0 ** 9, 2.0 ** 9, 2.0 ** 10]
  assert good == [0, 1, 0, 1, 0]
  assert [float(m["skipped"]) for m in metrics] == [0.0, 1.0, 0.0, 0.0]
  for i in (0, 2, 3):  # every finite step moves every parameter
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(),
                         states[i + 1]["params"], states[i]["params"])
    assert min(jax.tree.leaves(moved)) > 0, i


def test_float16_compute_overflow_is_skipped(tiny_lm, lm_batch):
  """Real fp16 overflow: a huge scale overflows float16 activations' grads;
  a modest scale trains. Same compiled step, only the state differs."""
  cfg16 = dataclasses.replace(tiny_lm.cfg, compute_dtype="float16")
  graphdef16, _ = nnx.split(transformer.abstract_model(cfg16), nnx.Param)
  sgd = optax.sgd(0.1)
  step = jax.jit(step_lib.build_train_step(
      make_lm_loss_fn(graphdef16), sgd,
      loss_scale=state_lib.LossScaleConfig(growth_interval=100)))

  huge, h_metrics = step(plain_state(tiny_lm.params, sgd, 2.0 ** 40), lm_batch)
  assert float(h_metrics["skipped"]) == 1.0
  assert np.isfinite(float(h_metrics["loss"]))  # the forward is fine
  assert float(huge["loss_scale"]["scale"]) == 2.0 ** 39
  jax.tree.map(np.testing.assert_array_equal, huge["params"], tiny_lm.params)

  fine, f_metrics = step(plain_state(tiny_lm.params, sgd, 2.0 ** 8), lm_batch)
  assert float(f_metrics["skipped"]) == 0.0
  assert float(fine["loss_scale"]["scale"]) == 2.0 ** 8
  assert int(fine["loss_scale"]["good_steps"]) == 1
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                       fine["params"], tiny_lm.params)
  assert min(jax.tree.leaves(moved)) > 0
  np.testing.assert_allclose(f_metrics["loss"], h_metrics["loss"])
