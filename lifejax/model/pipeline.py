"""Pipeline parallelism: the layer stack split into stages over a mesh axis.

With `sharding.MeshConfig.stage` = p > 1 the mesh has a `stage` axis and
the stacked layer params (leading L axis, logical name "layers") are split
over it: stage s holds layers [s L/p, (s + 1) L/p). The batch is cut into
m microbatches; they flow through the stages in a `jax.shard_map` that is
manual over `stage` only (the other mesh axes stay under GSPMD, so data /
fsdp / tensor parallelism work inside a stage as they do without pipeline).
Between ticks every stage hands its output to the next with one
`jax.lax.ppermute` (a shift by one along the stage axis).

Two schedules:

* `gpipe`: m + p - 1 ticks; at tick t stage s runs the forward of
  microbatch t - s (a padding slot when that is outside [0, m)). The
  backward is JAX autodiff of that loop (the transposed scan runs the
  ticks in reverse, the transposed ppermute shifts the cotangents back one
  stage): all forwards, then all backwards. Autodiff keeps the residuals of
  every tick, so activation memory grows with m (bounded by the model's
  remat policy inside a stage).
* `1f1b` (PipeDream-flush): m + 2p - 2 ticks, each with a forward slot and
  a backward slot. Stage s runs the forward of microbatch t - s and the
  backward of microbatch t - 2(p - 1) + s; the last stage runs the loss
  head and the backward of a microbatch in the tick of its forward. The
  backward is explicit (`jax.vjp` per stage-microbatch, not autodiff of the
  loop): a stage keeps only the *inputs* of its in-flight microbatches (at
  most 2(p - 1 - s) + 1 <= 2p - 1, whatever m is) and its backward slot
  recomputes the stage forward from the saved input. So peak activation
  memory is bounded by p, not m, at the price of one extra stage forward
  per microbatch. Gradients (and the loss) come out of the forward pass;
  `one_f_one_b` returns them, and `Transformer.pipelined_loss` wraps them in a
  custom VJP so `jax.grad` of the training loss uses them.

Padding slots: in `gpipe` they compute on (finite) garbage that never
reaches an output; in `1f1b` a `lax.cond` skips them. Every slot records
the id of the microbatch it ran (-1 for padding); the id travels with the
activations through the ppermutes, and the outputs are placed by it, so
the record is the schedule that ran (`bubble_fraction` reads it).

Shape letters: see `lifejax/__init__.py`; M microbatches of b rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from lifejax import sharding

STAGE_AXIS = sharding.STAGE_AXIS
SCHEDULES = ("gpipe", "1f1b")

# stage_fn(stage_params, x_BxTxD, extras) -> x_BxTxD: the layers of one
# stage (params with a leading L/p axis) for one microbatch; `extras` holds
# that microbatch's per-row side inputs (positions, segment ids).
StageFn = Callable[[Any, jax.Array, Any], jax.Array]
# head_fn(head_params, y_BxTxD, extras) -> (loss, aux): the summed (not
# mean) loss of one microbatch from the last stage's output, and a dict of
# scalar sums to report (not differentiated).
HeadFn = Callable[[Any, jax.Array, Any],
                  tuple[jax.Array, dict[str, jax.Array]]]


def num_stages(mesh: Mesh | None) -> int:
  """The size of the mesh's `stage` axis (1 without one)."""
  return 1 if mesh is None else mesh.shape.get(STAGE_AXIS, 1)


def check_pipeline(num_layers: int, batch: int, stages: int,
                   microbatches: int, schedule: str,
                   tensor_parallel: int = 1) -> None:
  """ValueError naming the config field when a pipeline cannot be built
  (`tensor_parallel`: the mesh's `model` axis size)."""
  if schedule not in SCHEDULES:
    raise ValueError(f"TransformerConfig.pipeline_schedule={schedule!r}: "
                     f"expected one of {SCHEDULES}")
  if schedule == "1f1b":
    _check_1f1b_mesh(tensor_parallel)
  if not (isinstance(microbatches, int) and microbatches >= 1):
    raise ValueError(f"TransformerConfig.pipeline_microbatches="
                     f"{microbatches!r} must be an integer >= 1")
  if num_layers % stages:
    raise ValueError(
        f"TransformerConfig.num_layers={num_layers} is not divisible by the "
        f"pipeline stages MeshConfig.stage={stages}: every stage runs the "
        "same number of contiguous layers")
  if batch % microbatches:
    raise ValueError(
        f"batch size {batch} (per step or per accumulation microbatch) is "
        f"not divisible by TransformerConfig.pipeline_microbatches="
        f"{microbatches}")


