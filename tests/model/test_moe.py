"""Mixture of experts: routing, capacity and dropping, aux losses against a
float64 per-token loop; expert parallelism (all-to-all over the `expert`
mesh axis) against the single-device model; training with the aux losses."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import flops, moe, transformer
from lifejax.model.config import TransformerConfig

BASE = dict(vocab_size=64, d_model=16, num_layers=2, num_heads=2,
            num_kv_heads=1, mlp_dim=24, num_experts=4, experts_per_token=2)


def _cfg(**kw) -> TransformerConfig:
  return TransformerConfig(**{**BASE, **kw})


# -- the float64 reference -----------------------------------------------------


def _silu(x):
  return x / (1.0 + np.exp(-x))


def reference_moe(x_BxTxD, w_router, w_gate, w_up, w_down, k, capacity):
  """Per-token float64 loop: Mixtral routing; with `capacity`, each row's
  assignments are admitted in (choice rank, token) order, at most
  `capacity` per expert. Returns (out, aux dict)."""
  x = np.asarray(x_BxTxD, np.float64)
  wr, wg, wu, wd = (np.asarray(w, np.float64)
                    for w in (w_router, w_gate, w_up, w_down))
  b, t, d = x.shape
  nx = wr.shape[1]
  out = np.zeros_like(x)
  counts = np.zeros(nx)
  prob_sum = np.zeros(nx)
  z = 0.0
  dropped = 0
  for row in range(b):
    choices = []  # per token: [(expert, gate)] in rank order
    for tok in range(t):
      logits = x[row, tok] @ wr
      lse = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
      z += lse ** 2
      p = np.exp(logits - lse)
      prob_sum += p
      top = sorted(range(nx), key=lambda e: (-p[e], e))[:k]
      gates = p[top] / p[top].sum()
      choices.append(list(zip(top, gates)))
      for e in top:
        counts[e] += 1
    used = np.zeros(nx, int)
    for rank in range(k):
      for tok in range(t):
        e, g = choices[tok][rank]
        if capacity is not None and used[e] >= capacity:
          dropped += 1
          continue
        used[e] += 1
        h = _silu(x[row, tok] @ wg[e]) * (x[row, tok] @ wu[e])
        out[row, tok] += g * (h @ wd[e])
  n = b * t
  aux = {"moe_aux_loss": nx * np.sum(counts / n * prob_sum / n),
         "moe_z_loss": z / n, "moe_dropped_fraction": dropped / (n * k)}
  return out, aux


def _module(cfg: TransformerConfig, seed: int = 0) -> moe.MoE:
  with nnx.use_eager_sharding(False):
    m = moe.MoE(cfg, nnx.Rngs(params=seed))
  # Larger router weights than init, so routing is far from uniform and
  # capacity bites.
  m.w_router[...] = m.w_router[...] * 40.0
  return m


@pytest.mark.parametrize("factor", [None, 0.0, 0.5, 1.0, 1.25])
def test_moe_matches_float64_per_token_loop(factor):
  cfg = _cfg(expert_capacity_factor=factor)
  m = _module(cfg)
  x = jax.random.normal(jax.random.key(1), (3, 8, cfg.d_model), jnp.float32)
  out, aux = jax.jit(lambda x: m(x))(x)
  cap = None if not factor else math.ceil(factor * 8 * 2 / 4)
  assert cap is None or cap == cfg.expert_capacity(8)
  want, want_aux = reference_moe(x, m.w_router[...], m.w_gate[...],
                                 m.w_up[...], m.w_down[...], 2, cap)
  np.testing.assert_allclose(out, want, rtol=0, atol=2e-6)
  for key in moe.AUX_KEYS:
    np.testing.assert_allclose(aux[key], want_aux[key], rtol=2e-6,
                               err_msg=key)
  if factor in (0.5, 1.0):  # the test's routing does drop here
    assert want_aux["moe_dropped_fraction"] > 0
  if not factor:
    assert float(aux["moe_dropped_fraction"]) == 0.0


def test_capacity_formula_and_priority():
  cfg = _cfg(num_experts=4, experts_per_token=2, expert_capacity_factor=1.0)
  assert cfg.expert_capacity(10) == 5  # ceil(1.0 * 10 * 2 / 4)
  assert _cfg(expert_capacity_factor=0.1).expert_capacity(10) == 1
  assert _cfg(expert_capacity_factor=8.0).expert_capacity(10) == 10
  assert _cfg().expert_capacity(10) == 10  # dropless
  # A row of 3 tokens, capacity 1: every first choice is placed before any
  # second choice, so token 1's first choice (expert 0) takes expert 0's
  # slot and the second choices of tokens 0 and 2 (expert 0) are dropped.
  experts = jnp.array([[[1, 0], [0, 2], [3, 0]]], jnp.int32)
  slots, keep = moe.capacity_slots(experts, 4, 1)
  # rank 0: tok0->1 (kept), tok1->0 (kept), tok2->3 (kept);
  # rank 1: tok0->0 (full), tok1->2 (kept), tok2->0 (full).
  np.testing.assert_array_equal(keep, [[[True, False], [True, True],
                                        [True, False]]])
  np.testing.assert_array_equal(slots, [[[1, 4], [0, 2], [3, 4]]])


def test_dropped_tokens_pass_the_residual_through():
  # Capacity so small that a row of 8 tokens can place only 1 per expert:
  # a token whose both choices are dropped leaves the block's MLP at 0.
  cfg = _cfg(expert_capacity_factor=0.01)
  m = _module(cfg)
  x = jax.random.normal(jax.random.key(2), (2, 8, cfg.d_model), jnp.float32)
  out, aux = jax.jit(lambda x: m(x))(x)
  experts = moe.route(x.reshape(16, -1) @ m.w_router[...], 2)[1]
  _, keep = moe.capacity_slots(experts.reshape(2, 8, 2), 4, 1)
  none_kept = ~np.asarray(keep).any(-1)
  assert none_kept.any()
  np.testing.assert_array_equal(np.asarray(out)[none_kept], 0.0)
  assert float(aux["moe_dropped_fraction"]) == pytest.approx(
      1 - np.asarray(keep).mean())


def test_router_gates_are_mixtral_convention():
  logits = jnp.array([[2.0, 0.0, 1.0, -1.0]])
  probs, experts, gates = moe.route(logits, 2)
  p = np.exp([2.0, 0.0, 1.0, -1.0]) / np.exp([2.0, 0.0, 1.0, -1.0]).sum()
  np.testing.assert_allclose(probs[0], p, rtol=1e-6)
  np.testing.assert_array_equal(experts, [[0, 2]])
  np.testing.assert_allclose(gates[0], p[[0, 2]] / p[[0, 2]].sum(),
                             rtol=1e-6)


@pytest.mark.parametrize("kw, field", [
    (dict(num_experts=-1), "num_experts"),
    (dict(num_experts=4, experts_per_token=5), "experts_per_token"),
    (dict(num_experts=4, experts_per_token=0), "experts_per_token"),
    (dict(expert_capacity_factor=-1.0), "expert_capacity_factor"),
    (dict(moe_aux_loss_coef=-0.1), "moe_aux_loss_coef"),
    (dict(moe_z_loss_coef=float("nan")), "moe_z_loss_coef"),
])
def test_bad_moe_config_names_the_field(kw, field):
  with pytest.raises(ValueError, match=field):
    _cfg(**kw)


def test_param_and_flop_counts():
  dense = TransformerConfig(**{**BASE, "num_experts": 0})
  cfg = _cfg()
  model = transformer.abstract_model(cfg)
  stored = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert cfg.num_params() == stored
  d, f, layers = cfg.d_model, cfg.mlp_dim, cfg.num_layers
  # all 4 experts and the router are stored ...
  assert cfg.num_params() - dense.num_params() == layers * (
      3 * 3 * d * f + d * 4)
  # ... but a token multiplies by 2 experts and the router.
  assert flops.matmul_params(cfg) - flops.matmul_params(dense) == layers * (
      3 * d * f + d * 4)


# -- the model: aux through the forward, loss, training ------------------------


def test_dense_model_has_no_aux_and_same_logits(moe_batch, moe_host_params):
  cfg = TransformerConfig(**{**BASE, "num_experts": 0})
  graphdef, _ = nnx.split(transformer.abstract_model(cfg))
  params = moe_host_params(cfg)
  tokens = moe_batch()["tokens"]
  logits, aux = jax.jit(lambda p, t: nnx.merge(graphdef, p).logits_and_aux(
      t))(params, tokens)
  assert aux == {}
  np.testing.assert_array_equal(
      logits, jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens))


def _mlp_inputs(graphdef, params, batch) -> list[jax.Array]:
  """Each layer's normed MLP input (B, T, D), replaying the layer stack."""
  model = nnx.merge(graphdef, params)
  cfg = model.cfg
  inv_freq, kern = transformer.rope_inv_freq(cfg), transformer.kernels(cfg)
  x = jnp.take(params["embed"], batch["tokens"], axis=0)
  graph, state = nnx.split(model.layers)
  out = []
  for i in range(cfg.num_layers):
    block = nnx.merge(graph, jax.tree.map(lambda a, i=i: a[i], state))
    h = block.attn_norm(x, jnp.float32)
    mid = x + block.attn(h, batch["positions"], batch["segment_ids"],
                         inv_freq, kern)
    out.append(block.mlp_norm(mid, jnp.float32))
    x, _ = block(x, batch["positions"], batch["segment_ids"], inv_freq, kern)
  return out


