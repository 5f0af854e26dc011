"""The memory planner against XLA's compiled memory analysis and JAX's own
residual accounting.

XLA reference: the real train step (`plan_training`) compiled for the 8
simulated CPU devices; the module is SPMD-partitioned, so its memory
analysis is per device. The planner's peak is compared with argument +
output - alias + temp bytes (what the step holds at once: the state and
batch passed in, plus its temporaries; outputs alias the donated state).
Compiles use `xla_backend_optimization_level=0`, which only changes LLVM's
code generation: buffer assignment (what memory_analysis reports) runs
before it, and the numbers match a default compile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lifejax.losses.lm import make_lm_loss_fn
from lifejax.model import kv_cache, transformer
from lifejax.model.config import REMAT_POLICIES, TransformerConfig
from lifejax.train import memory_plan

_TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tools", "plan_memory.py")
_spec = importlib.util.spec_from_file_location("plan_memory_tool", _TOOL)
plan_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_memory)

FAST = {"xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True}
BASE = dict(vocab_size=2048, d_model=128, mlp_dim=512, num_heads=4,
            num_kv_heads=2, num_layers=2, compute_dtype="float32",
            **plan_memory.XLA_PATH)
# Two regimes: FSDP with full remat (the layer backward peaks), and data x
# tensor parallelism without remat, with microbatches and bf16 compute (the
# loss and layer backward are close; kv heads replicate, 2 do not split 4
# ways; XLA:CPU keeps the activations in f32, the "cpu" plan says so).
CASES = {
    "fsdp_full": (dict(remat_policy="full"), (1, 8, 1), 16, 128, 1),
    "dp_tp_none_micro_bf16": (dict(remat_policy="none", num_heads=8,
                                   compute_dtype="bfloat16"), (2, 1, 4), 16,
                              128, 2),
}


@pytest.fixture(scope="module")
def compiled():
  """XLA's numbers per case, compiled once for all tests here."""
  out = {}
  for name, (over, mesh, batch, seq, micro) in CASES.items():
    cfg = TransformerConfig(**{**BASE, **over})
    out[name] = (cfg, plan_memory.xla_memory(cfg, mesh, batch, seq, micro,
                                             FAST))
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_peak_within_10_percent_of_xla(compiled, name):
  _, mesh, batch, seq, micro = CASES[name]
  cfg, xla = compiled[name]
  plan = memory_plan.plan(cfg, mesh, batch, seq, microbatches=micro,
                          backend="cpu")
  assert plan.peak == pytest.approx(xla["total"], rel=0.10), (
      plan.phases, xla)


@pytest.mark.parametrize("name", list(CASES))
def test_state_and_batch_equal_xla_arguments(compiled, name):
  _, mesh, batch, seq, micro = CASES[name]
  cfg, xla = compiled[name]
  plan = memory_plan.plan(cfg, mesh, batch, seq, microbatches=micro,
                          backend="cpu")
  # Besides params, Adam moments and the batch slice, the step takes a few
  # scalars (step, Adam counts, the RNG key).
  extra = xla["argument_size_in_bytes"] - (
      plan.params + plan.opt_state + plan.batch)
  assert 0 <= extra <= 64, extra
  # The step returns the new state in the donated buffers plus scalars.
  assert xla["output_size_in_bytes"] - xla["alias_size_in_bytes"] <= 4096


_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "u32": 4, "bool": 1}


def _stacked_residual_bytes(cfg: TransformerConfig, batch: int, seq: int
                            ) -> int:
  """Bytes JAX's autodiff saves inside the layer scan for the LM loss
  (`jax.ad_checkpoint.print_saved_residuals`, its "output of scan" rows)."""
  graphdef, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        nnx.to_pure_dict(abstract))
  data = {k: jnp.ones((batch, seq), jnp.float32 if k == "loss_mask"
                      else jnp.int32)
          for k in ("tokens", "targets", "loss_mask", "segment_ids",
                    "positions")}
  loss_fn = make_lm_loss_fn(graphdef)
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    jax.ad_checkpoint.print_saved_residuals(
        lambda p, b: loss_fn(p, b, None)[0], params, data)
  total = 0
  for line in buf.getvalue().splitlines():
    m = re.match(r"(\w+)\[([\d,]*)\] output of scan", line)
    if m:
      dims = [int(x) for x in m.group(2).split(",") if x]
      total += _BYTES[m.group(1)] * math.prod(dims)
  return total