def _check_1f1b_mesh(tensor_parallel: int) -> None:
  if tensor_parallel > 1:
    # XLA:CPU aborts the process (an SPMD partitioner check; with the
    # per-stage conds, collectives that not every device joins): refuse.
    raise ValueError(
        f"TransformerConfig.pipeline_schedule='1f1b' with MeshConfig.model="
        f"{tensor_parallel}: the 1F1B schedule does not support tensor "
        "parallelism inside a stage; use pipeline_schedule='gpipe' or "
        "model=1 (data and fsdp work with both)")


def to_microbatches(x: jax.Array, m: int) -> jax.Array:
  """(B, ...) -> (m, B/m, ...); microbatch i = rows i, i + m, ... (strided,
  so every microbatch keeps rows on all data-parallel devices)."""
  b = x.shape[0]
  return jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)


def from_microbatches(x: jax.Array) -> jax.Array:
  """Inverse of `to_microbatches`: (m, b, ...) -> (m b, ...)."""
  m, b = x.shape[:2]
  return jnp.swapaxes(x, 0, 1).reshape(m * b, *x.shape[2:])


def _varying(x: jax.Array) -> jax.Array:
  """`x` typed as varying over the stage axis (a loop carry that will
  hold ppermuted values must start so)."""
  if STAGE_AXIS in jax.typeof(x).manual_axis_type.varying:
    return x
  return jax.lax.pcast(x, (STAGE_AXIS,), to="varying")


def _shift(x: Any, p: int, step: int) -> Any:
  """Stage s's value goes to stage s + step (mod p)."""
  perm = [(s, (s + step) % p) for s in range(p)]
  return jax.tree.map(lambda a: jax.lax.ppermute(a, STAGE_AXIS, perm), x)


def _take(tree: Any, i: jax.Array) -> Any:
  return jax.tree.map(
      lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), tree)


def _put(buf: jax.Array, i: jax.Array, x: jax.Array,
         keep: jax.Array) -> jax.Array:
  """buf[i] = x where `keep`, else buf unchanged."""
  old = jax.lax.dynamic_index_in_dim(buf, i, 0, keepdims=False)
  return jax.lax.dynamic_update_index_in_dim(
      buf, jnp.where(keep, x, old), i, 0)


def gpipe(stage_fn: StageFn, stage_params: Any, x_MxBxTxD: jax.Array,
          extras_M: Any, mesh: Mesh) -> tuple[jax.Array, jax.Array]:
  """The GPipe forward of the stage stack (differentiable).

  stage_params: leaves with a leading L axis sharded over `stage`;
  x (M, b, T, D) the microbatched input of the first stage; extras_M a
  pytree of (M, ...) per-microbatch side inputs. Returns (y (M, b, T, D)
  the last stage's outputs, ids (p, M + p - 1) int32: the microbatch each
  stage ran at each tick, -1 for a padding slot).
  """
  p = num_stages(mesh)
  m = x_MxBxTxD.shape[0]
  ticks = m + p - 1

  def local(params, x, extras):
    s = jax.lax.axis_index(STAGE_AXIS)
    first, last = s == 0, s == p - 1

    def tick(carry, t):
      recv, recv_id, outs = carry
      # Stage 0 reads microbatch t; the others what the previous stage sent.
      own_id = jnp.where(t < m, t, -1)
      mb = jnp.where(first, own_id, recv_id)
      inp = jnp.where(first, _take(x, jnp.clip(t, 0, m - 1)), recv)
      idx = jnp.clip(mb, 0, m - 1)
      out = stage_fn(params, inp, _take(extras, idx))
      outs = _put(outs, idx, out, last & (mb >= 0))
      nxt, nxt_id = _shift((out, mb), p, 1)
      return (nxt, nxt_id, outs), mb

    init = (_varying(jnp.zeros_like(x[0])),
            _varying(jnp.full((), -1, jnp.int32)),
            _varying(jnp.zeros_like(x)))
    (_, _, outs), ids = jax.lax.scan(tick, init, jnp.arange(ticks))
    return outs[None], ids[None]

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(STAGE_AXIS), P(), P()),
                     out_specs=(P(STAGE_AXIS), P(STAGE_AXIS)),
                     axis_names={STAGE_AXIS})
  outs, ids = fn(stage_params, x_MxBxTxD, extras_M)
  return outs[p - 1], ids


@dataclasses.dataclass(frozen=True)
class OneFOneB:
  """What `one_f_one_b` returns (grads of the summed microbatch losses)."""

  loss: jax.Array          # sum over microbatches of head_fn's loss
  aux: dict                # sums over microbatches of head_fn's aux
  stage_grads: Any         # like stage_params
  head_grads: Any          # like head_params
  dx: jax.Array            # (M, b, T, D): d loss / d first-stage input
  fwd_ids: jax.Array       # (p, ticks): microbatch of each forward slot
  bwd_ids: jax.Array       # (p, ticks): microbatch of each backward slot