def test_lm_loss_adds_weighted_aux_losses(moe_batch, moe_host_params):
  cfg = _cfg(expert_capacity_factor=1.0, moe_aux_loss_coef=0.01,
             moe_z_loss_coef=0.001)
  graphdef, _ = nnx.split(transformer.abstract_model(cfg))
  params = moe_host_params(cfg)
  batch = moe_batch()
  loss, metrics = jax.jit(make_lm_loss_fn(graphdef))(params, batch, None)
  want = (metrics["cross_entropy"] + 0.01 * metrics["moe_aux_loss"]
          + 0.001 * metrics["moe_z_loss"])
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(metrics["moe_dropped_fraction"]) > 0
  # The aux values are the means over layers of each block's own: the
  # float64 loop on each block's MLP input (a jitted replay of the stack).
  mlp_inputs = jax.jit(functools.partial(_mlp_inputs, graphdef))(
      params, batch)
  per_layer = [reference_moe(
      mlp_inputs[i], *(params["layers"]["mlp"][w][i] for w in (
          "w_router", "w_gate", "w_up", "w_down")), 2,
      cfg.expert_capacity(8))[1] for i in range(cfg.num_layers)]
  for key in moe.AUX_KEYS:
    np.testing.assert_allclose(
        metrics[key], np.mean([a[key] for a in per_layer]), rtol=1e-5,
        atol=1e-7, err_msg=key)


