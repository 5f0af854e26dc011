"""Mixture of experts: a layer's MLP as X = `num_experts` SwiGLU experts
behind a router.

Routing (Mixtral's convention, as HF `MixtralSparseMoeBlock`): router
logits l = x @ W_r (D, X) with f32 accumulation; p = softmax(l) over all X
experts, in f32; each token takes its k = `experts_per_token` experts of
highest p (ties: the lower expert index, `jax.lax.top_k`) and weights them
by g_i = p_i / sum_{top-k} p, so a token's k gates sum to 1. The output
for token x is sum_i g_i * expert_{e_i}(x), expert_e(x) = (act(x @ G_e) *
(x @ U_e)) @ W_e (the dense MLP's gated form, one per expert).

Capacity mode (`expert_capacity_factor` cf > 0). A group is one sequence
(a row of the batch, T tokens): each expert takes at most C = min(T,
ceil(cf * T * k / X)) of the group's (token, choice) assignments
(`TransformerConfig.expert_capacity`). Priority: the group's first
choices in token order, then its second choices in token order, and so on
(GShard's order: any token's top choice beats another's second). An
assignment past capacity is dropped: it contributes 0, the other gates of
that token are not renormalised, and the block's residual carries the
token on (a token with all k choices dropped leaves the MLP unchanged).
Groups are rows, so what is dropped never depends on the mesh.

Dropless mode (cf None or 0): every assignment is computed. Without an
expert mesh axis the assignments are sorted by expert and run as grouped
matmuls (`jax.lax.ragged_dot`); with one, the capacity path runs with C =
T, which can never drop (a token picks an expert at most once).

Decoding (`kv_cache.py`) always runs dropless, whatever the capacity
factor: a token's output then depends on that token alone, as in HF
Mixtral. A model trained with capacity can therefore sample tokens that
the training forward would have dropped (and score them differently).

Expert parallelism: under `sharding.activation_sharding` with a mesh
`expert` axis of size ep > 1 (`MeshConfig.expert`), the experts (logical
axis "experts") are split over it and the batch rows over (data, fsdp,
expert) (the default rules). Inside a `shard_map`, each device scatters
its rows' assignments into an (rows, X, C, D) buffer, an all-to-all over
`expert` sends each device the slots of its X / ep experts from every
device of its expert group, the experts run, and a second all-to-all
brings the results home, where each token gathers its k results and sums
them with its gates. Routing and the aux statistics run outside it, on the
global arrays (GSPMD).

Aux values (f32 scalars per layer; the model returns their means over
layers, and the LM loss adds `moe_aux_loss_coef` and `moe_z_loss_coef`
times them):
* `moe_aux_loss`, load balancing (HF Mixtral's `load_balancing_loss_func`
  on one layer; Switch's form for k = 1): X * sum_e f_e * P_e, with f_e
  the assignments to expert e over the N tokens of the batch divided by N
  (sum_e f_e = k) and P_e the mean router probability of e; k when routing
  is uniform in both.
* `moe_z_loss`, router z-loss (ST-MoE): mean over tokens of
  logsumexp(l)^2.
* `moe_dropped_fraction`: dropped assignments / (N * k); 0 when dropless.
Every token of the batch counts (padding too), as HF without an attention
mask.

Shape letters: see `lifejax/__init__.py`; here X is the number of experts
(E is the head dim there), C the capacity, and K the top-k choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from lifejax import sharding
from lifejax.model.config import ACTIVATIONS, TransformerConfig, to_dtype

F32 = jnp.float32
AUX_KEYS = ("moe_aux_loss", "moe_z_loss", "moe_dropped_fraction")


def route(logits_NxX: jax.Array, k: int) -> tuple[jax.Array, jax.Array,
                                                   jax.Array]:
  """(probs (N, X) f32, experts (N, K) int32, gates (N, K) f32): softmax
  over all experts, top-k, the k probabilities renormalised to sum 1."""
  probs = jax.nn.softmax(logits_NxX.astype(F32), axis=-1)
  top_p, experts = jax.lax.top_k(probs, k)
  gates = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
  return probs, experts.astype(jnp.int32), gates


def capacity_slots(experts_BxTxK: jax.Array, num_experts: int,
                   capacity: int) -> tuple[jax.Array, jax.Array]:
  """Slot of each assignment in its row's (X * C) buffer, and whether it
  was kept.

  Returns (slots (B, T, K) int32 = expert * C + position, X * C where
  dropped; keep (B, T, K) bool). Positions count per row in priority
  order: choice rank first, then token index.
  """
  b, t, k = experts_BxTxK.shape
  order_BxKT = jnp.swapaxes(experts_BxTxK, 1, 2).reshape(b, k * t)
  onehot = jax.nn.one_hot(order_BxKT, num_experts, dtype=jnp.int32)
  pos = jnp.sum((jnp.cumsum(onehot, axis=1) - 1) * onehot, axis=-1)
  pos_BxTxK = jnp.swapaxes(pos.reshape(b, k, t), 1, 2)
  keep = pos_BxTxK < capacity
  slots = jnp.where(keep, experts_BxTxK * capacity + pos_BxTxK,
                    num_experts * capacity)
  return slots.astype(jnp.int32), keep


def _dispatch(x_BxTxD: jax.Array, slots_BxTxK: jax.Array, num_experts: int,
              capacity: int) -> jax.Array:
  """(B, X, C, D): each kept assignment's token in its slot, zeros
  elsewhere (slots are unique per row, so the add writes each once)."""
  b, t, d = x_BxTxD.shape
  k = slots_BxTxK.shape[-1]

  def one(x_TxD, s_TxK):
    rows = jnp.repeat(x_TxD, k, axis=0)  # row t * K + i = token t
    return jnp.zeros((num_experts * capacity, d), x_TxD.dtype).at[
        s_TxK.reshape(-1)].add(rows, mode="drop")

  return jax.vmap(one)(x_BxTxD, slots_BxTxK).reshape(
      b, num_experts, capacity, d)


def _combine(y_BxXxCxD: jax.Array, slots_BxTxK: jax.Array,
             gates_BxTxK: jax.Array) -> jax.Array:
  """(B, T, D) f32: sum over a token's kept choices of gate * result."""
  b, x, c, d = y_BxXxCxD.shape
  y = y_BxXxCxD.reshape(b, x * c, d)
  picked = jax.vmap(lambda y_, s_: jnp.take(
      y_, s_, axis=0, mode="fill", fill_value=0))(y, slots_BxTxK)
  return jnp.einsum("btk,btkd->btd", gates_BxTxK, picked.astype(F32))


