"""A Llama-style decoder LM in Flax NNX.

RMSNorm, rotary embeddings (the rotate-half layout used by HuggingFace Llama),
SwiGLU MLP, grouped-query attention, optional tied embeddings, causal
attention restricted to equal `segment_ids` (packed documents never attend to
each other), layers stacked with `nnx.vmap` and run with `jax.lax.scan` under a
named remat policy. Shape letters: see `lifejax/__init__.py`.

Every parameter carries logical axis names (`nnx.with_partitioning`); the
mapping to mesh axes lives in `lifejax/sharding.py`. Models are built with
flax's eager sharding off, so the names are metadata only until the training
code derives shardings from them.
"""

from __future__ import annotations

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
    self.cfg = cfg

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               mask_Bx1x1xTxS: jax.Array, inv_freq: jax.Array) -> jax.Array:
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t, d = x_BxTxD.shape
    h, k, e = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    g = h // k
    # Projections on the flattened (B*T, D) activations: XLA:CPU emits a much
    # faster backward for 2-D dots than for batched 3-D ones.
    x_NxD = x_BxTxD.reshape(b * t, d)
    q = matmul(x_NxD, self.wq[...].reshape(d, h * e), cd).reshape(b, t, h, e)
    kk = matmul(x_NxD, self.wk[...].reshape(d, k * e), cd).reshape(b, t, k, e)
    v = matmul(x_NxD, self.wv[...].reshape(d, k * e), cd).reshape(b, t, k, e)
    q = apply_rope(q, positions_BxT, inv_freq) * (e ** -0.5)
    kk = apply_rope(kk, positions_BxT, inv_freq)
    q_BxTxKxGxE = q.reshape(b, t, k, g, e).astype(cd)
    scores = jnp.einsum("btkge,bske->bkgts", q_BxTxKxGxE, kk.astype(cd),
                        preferred_element_type=F32)
    scores = jnp.where(mask_Bx1x1xTxS, scores, jnp.finfo(F32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cd)
    out = jnp.einsum("bkgts,bske->btkge", probs, v.astype(cd),
                     preferred_element_type=F32)
    out_NxD = matmul(out.reshape(b * t, h * e), self.wo[...].reshape(h * e, d),
                     cd)
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

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    cd = to_dtype(self.cfg.compute_dtype)
    b, t, d = x_BxTxD.shape
    x_NxD = x_BxTxD.reshape(b * t, d)
    gate_NxF = matmul(x_NxD, self.w_gate[...], cd)
    up_NxF = matmul(x_NxD, self.w_up[...], cd)
    h_NxF = (jax.nn.silu(gate_NxF) * up_NxF).astype(cd)
    h_NxF = sharding.constrain(h_NxF, ("activation_tokens", "mlp"))
    return matmul(h_NxF, self.w_down[...], cd).reshape(b, t, d)


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
               mask: jax.Array, inv_freq: jax.Array) -> jax.Array:
    cd = to_dtype(self.cfg.compute_dtype)
    attn_out = self.attn(self.attn_norm(x_BxTxD, cd), positions_BxT, mask,
                         inv_freq)
    x = x_BxTxD + checkpoint_name(attn_out, "attn_out").astype(x_BxTxD.dtype)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    mlp_out = self.mlp(self.mlp_norm(x, cd))
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
    mask = attention_mask(segment_ids_BxT)
    inv_freq = rope_inv_freq(cfg)
    # Gather from an all-gathered table: a gather from a sharded table
    # makes the SPMD partitioner fully rematerialize the activations.
    table_VxD = sharding.constrain(self.embed[...], (None, None))
    x = jnp.take(table_VxD, tokens_BxT, axis=0).astype(cd)
    x = sharding.constrain(x, ("batch", "length", "embed"))

    graphdef, layer_state = nnx.split(self.layers)

    def body(x_BxTxD, one_layer_state):
      block = nnx.merge(graphdef, one_layer_state)
      return block(x_BxTxD, positions_BxT, mask, inv_freq), None

    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != "none":
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x, _ = jax.lax.scan(body, x, layer_state)
    return self.final_norm(x, cd)

  def logits_from_hidden(self, h_BxTxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    cd = to_dtype(cfg.compute_dtype)
    b, t, d = h_BxTxD.shape
    head = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
    logits = matmul(h_BxTxD.reshape(b * t, d), head, cd)
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
