"""Per-device memory of the lifejax train step, without compiling it.

`plan(cfg, mesh_shape, batch, seq)` returns the bytes one device holds for
the step `trainer.plan_training` builds (LM loss, AdamW, the non-finite
guard), by part and at the step's peak:

* state: params and optimizer state, sharded by lifejax's own rules (the
  abstract model's logical axis names through `sharding.logical_to_spec` on
  an abstract mesh of the given shape), each leaf in its own dtype;
* the batch slice (five (B, T) 4-byte arrays over the batch axes);
* gradients (param dtype, sharded like the params; a second copy, the
  accumulator, while microbatches are scanned);
* residuals: what a layer saves for its backward under the remat policy
  (the values `jax.ad_checkpoint.saved_residuals` lists for a block),
  stacked over layers by the layer scan;
* the busiest moment of one layer's backward, the loss (B x T x V f32
  logits, the softmax's exp and the logits' cotangent), the reduction of
  the embedding and head gradients, and the optimizer update (the guard's
  `lax.cond` needs the new params and Adam moments whole before it picks
  them, so they are temporaries next to the gradients).

The peak is the arguments plus the largest phase. It is the quantity XLA
reports for the compiled step as argument + output - alias + temp bytes
(outputs alias the donated state; temp is one buffer sized by XLA's heap
simulation of the live temporaries). `tools/plan_memory.py --validate`
compares the two on 8 simulated CPU devices, where the compiled module is
SPMD-partitioned and its memory analysis is per device.

Which buffers are live at each moment was read off XLA's buffer assignment
(`experiments/memory_planner/README.md`); the sizes follow from the shapes.
Two things differ by backend: XLA:CPU keeps bf16 activations in f32 and
lowers a gradient reduce-scatter to an all-reduce plus a slice (a full
extra copy of what it reduces); TPU and GPU keep the compute dtype and
reduce-scatter. Only `backend="cpu"` is checked against XLA here.

The model is of the XLA formulation accelerators run (einsum attention,
XLA matmuls, unfused projections, scanned layers) and of the Llama block;
the small extra residuals of biases and q/k norms are not counted.

Letters (`lifejax/__init__.py`), per device: b rows of the microbatch,
n = b * T tokens, S = b * H * T * T attention scores.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from lifejax import sharding
from lifejax.model import transformer
from lifejax.model.config import TransformerConfig, to_dtype
from lifejax.train import optim, state as state_lib

BACKENDS = ("tpu", "gpu", "cpu")
_BATCH_AXES = ("data", "fsdp")
_BATCH_KEYS = 5  # tokens, targets, loss_mask, segment_ids, positions
# What each remat policy saves instead of recomputing: "proj" = outputs of
# the q/k/v and gate/up projections, "attn_out" = the attention block's
# output (the o projection), "attn" = scores and attention-weighted values
# (the batched dots), "all" = everything (no remat).
_SAVES = {
    "full": frozenset(),
    "save_attn_mlp_out": frozenset({"attn_out"}),
    "dots_with_no_batch_dims_saveable": frozenset({"proj", "attn_out"}),
    "dots_saveable": frozenset({"proj", "attn_out", "attn"}),
    "none": frozenset({"all"}),
    "everything_saveable": frozenset({"all"}),
}


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device; `peak` = params + opt_state + batch + max(phases)."""

  params: int
  opt_state: int
  batch: int
  grads: int            # incl. the microbatch accumulator
  residuals: int        # saved activations of all layers
  layer_backward: int   # busiest moment of one layer's backward
  logits: int           # the loss's (B, T, V) temporaries
  update: int           # new state + a gradient, before the guard picks
  phases: dict[str, int]
  peak: int
  rows_per_device: int  # b


def abstract_mesh(mesh_shape: tuple[int, int, int]) -> AbstractMesh:
  """A (data, fsdp, model) mesh of this shape with no devices behind it."""
  return AbstractMesh(tuple(mesh_shape), sharding.MESH_AXES)


def _shard_elems(shape: tuple[int, ...], spec: P, mesh: AbstractMesh,
                 skip: tuple[str, ...] = ()) -> int:
  """Elements of one device's shard; mesh axes in `skip` count as 1."""
  n = 1
  for i, dim in enumerate(shape):
    entry = spec[i] if i < len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
    n *= dim // math.prod(mesh.shape[a] for a in axes if a not in skip)
  return n