def _experts(buf_BxXxCxD: jax.Array, w_gate: jax.Array, w_up: jax.Array,
             w_down: jax.Array, act: Callable[[jax.Array], jax.Array],
             cd: jnp.dtype) -> jax.Array:
  """Each expert's gated MLP on its slots: (B, X, C, D) -> f32."""
  dot = lambda a, w, spec: jnp.einsum(  # noqa: E731
      spec, a.astype(cd), w.astype(cd), preferred_element_type=F32)
  g = dot(buf_BxXxCxD, w_gate, "bxcd,xdf->bxcf")
  u = dot(buf_BxXxCxD, w_up, "bxcd,xdf->bxcf")
  return dot((act(g) * u).astype(cd), w_down, "bxcf,xfd->bxcd")


def grouped_experts(x_NxD: jax.Array, experts_NxK: jax.Array,
                    gates_NxK: jax.Array, w_gate: jax.Array, w_up: jax.Array,
                    w_down: jax.Array, act: Callable[[jax.Array], jax.Array],
                    cd: jnp.dtype) -> jax.Array:
  """Dropless: each token's k experts on the (N, D) tokens, as grouped
  matmuls over the assignments sorted by expert; (N, D) f32."""
  n, k = experts_NxK.shape
  num_experts = w_gate.shape[0]
  flat = experts_NxK.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  xs = jnp.take(x_NxD, order // k, axis=0).astype(cd)
  sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
  dot = lambda a, w: jax.lax.ragged_dot(  # noqa: E731
      a.astype(cd), w.astype(cd), sizes, preferred_element_type=F32)
  h = (act(dot(xs, w_gate)) * dot(xs, w_up)).astype(cd)
  ys = dot(h, w_down)
  # The inverse permutation by a scatter of positions (O(N), where a second
  # argsort would sort again).
  inverse = jnp.zeros_like(order).at[order].set(
      jnp.arange(order.size, dtype=order.dtype), unique_indices=True)
  y_NxKxD = jnp.take(ys, inverse, axis=0).reshape(n, k, -1)
  return jnp.einsum("nk,nkd->nd", gates_NxK, y_NxKxD)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...],
           names: tuple[str | None, ...], std: float,
           dtype: jnp.dtype) -> nnx.Param:
  init = nnx.with_partitioning(nnx.initializers.normal(std), names)
  return nnx.Param(init(rngs.params(), shape, dtype))


