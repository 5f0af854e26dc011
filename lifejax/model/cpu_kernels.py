"""Matmul and attention kernels for XLA:CPU, and the plain `matmul`.

Each kernel computes exactly what the plain XLA formulation computes;
`transformer.kernels` picks them per backend ("auto" selects them on CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def matmul(x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """(N, D) @ (D, F) with inputs cast to `dtype` and f32 accumulation/output.

  On CPU a bf16 dot that returns bf16 is ~3x slower than one that returns f32,
  and on accelerators f32 accumulation is what keeps bf16 training stable.
  """
  return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=F32)


# -- CPU kernels --------------------------------------------------------------
# XLA:CPU runs a bf16 dot at full speed (YNNPACK, bf16 in, f32 out) only when
# the left operand contracts its last dimension. JAX's own backward of
# `matmul` breaks that twice: it feeds the f32 cotangent into the dots, so
# they run as f32 dots, and the weight gradient x^T @ g contracts x's first
# dimension, which XLA folds any transpose of x into (a slow upcast f32
# dot). Measured on a 2-core AVX512-BF16 host (tools/bench_train_step.py),
# these kernels make the bf16 train step several times faster; see
# experiments/bench_train_step/README.md.


def _dot(a: jax.Array, b: jax.Array, contract_b: int) -> jax.Array:
  """Batched a (..., M, K) x b: b (..., K, N) if contract_b == -2 ("NN"),
  b (..., N, K) if contract_b == -1 ("NT"); leading dims are batch dims."""
  batch = tuple(range(a.ndim - 2))
  return jax.lax.dot_general(
      a, b, (((a.ndim - 1,), (b.ndim + contract_b,)), (batch, batch)),
      preferred_element_type=F32)


def _pack(x: jax.Array) -> jax.Array:
  """16-bit floats -> their uint16 bits, for data movement.

  XLA:CPU upcasts bf16 transposes and dynamic-update-slices to f32 and back;
  a scan that stacks bf16 residuals then converts its whole stack on every
  step. Integers are moved as they are.
  """
  if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16)
  return x


def _unpack(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
  if x.dtype == jnp.uint16:
    return jax.lax.bitcast_convert_type(x, dtype)
  return x


def _loop_weight_grad(x_NxD: jax.Array, g_NxF: jax.Array) -> jax.Array:
  """x^T @ g (D, F) in f32, from "NN" dots only.

  The narrower operand is transposed (half the bytes moved for a 4x-wide
  MLP) and fed to a 2-step loop over its halves: a loop input is stored in
  its own layout, so XLA cannot fold the transpose back into the dot. The
  transpose stays in the float dtype, which XLA:CPU moves faster than the
  same bits as uint16.
  """
  (_, d), f = x_NxD.shape, g_NxF.shape[1]
  if d <= f:
    _, dw = jax.lax.scan(lambda _, xt: (None, _dot(xt, g_NxF, -2)), None,
                         x_NxD.T.reshape(2, d // 2, -1))
    return dw.reshape(d, f)
  _, dw_t = jax.lax.scan(lambda _, gt: (None, _dot(gt, x_NxD, -2)), None,
                         g_NxF.T.reshape(2, f // 2, -1))
  return dw_t.reshape(f, d).T


@functools.lru_cache(maxsize=None)
def cpu_matmul_fn(x_dtype: jnp.dtype, w_dtype: jnp.dtype, dtype: jnp.dtype,
                   weight_grad: str):
  """`matmul` with a backward whose dots all take compute-dtype inputs.

  The weight gradient x^T @ g needs x^T in memory for a fast dot, and XLA
  folds a transpose into the dot that consumes it unless the transposed
  array crosses a loop boundary (a loop stores its inputs and outputs in
  their own layout). weight_grad picks how:
    "residual": the forward saves x^T; inside the layer scan the residual
      is a scan output, stored transposed.
    "loop": the backward transposes the narrower of x and g and feeds it to
      a 2-step loop (works anywhere; see `_loop_weight_grad`).
    "tn": the plain x^T @ g dot (XLA runs it as a slower f32 dot).
  """

  @jax.custom_vjp
  def mm(x, w):
    return matmul(x, w, dtype)

  def fwd(x, w):
    xc, wc = x.astype(dtype), w.astype(dtype)
    y = jnp.dot(xc, wc, preferred_element_type=F32)
    x_res = _pack(xc.T if weight_grad == "residual" else xc)
    return y, (x_res, _pack(wc))

  def bwd(res, g_NxF):
    x_res, wp = res
    gc = g_NxF.astype(dtype)
    dx = _dot(gc, _unpack(wp, dtype), -1)
    if weight_grad == "residual":
      dw = _dot(_unpack(x_res, dtype), gc, -2)
    elif weight_grad == "loop":
      dw = _loop_weight_grad(_unpack(x_res, dtype), gc)
    else:
      dw = jax.lax.dot_general(_unpack(x_res, dtype), gc,
                               (((0,), (0,)), ((), ())),
                               preferred_element_type=F32)
    return dx.astype(x_dtype), dw.astype(w_dtype)

  mm.defvjp(fwd, bwd)
  return mm


def _blocks(t: int, block: int) -> list[tuple[int, int]]:
  return [(a, min(a + block, t)) for a in range(0, t, block)]


def _block_scores(q_BxKxRxE: jax.Array, k_BxKxZxE: jax.Array,
                  seg_BxT: jax.Array, a: int, z: int) -> jax.Array:
  """Masked f32 scores of query rows [a, z) (R = (z - a) * G rows ordered
  (t, g)) against keys [0, z): (B, K, z - a, G, z). Keys >= z are causally
  masked for every query of the block, so they are skipped, not computed."""
  b, k, r, _ = q_BxKxRxE.shape
  s = _dot(q_BxKxRxE, k_BxKxZxE, -1).reshape(b, k, z - a, r // (z - a), z)
  causal = jnp.arange(z)[None, :] <= jnp.arange(a, z)[:, None]
  same = seg_BxT[:, a:z, None] == seg_BxT[:, None, :z]
  return jnp.where((causal[None] & same)[:, None, :, None, :], s,
                   jnp.finfo(F32).min)


@functools.lru_cache(maxsize=None)
def blocked_attention_fn(dtype: jnp.dtype, block: int):
  """Causal GQA attention, custom VJP, in static query blocks.

  (f32 q (B,T,K,G,E) pre-scaled, f32 k, v (B,T,K,E), segment_ids (B,T)) ->
  (B,T,K,G,E) f32. Each block's scores stay small (cache-resident) and skip
  the keys after the block; the backward recomputes them from the saved
  log-sum-exp (no (T, S) residuals), and every dot takes compute-dtype
  inputs with f32 accumulation.
  """

  def layout(q, k, v):
    b, t, kh, g, e = q.shape
    q_BxKxRxE = q.astype(dtype).transpose(0, 2, 1, 3, 4).reshape(
        b, kh, t * g, e)
    return (q_BxKxRxE, k.astype(dtype).transpose(0, 2, 1, 3),
            v.astype(dtype).transpose(0, 2, 1, 3))

  @jax.custom_vjp
  def attn(q, k, v, seg):
    return fwd(q, k, v, seg)[0]

  def fwd(q, k, v, seg):
    b, t, kh, g, e = q.shape
    qc, kc, vc = layout(q, k, v)
    outs, lses = [], []
    for a, z in _blocks(t, block):
      s = _block_scores(qc[:, :, a * g:z * g], kc[:, :, :z], seg, a, z)
      m = jnp.max(s, axis=-1, keepdims=True)
      p = jnp.exp(s - m)
      l = jnp.sum(p, axis=-1, keepdims=True)
      probs = (p * (1.0 / l)).astype(dtype).reshape(b, kh, (z - a) * g, z)
      outs.append(_dot(probs, vc[:, :, :z], -2))
      lses.append((m + jnp.log(l))[..., 0])
    out = jnp.concatenate(outs, axis=2).reshape(b, kh, t, g, e)
    return (out.transpose(0, 2, 1, 3, 4),
            (_pack(qc), _pack(kc), _pack(vc), seg,
             jnp.concatenate(lses, axis=2)))

  def bwd(res, dout):
    qc, kc, vc = (_unpack(r, dtype) for r in res[:3])
    seg, lse_BxKxTxG = res[3:]
    b, kh, _, e = qc.shape
    t = seg.shape[1]
    g = qc.shape[2] // t
    do = dout.astype(dtype).transpose(0, 2, 1, 3, 4).reshape(b, kh, t * g, e)
    dqs = []
    dk = jnp.zeros(kc.shape, F32)
    dv = jnp.zeros(vc.shape, F32)
    for a, z in _blocks(t, block):
      q_i, do_i = qc[:, :, a * g:z * g], do[:, :, a * g:z * g]
      k_i, v_i = kc[:, :, :z], vc[:, :, :z]
      s = _block_scores(q_i, k_i, seg, a, z)
      p = jnp.exp(s - lse_BxKxTxG[:, :, a:z, :, None]).reshape(
          b, kh, (z - a) * g, z)
      dp = _dot(do_i, v_i, -1)
      ds = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(dtype)
      dqs.append(_dot(ds, k_i, -2))
      # Key/value gradients contract the query rows: small per block, so
      # XLA's transposing (f32) dot is cheaper here than recomputing S^T.
      dk = dk.at[:, :, :z].add(jax.lax.dot_general(
          ds, q_i, (((2,), (2,)), ((0, 1), (0, 1))),
          preferred_element_type=F32))
      dv = dv.at[:, :, :z].add(jax.lax.dot_general(
          p.astype(dtype), do_i, (((2,), (2,)), ((0, 1), (0, 1))),
          preferred_element_type=F32))
    dq = jnp.concatenate(dqs, axis=2).reshape(b, kh, t, g, e)
    return (dq.transpose(0, 2, 1, 3, 4).astype(F32),
            dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3), None)

  attn.defvjp(fwd, bwd)
  return attn
