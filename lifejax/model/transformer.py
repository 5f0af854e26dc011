"""A Llama-style decoder LM in Flax NNX.

RMSNorm, rotary embeddings (the rotate-half layout used by HuggingFace Llama),
SwiGLU MLP, grouped-query attention, optional tied embeddings, causal
attention restricted to equal `segment_ids` (packed documents never attend to
each other), layers stacked with `nnx.vmap` and run with `jax.lax.scan` (or
unrolled, `layer_loop`) under a named remat policy. Shape letters: see
`lifejax/__init__.py`.

Implementation choices (`TransformerConfig.attention_impl`, `matmul_impl`,
`fuse_projections`, `weight_grad`, `layer_loop`) never change the function
computed; "auto" resolves them per backend in `kernels`. On CPU they select
custom-VJP kernels written around what XLA:CPU runs fast (below).

Every parameter carries logical axis names (`nnx.with_partitioning`); the
mapping to mesh axes lives in `lifejax/sharding.py`. Models are built with
flax's eager sharding off, so the names are metadata only until the training
code derives shardings from them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from lifejax import sharding
from lifejax.model.config import REMAT_POLICIES, TransformerConfig, to_dtype

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
def _cpu_matmul_fn(x_dtype: jnp.dtype, w_dtype: jnp.dtype, dtype: jnp.dtype,
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
def _blocked_attention_fn(dtype: jnp.dtype, block: int):
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


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...],
           std: float, dtype: jnp.dtype) -> nnx.Param:
  init = nnx.with_partitioning(nnx.initializers.normal(std), names)
  return nnx.Param(init(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
  """y = x / rms(x) * scale, computed in f32."""

  def __init__(self, dim: int, eps: float, param_dtype: jnp.dtype):
    init = nnx.with_partitioning(nnx.initializers.ones, ("norm",))
    self.scale = nnx.Param(init(jax.random.key(0), (dim,), param_dtype))
    self.eps = eps

  def __call__(self, x: jax.Array, out_dtype: jnp.dtype) -> jax.Array:
    x32 = x.astype(F32)
    ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    scale = self.scale[...].astype(F32).reshape((1,) * (x.ndim - 1) + (-1,))
    y = x32 * jax.lax.rsqrt(ms + self.eps) * scale
    return y.astype(out_dtype)


def rope_inv_freq(cfg: TransformerConfig) -> jax.Array:
  """Inverse frequencies (E/2,), with Llama-3 frequency scaling if configured."""
  e = cfg.resolved_head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, e, 2, dtype=F32) / e))
  scaling = cfg.rope_scaling_dict
  if not scaling:
    return inv
  factor = scaling["factor"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  old_ctx = scaling["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv
  low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
  scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_ctx / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x_BxTxNxE: jax.Array, positions_BxT: jax.Array,
               inv_freq: jax.Array) -> jax.Array:
  """Rotate pairs (i, i + E/2) by angle position * inv_freq[i], in f32."""
  angles = positions_BxT.astype(F32)[:, :, None] * inv_freq[None, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x = x_BxTxNxE.astype(F32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """(B, 1, 1, T, S) bool: causal and within the same segment."""
  t = segment_ids_BxT.shape[1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return (causal[None] & same)[:, None, None, :, :]


def smear_keys(k_BxTxKxE: jax.Array, segment_ids_BxT: jax.Array,
               logit_K: jax.Array) -> jax.Array:
  """sigmoid(a) * k_t + (1 - sigmoid(a)) * k_{t-1} per kv head, in f32; the
  previous key counts only within the same segment (zero otherwise)."""
  own = jax.nn.sigmoid(logit_K.astype(F32))[None, None, :, None]
  prev = jnp.pad(k_BxTxKxE, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
  same = jnp.pad(segment_ids_BxT[:, 1:] == segment_ids_BxT[:, :-1],
                 ((0, 0), (1, 0)))[:, :, None, None]
  return own * k_BxTxKxE + (1.0 - own) * jnp.where(same, prev, 0.0)


@dataclasses.dataclass(frozen=True)
class Kernels:
  """Which implementation each piece uses (all compute the same function)."""

  blocked_attention: bool
  cpu_matmul: bool
  weight_grad: str  # see `_cpu_matmul_fn`
  fuse_projections: bool
  scan_layers: bool


def kernels(cfg: TransformerConfig) -> Kernels:
  """Resolves the config's "auto" choices for the default backend."""
  cpu = jax.default_backend() == "cpu"
  pick = lambda v: cpu if v == "auto" else v in ("blocked", "cpu", "on")  # noqa: E731
  # Unrolling pays on CPU (no stacked residuals); with remat, the scan keeps
  # one rematerialized layer body, as the policy intends.
  scan = cfg.layer_loop == "scan" or (cfg.layer_loop == "auto" and not (
      cpu and cfg.remat_policy == "none"))
  # Transposed residuals need a real layer loop: no remat (a rematerialized
  # residual is recomputed next to its dot and the transpose folds away)
  # and >= 2 steps (XLA inlines a 1-step loop after it has checked the bf16
  # dot, and XLA:CPU cannot run the folded one).
  residual = scan and cfg.num_layers >= 2 and cfg.remat_policy == "none"
  weight_grad = cfg.weight_grad
  if weight_grad == "auto":
    # f32: XLA:CPU's own transposing f32 dot measured as fast as the loop.
    weight_grad = ("tn" if to_dtype(cfg.compute_dtype) == jnp.float32
                   else "residual" if residual else "loop")
  elif weight_grad == "residual" and not residual:
    weight_grad = "loop"
  return Kernels(
      blocked_attention=pick(cfg.attention_impl),
      cpu_matmul=pick(cfg.matmul_impl), weight_grad=weight_grad,
      fuse_projections=pick(cfg.fuse_projections), scan_layers=scan)