jax.tree_util.register_dataclass(
    OneFOneB, data_fields=[f.name for f in dataclasses.fields(OneFOneB)],
    meta_fields=[])


def one_f_one_b(stage_fn: StageFn, head_fn: HeadFn, stage_params: Any,
                head_params: Any, x_MxBxTxD: jax.Array, extras_M: Any,
                mesh: Mesh) -> OneFOneB:
  """Loss and gradients by the 1F1B schedule (see the module docstring).

  head_fn runs on the last stage only, once per microbatch; its params
  (e.g. final norm and LM head) are replicated over `stage`. extras_M is
  indexed per microbatch for both stage_fn and head_fn (targets and loss
  weights go there too). Not differentiable itself: it *is* the backward.
  """
  p = num_stages(mesh)
  m = x_MxBxTxD.shape[0]
  _check_1f1b_mesh(mesh.shape.get("model", 1))
  ticks = m + 2 * p - 2
  slots = min(m, 2 * p - 1)  # saved stage inputs in flight per stage

  def local(sp, hp, x, extras):
    s = jax.lax.axis_index(STAGE_AXIS)
    first, last = s == 0, s == p - 1
    # Typed as varying over stages: the head's gradient is (only the last
    # stage's is nonzero until the psum below), and custom-VJP kernels
    # need an input's cotangent to have the input's type.
    hp = jax.tree.map(_varying, hp)
    zero_act = _varying(jnp.zeros_like(x[0]))
    zeros_of = lambda t: jax.tree.map(  # noqa: E731
        lambda a: _varying(jnp.zeros(a.shape, a.dtype)), t)
    aux_shape = jax.eval_shape(
        lambda: head_fn(hp, x[0], _take(extras, 0))[1])
    zero_aux = zeros_of(aux_shape)

    def last_loss(sp_, hp_, xin, ex):
      loss, aux = head_fn(hp_, stage_fn(sp_, xin, ex), ex)
      return loss, aux

    def backward(i, xin, cot):
      """(loss, aux, d stage params, d head params, d input) of
      microbatch i."""
      ex = _take(extras, i)

      def at_last():
        loss, vjp, aux = jax.vjp(lambda a, b, c: last_loss(a, b, c, ex),
                                 sp, hp, xin, has_aux=True)
        return ((_varying(loss), jax.tree.map(_varying, aux))
                + vjp(jnp.ones_like(loss)))

      def inner():
        _, vjp = jax.vjp(lambda a, c: stage_fn(a, c, ex), sp, xin)
        g_sp, g_x = vjp(cot)
        return (_varying(jnp.zeros((), jnp.float32)), zero_aux, g_sp,
                zeros_of(hp), g_x)

      return jax.lax.cond(last, at_last, inner)

    def tick(carry, t):
      (f_recv, f_id, b_recv, b_id, saved, g_sp, g_hp, loss, aux,
       dx) = carry
      # Forward slot: microbatch t - s.
      own_id = jnp.where(t < m, t, -1)
      fi = jnp.where(first, own_id, f_id)
      f_ok = fi >= 0
      fidx = jnp.clip(fi, 0, m - 1)
      inp = jnp.where(first, _take(x, jnp.clip(t, 0, m - 1)), f_recv)
      saved = _put(saved, fidx % slots, inp, f_ok)
      # The last stage's forward output feeds nothing: its backward slot
      # recomputes it together with the head.
      out = jax.lax.cond(f_ok & ~last,
                         lambda: stage_fn(sp, inp, _take(extras, fidx)),
                         lambda: zero_act)
      # Backward slot: the last stage the microbatch it just saved, the
      # others what the next stage sent back.
      bi = jnp.where(last, fi, b_id)
      b_ok = bi >= 0
      bidx = jnp.clip(bi, 0, m - 1)
      xin = jax.lax.dynamic_index_in_dim(saved, bidx % slots, 0,
                                         keepdims=False)
      zeros = (_varying(jnp.zeros((), jnp.float32)), zero_aux, zeros_of(sp),
               zeros_of(hp), zero_act)
      l_i, a_i, gs_i, gh_i, gx_i = jax.lax.cond(
          b_ok, lambda: backward(bidx, xin, b_recv), lambda: zeros)
      g_sp = jax.tree.map(jnp.add, g_sp, gs_i)
      g_hp = jax.tree.map(jnp.add, g_hp, gh_i)
      loss = loss + l_i
      aux = jax.tree.map(jnp.add, aux, a_i)
      dx = _put(dx, bidx, gx_i, first & b_ok)
      f_next, f_next_id = _shift((out, jnp.where(last, -1, fi)), p, 1)
      b_next, b_next_id = _shift((gx_i, jnp.where(first, -1, bi)), p, -1)
      return ((f_next, f_next_id, b_next, b_next_id, saved, g_sp, g_hp,
               loss, aux, dx), (fi, bi))

    minus1 = _varying(jnp.full((), -1, jnp.int32))
    init = (zero_act, minus1, zero_act, minus1,
            _varying(jnp.zeros((slots,) + x.shape[1:], x.dtype)),
            zeros_of(sp), zeros_of(hp),
            _varying(jnp.zeros((), jnp.float32)), zero_aux,
            _varying(jnp.zeros_like(x)))
    (_, _, _, _, _, g_sp, g_hp, loss, aux, dx), (fids, bids) = (
        jax.lax.scan(tick, init, jnp.arange(ticks)))
    # Loss and head grads live on the last stage, dx on the first; the
    # others hold zeros, so a sum over stages reads them off.
    loss = jax.lax.psum(loss, STAGE_AXIS)
    aux = jax.tree.map(lambda a: jax.lax.psum(a, STAGE_AXIS), aux)
    g_hp = jax.tree.map(lambda a: jax.lax.psum(a, STAGE_AXIS), g_hp)
    dx = jax.lax.psum(dx, STAGE_AXIS)
    return loss, aux, g_sp, g_hp, dx, fids[None], bids[None]

  fn = jax.shard_map(
      local, mesh=mesh, in_specs=(P(STAGE_AXIS), P(), P(), P()),
      out_specs=(P(), P(), P(STAGE_AXIS), P(), P(), P(STAGE_AXIS),
                 P(STAGE_AXIS)),
      axis_names={STAGE_AXIS})
  loss, aux, g_sp, g_hp, dx, fids, bids = fn(stage_params, head_params,
                                             x_MxBxTxD, extras_M)
  return OneFOneB(loss, aux, g_sp, g_hp, dx, fids, bids)