class MoE(nnx.Module):
  """Router (D, X) and X gated experts (X, D, F), (X, F, D); see the
  module docstring for routing, capacity and the aux values."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, f, x = cfg.d_model, cfg.mlp_dim, cfg.num_experts
    pd = to_dtype(cfg.param_dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    self.w_router = _param(rngs, (d, x), ("embed", None), cfg.init_std, pd)
    self.w_gate = _param(rngs, (x, d, f), ("experts", "embed", "mlp"),
                         cfg.init_std, pd)
    self.w_up = _param(rngs, (x, d, f), ("experts", "embed", "mlp"),
                       cfg.init_std, pd)
    self.w_down = _param(rngs, (x, f, d), ("experts", "mlp", "embed"),
                         out_std, pd)
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(output (B, T, D) f32, aux {AUX_KEYS: f32 scalar})."""
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    act = ACTIVATIONS[cfg.mlp_activation]
    b, t, d = x_BxTxD.shape
    nx, k = cfg.num_experts, cfg.experts_per_token
    x_NxD = x_BxTxD.reshape(b * t, d)
    logits = jnp.dot(x_NxD.astype(cd), self.w_router[...].astype(cd),
                     preferred_element_type=F32)
    probs, experts, gates = route(logits, k)
    weights = (self.w_gate[...], self.w_up[...], self.w_down[...])

    active = sharding.active_activation_sharding()
    ep = active[0].shape.get(sharding.EXPERT_AXIS, 1) if active else 1
    if ep == 1 and cfg.dropless:
      out = grouped_experts(x_NxD, experts, gates, *weights, act, cd)
      keep = jnp.ones(experts.shape, bool)
    else:
      c = cfg.expert_capacity(t)
      slots, keep = capacity_slots(experts.reshape(b, t, k), nx, c)
      gates_BxTxK = gates.reshape(b, t, k)
      if ep == 1:
        buf = _dispatch(x_BxTxD.astype(cd), slots, nx, c)
        out = _combine(_experts(buf, *weights, act, cd).astype(cd), slots,
                       gates_BxTxK)
      else:
        out = _expert_parallel(x_BxTxD.astype(cd), slots, gates_BxTxK,
                               weights, act, cd, c, active)

    onehot = jax.nn.one_hot(experts, nx, dtype=F32)  # (N, K, X)
    frac = jnp.sum(onehot, axis=(0, 1)) / (b * t)
    aux = {
        "moe_aux_loss": nx * jnp.sum(frac * jnp.mean(probs, axis=0)),
        "moe_z_loss": jnp.mean(jnp.square(jax.nn.logsumexp(logits, -1))),
        "moe_dropped_fraction": jnp.mean((~keep).astype(F32)),
    }
    return out.reshape(b, t, d), aux


def _expert_parallel(x_BxTxD: jax.Array, slots_BxTxK: jax.Array,
                     gates_BxTxK: jax.Array,
                     weights: tuple[jax.Array, jax.Array, jax.Array],
                     act: Callable[[jax.Array], jax.Array], cd: jnp.dtype,
                     capacity: int,
                     active: tuple[jax.sharding.Mesh, sharding.Rules]
                     ) -> jax.Array:
  """The capacity path with experts split over the `expert` mesh axis and
  tokens moved by all-to-all (module docstring); (B, T, D) f32."""
  mesh, rules = active
  axis = sharding.EXPERT_AXIS
  ep = mesh.shape[axis]
  nx = weights[0].shape[0]
  if nx % ep:
    raise ValueError(f"TransformerConfig.num_experts={nx} is not divisible "
                     f"by the mesh's expert axis (MeshConfig.expert={ep})")
  b_axes = sharding.logical_to_spec(("batch",), x_BxTxD.shape[:1], mesh,
                                    rules)[0]
  row_spec = P(b_axes, None, None)
  w_spec = P(axis, None, None)

  def local(x, slots, gates, w_gate, w_up, w_down):
    buf = _dispatch(x, slots, nx, capacity)  # (b, X, C, D)
    # Send expert block j to device j of the group; receive the rows of
    # every device for this device's X / ep experts: (ep * b, X / ep, C, D).
    buf = jax.lax.all_to_all(buf, axis, 1, 0, tiled=True)
    y = _experts(buf, w_gate, w_up, w_down, act, cd).astype(cd)
    y = jax.lax.all_to_all(y, axis, 0, 1, tiled=True)  # (b, X, C, D)
    return _combine(y, slots, gates)

  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(row_spec,) * 3 + (w_spec,) * 3,
                     out_specs=row_spec)
  return fn(x_BxTxD, slots_BxTxK, gates_BxTxK, *weights)