def _bytes(tree: Any, specs: Any, mesh: AbstractMesh,
           skip: tuple[str, ...] = ()) -> list[int]:
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  return [_shard_elems(a.shape, s, mesh, skip) * np.dtype(a.dtype).itemsize
          for a, s in zip(jax.tree.leaves(tree), spec_leaves)]


@dataclasses.dataclass(frozen=True)
class StateBytes:
  """Per device: params and optimizer state as sharded, and the full-size
  buffers the step makes of sharded weights (f32 unless said)."""

  params: int
  opt_state: int
  largest_param: int   # the largest parameter leaf's shard
  layer_shard: int     # one layer's weights as sharded, in param dtype
  layer_full: int      # one layer's weights, unsharded over the batch axes
  embed_full: int      # the whole (V, D) table
  head_full: int       # the output head, unsharded over the batch axes


@functools.lru_cache(maxsize=64)
def state_bytes(cfg: TransformerConfig, mesh_shape: tuple[int, int, int],
                rules: sharding.Rules = sharding.DEFAULT_RULES,
                optimizer_cfg: optim.OptimizerConfig | None = None
                ) -> StateBytes:
  """Params and optimizer state per device, sharded as lifejax shards them
  (abstract shapes only; a 70B model costs milliseconds)."""
  mesh = abstract_mesh(mesh_shape)
  _, abstract = nnx.split(transformer.abstract_model(cfg), nnx.Param)
  specs = nnx.to_pure_dict(sharding.param_specs(abstract, mesh, rules))
  shapes = nnx.to_pure_dict(abstract)
  optimizer = optim.make_optimizer(optimizer_cfg or optim.OptimizerConfig())
  opt_shapes = jax.eval_shape(optimizer.init, shapes)
  opt_specs = state_lib.opt_state_specs(opt_shapes, specs)
  params = _bytes(shapes, specs, mesh)
  pd = np.dtype(to_dtype(cfg.param_dtype)).itemsize
  layer_full = sum(_bytes(shapes["layers"], specs["layers"], mesh,
                          _BATCH_AXES)) // cfg.num_layers * 4 // pd
  head = "embed" if cfg.tie_embeddings else "lm_head"
  head_full = 4 * _shard_elems(shapes[head].shape, specs[head], mesh,
                               _BATCH_AXES)
  return StateBytes(params=sum(params),
                    opt_state=sum(_bytes(opt_shapes, opt_specs, mesh)),
                    largest_param=max(params), layer_full=layer_full,
                    layer_shard=sum(_bytes(shapes["layers"], specs["layers"],
                                           mesh)) // cfg.num_layers,
                    embed_full=4 * cfg.vocab_size * cfg.d_model,
                    head_full=head_full)


def _local(name: str, size: int, mesh: AbstractMesh,
           rules: sharding.Rules) -> int:
  """Per-device extent of a dimension with this logical name."""
  spec = sharding.logical_to_spec((name,), (size,), mesh, rules)
  return _shard_elems((size,), spec, mesh)


def layer_residual_bytes(policy: str, n: int, s: int, d: int, hq: int,
                         hk: int, f: int, act: int, weight_casts: int = 0
                         ) -> int:
  """Bytes one layer saves for its backward (stacked by the layer scan).

  n tokens, s score elements, d / hq / hk / f the local widths of the
  residual stream, queries, keys (= values) and MLP; `act` the bytes of an
  activation; `weight_casts` the bytes of the layer's weights cast to the
  compute dtype (0 when that is the param dtype). Dot outputs are f32
  (`preferred_element_type`), so the dot-saving policies save f32 values
  whatever the compute dtype.
  """
  saves = _SAVES[policy]
  if "all" in saves:
    # Autodiff of the Llama block keeps six f32 (n, D) values of the two
    # norms, the scores' exp, gate/up and the SwiGLU's f32 pieces, and in
    # the compute dtype the norms' outputs, q, k, v, the attention output,
    # the probabilities, the MLP hidden and the weights the dots read.
    return (4 * (6 * n * d + s + 5 * n * f) + weight_casts
            + act * (2 * n * d + 2 * n * hq + 2 * n * hk + s + n * f))
  out = n * d * act  # the layer input, the scan's carry
  if "attn_out" in saves:
    out += 4 * n * d
  if "proj" in saves:
    out += 4 * n * (hq + 2 * hk + 2 * f)
  if "attn" in saves:
    out += 4 * (s + n * hq)
  return out


