"""KV-cache forward of the decoder for fast autoregressive decoding.

Works on the same params pytree as `Transformer` (pure dict). A prefill call
writes the prompt's keys/values into a fixed-size cache; each decode call
adds one token per row and attends to everything written so far. Fixed
shapes throughout, so prefill and the decode step each compile once.

Cache layout: k, v (Y, B, L, K, E) in the compute dtype; `valid` (B, L)
marks written non-padding slots; `index` is the next slot to write.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lifejax.model.config import TransformerConfig, to_dtype
from lifejax.model.transformer import apply_rope, matmul, rope_inv_freq

F32 = jnp.float32


class Cache(NamedTuple):
  k: jax.Array       # (Y, B, L, K, E)
  v: jax.Array       # (Y, B, L, K, E)
  valid: jax.Array   # (B, L) bool
  index: jax.Array   # () int32


def init_cache(cfg: TransformerConfig, batch: int, length: int) -> Cache:
  shape = (cfg.num_layers, batch, length, cfg.num_kv_heads,
           cfg.resolved_head_dim)
  cd = to_dtype(cfg.compute_dtype)
  return Cache(jnp.zeros(shape, cd), jnp.zeros(shape, cd),
               jnp.zeros((batch, length), bool), jnp.zeros((), jnp.int32))


def _rms(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
  x32 = x.astype(F32)
  ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  s = scale.astype(F32).reshape((1,) * (x.ndim - 1) + (-1,))
  return (x32 * jax.lax.rsqrt(ms + eps) * s).astype(dtype)


def forward(cfg: TransformerConfig, params: dict[str, Any], cache: Cache,
            tokens_BxS: jax.Array, positions_BxS: jax.Array,
            mask_BxS: jax.Array) -> tuple[jax.Array, Cache]:
  """Logits (B, S, V) of S new tokens per row, and the updated cache.

  Query s of a row attends to cache slots j <= index + s that are valid
  (written and not padding), so padding never influences real tokens.
  """
  cd = to_dtype(cfg.compute_dtype)
  b, s = tokens_BxS.shape
  length = cache.valid.shape[1]
  h, k, e, d = (cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim,
                cfg.d_model)
  g = h // k
  inv_freq = rope_inv_freq(cfg)
  start = cache.index
  valid = jax.lax.dynamic_update_slice_in_dim(
      cache.valid, mask_BxS.astype(bool), start, axis=1)
  slot_L = jnp.arange(length, dtype=jnp.int32)
  query_S = start + jnp.arange(s, dtype=jnp.int32)
  allowed_BxSxL = (slot_L[None, None, :] <= query_S[None, :, None]) & (
      valid[:, None, :])
  x = jnp.take(params["embed"], tokens_BxS, axis=0).astype(cd)

  def layer(x_BxSxD, xs):
    lp, k_cache, v_cache = xs
    a = lp["attn"]
    hn = _rms(x_BxSxD, lp["attn_norm"]["scale"], cfg.rms_eps, cd)
    x_NxD = hn.reshape(b * s, d)
    q = matmul(x_NxD, a["wq"].reshape(d, h * e), cd).reshape(b, s, h, e)
    kk = matmul(x_NxD, a["wk"].reshape(d, k * e), cd).reshape(b, s, k, e)
    vv = matmul(x_NxD, a["wv"].reshape(d, k * e), cd).reshape(b, s, k, e)
    q = apply_rope(q, positions_BxS, inv_freq) * (e ** -0.5)
    kk = apply_rope(kk, positions_BxS, inv_freq)
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, kk.astype(cd),
                                                  start, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, vv.astype(cd),
                                                  start, axis=1)
    scores = jnp.einsum("bskge,blke->bkgsl",
                        q.reshape(b, s, k, g, e).astype(cd), k_cache,
                        preferred_element_type=F32)
    scores = jnp.where(allowed_BxSxL[:, None, None], scores,
                       jnp.finfo(F32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(cd)
    out = jnp.einsum("bkgsl,blke->bskge", probs, v_cache,
                     preferred_element_type=F32)
    attn = matmul(out.reshape(b * s, h * e), a["wo"].reshape(h * e, d), cd)
    x_BxSxD = x_BxSxD + attn.reshape(b, s, d).astype(x_BxSxD.dtype)
    m = lp["mlp"]
    hn = _rms(x_BxSxD, lp["mlp_norm"]["scale"], cfg.rms_eps, cd).reshape(
        b * s, d)
    gate = matmul(hn, m["w_gate"], cd)
    up = matmul(hn, m["w_up"], cd)
    mlp = matmul((jax.nn.silu(gate) * up).astype(cd), m["w_down"], cd)
    x_BxSxD = x_BxSxD + mlp.reshape(b, s, d).astype(x_BxSxD.dtype)
    return x_BxSxD, (k_cache, v_cache)

  x, (new_k, new_v) = jax.lax.scan(layer, x,
                                   (params["layers"], cache.k, cache.v))
  x = _rms(x, params["final_norm"]["scale"], cfg.rms_eps, cd)
  head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  logits = matmul(x.reshape(b * s, d), head, cd).reshape(
      b, s, cfg.vocab_size)
  return logits, Cache(new_k, new_v, valid, start + s)
