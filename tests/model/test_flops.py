"""The model-FLOPs formula against two brute counts of the train step."""

from __future__ import annotations

import dataclasses
import math

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


def _dot_flops(jaxpr) -> int:
  """2 * (output elements) * (contracted extent) over every dot_general,
  recursing into sub-jaxprs (a scan's body counted `length` times)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs[i] for i in contract)
    trips = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          total += trips * _dot_flops(sub)
  return total


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
  assert _dot_flops(jaxpr.jaxpr) == flops.train_flops_per_token(
      cfg, T, causal=False) * B * T


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