def layer_backward_bytes(policy: str, n: int, s: int, d: int, hq: int,
                         hk: int, f: int) -> int:
  """Activation bytes live at the busiest moment of one layer's backward
  (besides its saved residuals), the larger of two moments.

  Attention backward: the probabilities, their cotangent and a third
  score-sized buffer (two when the scores were saved and are read in
  place), and about eleven (n, D)-sized values (q/k/v, the output, their
  cotangents, the norm). MLP backward: gate, up, the hidden and their
  cotangents (two when gate/up were saved) and nine (n, D) values; with
  `full` remat the attention recomputed on the way to the MLP's input
  still holds two score-sized buffers.
  """
  saves = _SAVES[policy]
  scores_saved = bool(saves & {"attn", "all"})
  attn = 4 * ((2 if scores_saved else 3) * s + n * (7 * d + 2 * hq + 2 * hk))
  mlp_f = 2 if saves & {"proj", "all"} else 5
  mlp = 4 * ((0 if saves else 2 * s) + mlp_f * n * f + 9 * n * d)
  return max(attn, mlp)


def check_modelled(cfg: TransformerConfig, backend: str) -> None:
  """ValueError unless the config runs the formulation the plan models."""
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
  if cfg.num_experts:
    raise ValueError(
        f"TransformerConfig.num_experts={cfg.num_experts}: the memory plan "
        "has no model of mixture-of-experts activations (dispatch buffers, "
        "router); plan the dense config or measure a compiled step")
  if cfg.remat_policy not in _SAVES:
    raise ValueError(f"remat_policy={cfg.remat_policy!r} has no memory model")
  # "auto" resolves to the XLA formulation on TPU/GPU, to CPU kernels on CPU.
  want = {"attention_impl": "einsum", "matmul_impl": "xla",
          "fuse_projections": "off", "layer_loop": "scan"}
  for field, value in want.items():
    got = getattr(cfg, field)
    if got != value and not (got == "auto" and backend != "cpu"):
      raise ValueError(
          f"TransformerConfig.{field}={got!r}: the memory plan models "
          f"{field}={value!r} (what 'auto' picks on TPU/GPU); set it to "
          f"{value!r} to plan or compile for backend {backend!r}")