def _mm(x: jax.Array, w: jax.Array, dtype: jnp.dtype, kern: Kernels,
        weight_grad: str | None = None) -> jax.Array:
  if not kern.cpu_matmul:
    return matmul(x, w, dtype)
  mode = weight_grad or kern.weight_grad
  if mode == "loop" and min(x.shape[1], w.shape[1]) % 2:
    mode = "tn"
  return _cpu_matmul_fn(jnp.dtype(x.dtype), jnp.dtype(w.dtype),
                        jnp.dtype(dtype), mode)(x, w)


class Attention(nnx.Module):
  """Grouped-query attention: H query heads share K key/value heads."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, h, k, e = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
                  cfg.resolved_head_dim)
    pd = to_dtype(cfg.param_dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    self.wq = _param(rngs, (d, h, e), ("embed", "heads", "head_dim"),
                     cfg.init_std, pd)
    self.wk = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"),
                     cfg.init_std, pd)
    self.wv = _param(rngs, (d, k, e), ("embed", "kv_heads", "head_dim"),
                     cfg.init_std, pd)
    self.wo = _param(rngs, (h, e, d), ("heads", "head_dim", "embed"), out_std,
                     pd)
    if cfg.smear_keys:  # logits of the own-key share, 0 = an even mix
      init = nnx.with_partitioning(nnx.initializers.zeros, ("kv_heads",))
      self.smear = nnx.Param(init(rngs.params(), (k,), pd))
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array, inv_freq: jax.Array,
               kern: Kernels) -> jax.Array:
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t, d = x_BxTxD.shape
    h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    g = h // k
    # Projections on the flattened (B*T, D) activations: XLA:CPU emits a much
    # faster backward for 2-D dots than for batched 3-D ones.
    x_NxD = x_BxTxD.reshape(b * t, d)
    wq, wk, wv = (w[...].reshape(d, -1) for w in (self.wq, self.wk, self.wv))
    if kern.fuse_projections:  # one wider dot instead of three narrow ones
      qkv = _mm(x_NxD, jnp.concatenate([wq, wk, wv], axis=1), cd, kern)
      q, kk, v = jnp.split(qkv, [h * e, (h + k) * e], axis=1)
    else:
      q, kk, v = (_mm(x_NxD, w, cd, kern) for w in (wq, wk, wv))
    q = apply_rope(q.reshape(b, t, h, e), positions_BxT, inv_freq) * (
        e ** -0.5)
    kk = apply_rope(kk.reshape(b, t, k, e), positions_BxT, inv_freq)
    if cfg.smear_keys:
      kk = smear_keys(kk, segment_ids_BxT, self.smear[...])
    v = v.reshape(b, t, k, e)
    q_BxTxKxGxE = q.reshape(b, t, k, g, e)
    if kern.blocked_attention:
      out = _blocked_attention_fn(jnp.dtype(cd), cfg.attention_block)(
          q_BxTxKxGxE, kk, v, segment_ids_BxT)
    else:
      scores = jnp.einsum("btkge,bske->bkgts", q_BxTxKxGxE.astype(cd),
                          kk.astype(cd), preferred_element_type=F32)
      scores = jnp.where(attention_mask(segment_ids_BxT), scores,
                         jnp.finfo(F32).min)
      probs = jax.nn.softmax(scores, axis=-1).astype(cd)
      out = jnp.einsum("bkgts,bske->btkge", probs, v.astype(cd),
                       preferred_element_type=F32)
    out_NxD = _mm(out.reshape(b * t, h * e), self.wo[...].reshape(h * e, d),
                  cd, kern)
    return out_NxD.reshape(b, t, d)


class MLP(nnx.Module):
  """SwiGLU: down(silu(x @ gate) * (x @ up))."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.mlp_dim
    pd = to_dtype(cfg.param_dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), cfg.init_std, pd)
    self.w_up = _param(rngs, (d, f), ("embed", "mlp"), cfg.init_std, pd)
    self.w_down = _param(rngs, (f, d), ("mlp", "embed"), out_std, pd)
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, kern: Kernels) -> jax.Array:
    cd = to_dtype(self.cfg.compute_dtype)
    b, t, d = x_BxTxD.shape
    f = self.cfg.mlp_dim
    x_NxD = x_BxTxD.reshape(b * t, d)
    if kern.fuse_projections:
      w_Dx2F = jnp.concatenate([self.w_gate[...], self.w_up[...]], axis=1)
      gate_NxF, up_NxF = jnp.split(_mm(x_NxD, w_Dx2F, cd, kern), [f], axis=1)
    else:
      gate_NxF = _mm(x_NxD, self.w_gate[...], cd, kern)
      up_NxF = _mm(x_NxD, self.w_up[...], cd, kern)
    h_NxF = (jax.nn.silu(gate_NxF) * up_NxF).astype(cd)
    h_NxF = sharding.constrain(h_NxF, ("activation_tokens", "mlp"))
    return _mm(h_NxF, self.w_down[...], cd, kern).reshape(b, t, d)


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    pd = to_dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, cfg.rms_eps, pd)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.rms_eps, pd)
    self.mlp = MLP(cfg, rngs)
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array, inv_freq: jax.Array,
               kern: Kernels) -> jax.Array:
    cd = to_dtype(self.cfg.compute_dtype)
    attn_out = self.attn(self.attn_norm(x_BxTxD, cd), positions_BxT,
                         segment_ids_BxT, inv_freq, kern)
    x = x_BxTxD + checkpoint_name(attn_out, "attn_out").astype(x_BxTxD.dtype)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    mlp_out = self.mlp(self.mlp_norm(x, cd), kern)
    x = x + checkpoint_name(mlp_out, "mlp_out").astype(x.dtype)
    return sharding.constrain(x, ("batch", "length", "embed"))