@pytest.mark.parametrize("policy", sorted(REMAT_POLICIES))
def test_residuals_match_jax_saved_residuals_in_bf16(policy):
  """What a layer saves, as JAX's autodiff lists it, in the dtypes an
  accelerator keeps (bf16 compute, f32 params): the part of the plan that
  XLA:CPU cannot check, since it stores bf16 activations in f32."""
  cfg = TransformerConfig(**{**BASE, "compute_dtype": "bfloat16",
                             "num_heads": 6, "d_model": 96, "mlp_dim": 320,
                             "num_layers": 3, "remat_policy": policy})
  b, t = 5, 48
  e = cfg.resolved_head_dim
  st = memory_plan.state_bytes(cfg, (1, 1, 1))
  want = cfg.num_layers * memory_plan.layer_residual_bytes(
      policy, b * t, b * cfg.num_heads * t * t, cfg.d_model,
      cfg.num_heads * e, cfg.num_kv_heads * e, cfg.mlp_dim, 2,
      st.layer_shard // 2)
  got = _stacked_residual_bytes(cfg, b, t)
  # Remat policies: exact. No remat: autodiff also keeps a few small f32
  # pieces (RoPE tables, norm statistics) the plan leaves out.
  assert want == pytest.approx(got, rel=0.0 if policy in (
      "full", "save_attn_mlp_out", "dots_saveable",
      "dots_with_no_batch_dims_saveable") else 0.01)


def test_published_shapes_shard_as_lifejax_shards():
  """Llama-2-7B on 8-way FSDP: every matrix splits 8 ways, only the norm
  gains (2 per layer + 1, of size D) are replicated."""
  cfg = plan_memory.model_config("llama2_7b", **plan_memory.XLA_PATH)
  st = memory_plan.state_bytes(cfg, (1, 8, 1))
  n, d = cfg.num_params(), cfg.d_model
  norms = (2 * cfg.num_layers + 1) * d
  assert st.params == 4 * ((n - norms) // 8 + norms)
  # AdamW: mu and nu in the param dtype, sharded like it, plus two counts.
  assert st.opt_state == 2 * st.params + 2 * 4


def test_largest_batch_is_the_boundary():
  cfg = plan_memory.model_config("llama3_2_1b", **plan_memory.XLA_PATH)
  cap = 16 << 30
  rows = memory_plan.largest_batch(cfg, (1, 8, 1), 2048, cap, backend="tpu")
  assert rows > 0
  peak = lambda r: memory_plan.plan(cfg, (1, 8, 1), r * 8, 2048).peak  # noqa: E731
  assert peak(rows) <= cap < peak(rows + 1)


def test_remat_policies_trade_memory_in_order():
  cfg = plan_memory.model_config("llama2_7b", **plan_memory.XLA_PATH)
  res = [memory_plan.plan(dataclasses.replace(cfg, remat_policy=p),
                          (1, 8, 1), 8, 4096).residuals
         for p in ("full", "save_attn_mlp_out",
                   "dots_with_no_batch_dims_saveable", "dots_saveable",
                   "none")]
  assert res == sorted(res) and len(set(res)) == len(res)


@pytest.mark.parametrize("smear", [False, True])
def test_kv_cache_bytes_equal_init_cache(smear):
  cfg = TransformerConfig(**{**BASE, "smear_keys": smear})
  cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg, 3, 40))
  want = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize
             for a in jax.tree.leaves(cache))
  # This process runs on CPU, where the cache is f32 (kv_cache.cache_dtype).
  assert memory_plan.kv_cache_bytes(cfg, 3, 40, backend="cpu") == want


def test_unmodelled_formulations_are_refused():
  auto = TransformerConfig(vocab_size=64, d_model=32, num_heads=4,
                           num_kv_heads=2, mlp_dim=64)
  with pytest.raises(ValueError, match="attention_impl"):
    memory_plan.plan(auto, (1, 8, 1), 8, 16, backend="cpu")
  memory_plan.plan(auto, (1, 8, 1), 8, 16, backend="tpu")  # auto = XLA path
  with pytest.raises(ValueError, match="layer_loop"):
    memory_plan.plan(dataclasses.replace(auto, layer_loop="unroll"),
                     (1, 8, 1), 8, 16, backend="gpu")
  with pytest.raises(ValueError, match="data x fsdp"):
    memory_plan.plan(auto, (1, 8, 1), 12, 16)
