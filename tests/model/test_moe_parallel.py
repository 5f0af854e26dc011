"""Expert parallelism: a mixture of experts with its experts split over
the `expert` mesh axis (tokens moved by all-to-all) computes the same loss,
aux values and gradients as the single-device model."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lifejax import sharding
from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import moe, transformer
from lifejax.model.config import TransformerConfig

CFG = dict(vocab_size=64, d_model=16, num_layers=1, num_heads=2,
           num_kv_heads=1, mlp_dim=24, num_experts=4, experts_per_token=2)


def _cfg(**kw) -> TransformerConfig:
  return TransformerConfig(**{**CFG, **kw})


def _loss_and_grads(cfg, params_host, batch, mesh):
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg))
  loss_fn = make_lm_loss_fn(graphdef)
  rules = sharding.DEFAULT_RULES
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, rules))
  params = sharding.put(params_host, sharding.named(mesh, specs))
  batch = sharding.put(batch, sharding.batch_shardings(batch, mesh, rules))

  def f(p, b):
    with sharding.activation_sharding(mesh, rules):
      (loss, metrics), grads = jax.value_and_grad(
          lambda p: loss_fn(p, b, None), has_aux=True)(p)
    return loss, metrics, grads

  with jax.set_mesh(mesh):
    out = jax.jit(f)(params, batch)
  return jax.device_get(out), params


_SINGLE: dict = {}  # factor -> the single-device (loss, metrics, grads)


def _single(cfg, params_host, batch, devices):
  key = cfg.expert_capacity_factor
  if key not in _SINGLE:
    _SINGLE[key] = _loss_and_grads(cfg, params_host, batch, sharding.make_mesh(
        sharding.MeshConfig(data=1, fsdp=1, model=1), devices[:1]))[0]
  return _SINGLE[key]


# Tolerances (f32): loss and aux values rtol 1e-6; every gradient within
# 1e-6 of its tensor's largest entry. The sharded programs sum the same
# products in another order (the all-to-all regroups the slots), so
# equality is to round-off, not bitwise.
@pytest.mark.parametrize("factor, mesh_kw", [
    # capacity mode, experts over 2 devices, their mlp dim over model
    (1.0, dict(fsdp=2, model=2, expert=2)),
    # dropless (the capacity path with C = T), 4 expert devices
    (None, dict(fsdp=2, expert=4)),
    # dropless without an expert axis: grouped matmuls, tokens over fsdp
    (None, dict(fsdp=8)),
])
def test_sharded_moe_equals_single_device(devices, factor, mesh_kw, moe_batch,
                                          moe_host_params):
  cfg = _cfg(expert_capacity_factor=factor, moe_aux_loss_coef=0.01,
             moe_z_loss_coef=0.001)
  params_host = moe_host_params(cfg)
  batch = moe_batch(vocab=CFG["vocab_size"], seed=1)
  single = _single(cfg, params_host, batch, devices)
  if factor:
    assert single[1]["moe_dropped_fraction"] > 0
  mesh = sharding.make_mesh(sharding.MeshConfig(**mesh_kw))
  (loss, metrics, grads), placed = _loss_and_grads(cfg, params_host, batch,
                                                   mesh)
  ep = mesh_kw.get("expert", 1)
  if ep > 1:  # experts split over the expert axis, the batch over it too
    w_up = placed["layers"]["mlp"]["w_up"]
    assert w_up.sharding.spec[1] == "expert", w_up.sharding.spec
    assert sharding.batch_spec(mesh, sharding.DEFAULT_RULES)[0] == (
        "data", "fsdp", "expert")
  np.testing.assert_allclose(loss, single[0], rtol=1e-6, atol=0)
  for key in moe.AUX_KEYS:
    np.testing.assert_allclose(metrics[key], single[1][key], rtol=1e-6,
                               atol=1e-7, err_msg=key)
  rel = jax.tree.map(lambda a, b: float(np.abs(a - b).max() / np.abs(b).max()),
                     grads, single[2])
  print(f"\n{mesh_kw} factor={factor}: |loss diff| "
        f"{abs(float(loss) - float(single[0])):.2e}, max relative grad diff "
        f"{max(jax.tree.leaves(rel)):.2e}")
  assert max(jax.tree.leaves(rel)) < 1e-6, rel


def test_expert_axis_must_divide_num_experts(devices, moe_batch,
                                            moe_host_params):
  cfg = _cfg(num_experts=2, experts_per_token=1, expert_capacity_factor=1.0)
  mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=-1, expert=4))
  with pytest.raises(ValueError, match="num_experts=2.*expert=4"):
    _loss_and_grads(cfg, moe_host_params(cfg),
                    moe_batch(vocab=CFG["vocab_size"], seed=1), mesh)
