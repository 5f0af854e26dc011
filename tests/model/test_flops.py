"""The model-FLOPs formula against two brute counts of the train step."""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import flops, transformer
from lifejax.model.config import TransformerConfig
from lifejax.train.optim import OptimizerConfig
from lifejax.train.trainer import plan_training

# Unrolled layers: XLA's cost analysis counts a while loop's body once, not
# once per trip, so a scanned stack would be undercounted.
CFG = TransformerConfig(vocab_size=512, d_model=256, num_layers=2,
                        num_heads=4, num_kv_heads=2, mlp_dim=1024,
                        attention_impl="einsum", matmul_impl="xla",
                        fuse_projections="off", layer_loop="unroll")
B, T = 4, 128
KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def _batch_sds():
  return {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "loss_mask"
                                  else jnp.int32) for k in KEYS}


@pytest.mark.parametrize("layer_loop", ["unroll", "scan"])
def test_formula_equals_the_dots_autodiff_runs(layer_loop):
  """Every matmul of loss + gradient, counted from the jaxpr: exactly
  6 * N_mm + 12 * L * T * H * E per token (attention unmasked: the einsum
  path computes every (query, key) score, so causal=False)."""
  cfg = dataclasses.replace(CFG, layer_loop=layer_loop)
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  loss_fn = make_lm_loss_fn(graphdef)
  jaxpr = jax.make_jaxpr(jax.grad(lambda p, b: loss_fn(p, b, None)[0]))(
      nnx.to_pure_dict(abstract), _batch_sds())
  assert flops.jaxpr_matmul_flops(jaxpr) == flops.train_flops_per_token(
      cfg, T, causal=False) * B * T


def _grad_jaxpr(cfg):
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  loss_fn = make_lm_loss_fn(graphdef)
  return jax.make_jaxpr(jax.grad(lambda p, b: loss_fn(p, b, None)[0]))(
      nnx.to_pure_dict(abstract), _batch_sds())


@pytest.mark.parametrize("experts,k", [(4, 1), (4, 2), (8, 2)])
def test_moe_formula_counts_active_experts_only(experts, k):
  """A dropless mixture of experts (grouped matmuls, `ragged_dot`): the
  matmuls of loss + gradient are the formula with the router and k of the
  E experts per token, plus the gate-weighted sum of a token's k expert
  outputs (a (k,) x (k, D) dot per token: 2kD forward, twice that
  backward), which is not a weight matmul and so not model FLOPs. Counting
  all E experts would be off by (E - k) x 18 L D F per token."""
  cfg = dataclasses.replace(CFG, layer_loop="scan", num_experts=experts,
                            experts_per_token=k, mlp_dim=256)
  count = flops.jaxpr_matmul_flops(_grad_jaxpr(cfg))
  gates = 6 * cfg.num_layers * k * cfg.d_model * B * T
  assert count == flops.train_flops_per_token(cfg, T, causal=False) * B * T \
      + gates
  dense = dataclasses.replace(cfg, num_experts=0, mlp_dim=k * 256)
  router = 6 * cfg.num_layers * cfg.d_model * experts
  assert (flops.train_flops_per_token(cfg, T)
          == flops.train_flops_per_token(dense, T) + router)


def test_remat_recompute_is_in_the_gradient_jaxpr():
  """Full remat reruns each layer's forward in the backward: the count
  grows by the layers' forward matmuls (2 per weight, attention's 4 T H E
  per token and layer) except the MLP's down projection, whose output
  (the layer's output) is the next checkpoint's saved input and so is
  never needed again. The model-FLOPs formula leaves recompute out by
  design."""
  base = flops.jaxpr_matmul_flops(_grad_jaxpr(CFG))
  full = flops.jaxpr_matmul_flops(_grad_jaxpr(
      dataclasses.replace(CFG, remat_policy="full", layer_loop="scan")))
  layers = CFG.num_layers * (CFG.layer_matmul_params()
                             - CFG.d_model * CFG.mlp_dim)
  attn = 4 * CFG.num_layers * T * CFG.num_heads * CFG.resolved_head_dim
  assert full - base == (2 * layers + attn) * B * T


def test_formula_against_xla_cost_analysis():
  """XLA's own count for the whole lowered train step (loss, gradient,
  clipping, AdamW, the guard) is the matmuls plus elementwise work; the
  latter is a few percent at this width, so 0 <= excess < 5%."""
  mesh_cfg = sharding.MeshConfig(1, 1, 1)
  mesh = sharding.make_mesh(mesh_cfg)
  p = plan_training(model_cfg=CFG, make_loss=make_lm_loss_fn,
                    optimizer_cfg=OptimizerConfig(), mesh=mesh,
                    rules=mesh_cfg.rules, example_batch=_batch_sds())
  with_sh = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
  with jax.set_mesh(mesh):
    lowered = p.train_step.jitted.lower(
        jax.tree.map(with_sh, p.abstract_state, p.state_shardings),
        jax.tree.map(with_sh, _batch_sds(), p.batch_shardings))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  model = flops.train_flops_per_token(CFG, T, causal=False) * B * T
  assert 1.0 <= cost["flops"] / model < 1.05, cost["flops"] / model


def test_causal_mask_halves_attention_only():
  full = flops.train_flops_per_token(CFG, T, causal=False)
  causal = flops.train_flops_per_token(CFG, T)
  attn = 12 * CFG.num_layers * T * CFG.num_heads * CFG.resolved_head_dim
  assert full - causal == attn / 2
  assert flops.mfu(1000.0, causal, 1000.0 * causal) == 1.0