def test_mesh_config_expert_axis(devices):
  assert sharding.MeshConfig(fsdp=-1, expert=2).shape(8) == (1, 4, 1, 2)
  assert sharding.MeshConfig(fsdp=-1, expert=2).axis_names == (
      "data", "fsdp", "model", "expert")
  assert sharding.MeshConfig(fsdp=-1).axis_names == ("data", "fsdp", "model")
  with pytest.raises(ValueError, match="MeshConfig.expert"):
    sharding.MeshConfig(expert=0)


def test_layer_loop_and_remat_do_not_change_the_aux_values(moe_batch,
                                                          moe_host_params):
  batch = moe_batch()
  out = []
  for kw in (dict(layer_loop="scan"), dict(layer_loop="unroll"),
             dict(remat_policy="save_attn_mlp_out")):
    cfg = _cfg(expert_capacity_factor=1.0, **kw)
    graphdef, _ = nnx.split(transformer.abstract_model(cfg))
    out.append(jax.jit(make_lm_loss_fn(graphdef))(moe_host_params(cfg), batch,
                                                  None))
  for loss, metrics in out[1:]:
    np.testing.assert_allclose(loss, out[0][0], rtol=1e-6)
    for key in moe.AUX_KEYS:
      np.testing.assert_allclose(metrics[key], out[0][1][key], rtol=1e-6)


def test_lora_refuses_expert_kernels(moe_host_params):
  from lifejax.model import lora
  params = moe_host_params(_cfg())
  with pytest.raises(ValueError, match="LoraConfig.targets: 'w_up'"):
    lora.init_lora(params, lora.LoraConfig(targets=("wq", "w_up")),
                   jax.random.key(0))
  adapters = lora.init_lora(params, lora.LoraConfig(), jax.random.key(0))
  assert sorted(adapters["layers"]["attn"]) == ["wk", "wo", "wq", "wv"]


def test_memory_plan_refuses_moe():
  from lifejax.train import memory_plan
  with pytest.raises(ValueError, match="num_experts=4"):
    memory_plan.plan(_cfg(), (1, 1, 1), batch=8, seq=8)