def one_f_one_b_loss(stage_fn: StageFn, head_fn: HeadFn, mesh: Mesh
                     ) -> Callable[..., tuple[jax.Array, dict]]:
  """`f(stage_params, head_params, x_M, extras_M) -> (loss, aux)` by the
  1F1B schedule, differentiable: a custom VJP whose forward runs
  `one_f_one_b` (loss and gradients together) and whose backward scales
  the saved gradients by the loss cotangent. So `jax.grad` of a loss built
  on it gets the 1F1B gradients. Called without differentiation (an eval
  step) it runs the GPipe forward and the head instead. extras get no
  gradient."""

  @jax.custom_vjp
  def f(sp, hp, x, extras):
    # Not differentiated (an eval step): the GPipe forward and the head per
    # microbatch; no backward slots to run.
    y_M, _ = gpipe(stage_fn, sp, x, extras, mesh)
    per_mb = jax.lax.map(lambda a: head_fn(hp, a[0], a[1]), (y_M, extras))
    return jax.tree.map(lambda v: jnp.sum(v, axis=0), per_mb)

  def fwd(sp, hp, x, extras):
    r = one_f_one_b(stage_fn, head_fn, sp, hp, x, extras, mesh)
    return (r.loss, r.aux), (r.stage_grads, r.head_grads, r.dx)

  def bwd(res, cot):
    g = cot[0]
    scale = lambda t: jax.tree.map(  # noqa: E731
        lambda a: (a * g).astype(a.dtype), t)
    gs, gh, dx = res
    return scale(gs), scale(gh), scale(dx), None

  f.defvjp(fwd, bwd)
  return f


def bubble_fraction(fwd_ids: np.ndarray, bwd_ids: np.ndarray | None = None,
                    backward_cost: float = 2.0) -> dict[str, float]:
  """The idle share of the executed schedule, read off its slot records.

  fwd_ids / bwd_ids (p, ticks): the microbatch each stage ran in each
  forward / backward slot, -1 = idle. For GPipe (bwd_ids None) the
  backward is the forward loop transposed: the same slots in reverse, each
  costing `backward_cost` forwards. Lock-step time: a tick lasts as long as
  its busiest stage (forward 1, backward `backward_cost`; a skipped slot
  0). Returns {"slots": idle share of all (stage, slot) pairs, "time":
  1 - useful stage-time / (p * total time)}.
  """
  f = np.asarray(fwd_ids) >= 0
  p = f.shape[0]
  if bwd_ids is None:
    b = f
  else:
    b = np.asarray(bwd_ids) >= 0
  busy = f.sum() + b.sum()
  slots = 1.0 - busy / (f.size + b.size)
  if bwd_ids is None:  # forward loop, then its transpose
    total = (f.any(axis=0).sum() + backward_cost * b.any(axis=0).sum())
  else:
    total = np.max(f * 1.0 + b * backward_cost, axis=0).sum()
  useful = f.sum() + backward_cost * b.sum()
  return {"slots": float(slots), "time": float(1.0 - useful / (p * total))}