def plan(cfg: TransformerConfig, mesh_shape: tuple[int, int, int],
         batch: int, seq: int, *, microbatches: int = 1,
         backend: str = "tpu", rules: sharding.Rules = sharding.DEFAULT_RULES,
         optimizer_cfg: optim.OptimizerConfig | None = None) -> MemoryPlan:
  """Per-device bytes of one train step on `batch` rows of `seq` tokens."""
  check_modelled(cfg, backend)
  mesh_shape = tuple(mesh_shape)
  mesh = abstract_mesh(mesh_shape)
  batch_devices = math.prod(mesh.shape[a] for a in _BATCH_AXES)
  micro = batch // microbatches
  if batch % microbatches or micro % batch_devices:
    raise ValueError(f"batch {batch} / microbatches {microbatches} is not a "
                     f"multiple of data x fsdp = {batch_devices}")
  st = state_bytes(dataclasses.replace(cfg, remat_policy="none"), mesh_shape,
                   rules, optimizer_cfg)
  e = cfg.resolved_head_dim
  h = _local("heads", cfg.num_heads, mesh, rules)
  hq, hk = h * e, _local("kv_heads", cfg.num_kv_heads, mesh, rules) * e
  f = _local("mlp", cfg.mlp_dim, mesh, rules)
  v = _local("vocab", cfg.vocab_size, mesh, rules)
  d = cfg.d_model  # the residual stream: batch-sharded, embed whole
  b = micro // batch_devices
  n, s = b * seq, b * h * seq * seq
  act = 4 if backend == "cpu" else np.dtype(
      to_dtype(cfg.compute_dtype)).itemsize
  pd = np.dtype(to_dtype(cfg.param_dtype)).itemsize
  two = 2 if backend == "cpu" else 1  # a CPU reduction's input and output
  multi = microbatches > 1

  casts = st.layer_shard * act // pd if act != pd else 0
  residuals = cfg.num_layers * layer_residual_bytes(
      cfg.remat_policy, n, s, d, hq, hk, f, act, casts)
  # After the stack (freed by the head's backward, before the layers'):
  # the final norm's three f32 (n, D) values, its output and the head
  # weight in the compute dtype.
  head_res = 4 * 3 * n * d + act * n * d + (d * v * act if act != pd else 0)
  # The loss: f32 logits, the softmax's exp, the logits' cotangent (and its
  # cast to the compute dtype for the head's dots).
  logits = 4 * 3 * n * v + (act * n * v if act != 4 else 0)
  grads = st.params
  acc = grads if multi else 0
  # Gathering the embedding table does not depend on the microbatch, so
  # XLA hoists it out of the microbatch loop, in both layouts ((V, D) for
  # the lookup, (D, V) for the head): two full tables live throughout.
  tables = 2 * st.embed_full * pd // 4 if multi else 0
  # The embedding table is gathered whole before the lookup, so its
  # gradient is a full (V, D) scatter-add target until reduced; without
  # microbatches the head's gradient was reduced earlier (on CPU into a
  # full copy that stays live).
  embed_grad = st.embed_full + (st.head_full if two == 2 and not multi
                                else 0)

  acts = layer_backward_bytes(cfg.remat_policy, n, s, d, hq, hk, f)
  if mesh.shape["model"] > 1:
    # Tensor parallelism all-reduces the row-parallel projections' partial
    # (n, D) sums.
    acts += 4 * n * d * two
  gathered = st.layer_full * pd // 4 if mesh.shape["fsdp"] > 1 else 0
  # A layer's weight gradients are full-size partial sums until reduced
  # over the batch axes; the gathered weights are freed by then.
  unreduced = st.layer_full * two if batch_devices > 1 else 0
  layer_bwd = max(acts + gathered, unreduced)
  # Each gradient leaf is freed once its update is written, so the largest
  # one is still live next to the whole new state.
  update = st.params + st.opt_state + st.largest_param
  # End of the backward: the embedding's and the head's gradients are
  # reduced. With microbatches both wait for the end of each microbatch; a
  # tied table's two gradients are summed and reduced as one.
  if multi:
    reduce = st.embed_full * (two if cfg.tie_embeddings else 1) + (
        st.head_full * two)
  else:
    reduce = st.embed_full * two + st.head_full * (two - 1)
  phases = {
      "loss": residuals + head_res + logits + acc + tables,
      "layers": residuals + grads + acc + tables + embed_grad + layer_bwd,
      "embedding": grads + acc + tables + reduce,
      "update": update,
  }
  batch_bytes = _BATCH_KEYS * batch // batch_devices * seq * 4
  peak = st.params + st.opt_state + batch_bytes + max(phases.values())
  return MemoryPlan(params=st.params, opt_state=st.opt_state,
                    batch=batch_bytes, grads=grads + acc,
                    residuals=residuals, layer_backward=layer_bwd,
                    logits=logits, update=update, phases=phases, peak=peak,
                    rows_per_device=b)


def largest_batch(cfg: TransformerConfig, mesh_shape: tuple[int, int, int],
                  seq: int, capacity: int, *, backend: str = "tpu",
                  rules: sharding.Rules = sharding.DEFAULT_RULES,
                  limit: int = 1024) -> int:
  """Most rows per device (one microbatch) whose step fits in `capacity`
  bytes per device; 0 if not even one does. The peak grows with the rows,
  so a bisection finds it."""
  shards = mesh_shape[0] * mesh_shape[1]

  def fits(rows: int) -> bool:
    return plan(cfg, mesh_shape, rows * shards, seq, backend=backend,
                rules=rules).peak <= capacity

  lo, hi = 0, limit + 1  # lo fits (0 trivially), hi does not
  if fits(limit):
    return limit
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def kv_cache_bytes(cfg: TransformerConfig, batch: int, length: int,
                   backend: str = "tpu") -> int:
  """Bytes of `kv_cache.init_cache(cfg, batch, length)`: K and V per layer,
  (B, K, L, E) in the compute dtype (f32 on CPU, see
  `kv_cache.cache_dtype`), the (B, L) validity mask and the index. The
  sampler does not shard the cache: one device holds it whole."""
  act = 4 if backend == "cpu" else np.dtype(
      to_dtype(cfg.compute_dtype)).itemsize
  e = cfg.resolved_head_dim
  kv = 2 * cfg.num_layers * batch * cfg.num_kv_heads * length * e * act
  smear = cfg.num_layers * batch * cfg.num_kv_heads * e * 4 if (
      cfg.smear_keys) else 0
  return kv + batch * length + 4 + smear