class Transformer(nnx.Module):
  """Decoder-only LM: tokens (B, T) -> logits (B, T, V)."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    pd = to_dtype(cfg.param_dtype)
    self.cfg = cfg
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                        cfg.init_std, pd)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(r: nnx.Rngs) -> Block:
      return Block(cfg, r)

    self.layers = make_layers(rngs)
    self.final_norm = RMSNorm(cfg.d_model, cfg.rms_eps, pd)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size),
                            ("embed", "vocab"), cfg.init_std, pd)

  def hidden(self, tokens_BxT: jax.Array,
             positions_BxT: jax.Array | None = None,
             segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    """Final normed hidden states (B, T, D) in the compute dtype."""
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones((b, t), dtype=jnp.int32)
    inv_freq = rope_inv_freq(cfg)
    kern = kernels(cfg)
    # Gather from an all-gathered table: a gather from a sharded table
    # makes the SPMD partitioner fully rematerialize the activations.
    table_VxD = sharding.constrain(self.embed[...], (None, None))
    x = jnp.take(table_VxD, tokens_BxT, axis=0).astype(cd)
    x = sharding.constrain(x, ("batch", "length", "embed"))

    graphdef, layer_state = nnx.split(self.layers)

    def body(x_BxTxD, one_layer_state):
      block = nnx.merge(graphdef, one_layer_state)
      return block(x_BxTxD, positions_BxT, segment_ids_BxT, inv_freq,
                   kern), None

    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != "none":
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    if kern.scan_layers:
      x, _ = jax.lax.scan(body, x, layer_state)
    else:  # unrolled: no stacked residuals to write and re-read
      for i in range(cfg.num_layers):
        x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], layer_state))
    return self.final_norm(x, cd)

  def logits_from_hidden(self, h_BxTxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t, d = h_BxTxD.shape
    head = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
    kern = kernels(cfg)
    # The head runs outside any layer loop, so it cannot use "residual".
    logits = _mm(h_BxTxD.reshape(b * t, d), head, cd, kern,
                 "tn" if kern.weight_grad == "tn" else "loop")
    logits = logits.reshape(b, t, cfg.vocab_size).astype(
        to_dtype(cfg.output_dtype))
    return sharding.constrain(logits, ("batch", "length", "vocab"))

  def __call__(self, tokens_BxT: jax.Array,
               positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None) -> jax.Array:
    return self.logits_from_hidden(
        self.hidden(tokens_BxT, positions_BxT, segment_ids_BxT))


def create_model(cfg: TransformerConfig, seed: int = 0) -> Transformer:
  """Builds a model with concrete params (no mesh placement)."""
  with nnx.use_eager_sharding(False):
    return Transformer(cfg, nnx.Rngs(params=seed))


def abstract_model(cfg: TransformerConfig) -> Transformer:
  """Builds the model with ShapeDtypeStructs only (for planning/sharding)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(params=0)))
