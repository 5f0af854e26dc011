"""KV-cache forward of the decoder for fast autoregressive decoding.

Works on the params pytree of `Transformer` (pure dict), rearranged once per
sampling call by `decode_params`. `prefill` runs the prompt and returns a
fixed-size cache holding its keys/values; each `forward` call adds tokens
(one per row when decoding) and attends to everything written so far. Fixed
shapes throughout, so prefill and the decode step each compile once.

Cache layout: one k and one v array per layer, (B, K, L, E), so that a
decode step writes one slot of each in place and the attention dots read
them without a transpose (measured on XLA:CPU: a stacked (Y, B, L, K, E)
cache run through a layer scan was copied and transposed on every step,
3x slower; experiments/bench_sampling/README.md). `valid` (B, L) marks
written non-padding slots; `index` is the next slot to write.

With `smear_keys`, the cache holds the smeared keys attention reads, and
`prev_k` each layer's last raw (rotated, f32) key, the previous-token half
of the next key's mix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lifejax.model import moe
from lifejax.model.config import TransformerConfig, to_dtype
from lifejax.model.transformer import (ACTIVATIONS, apply_rope,
                                      embedding_scale, matmul, rope_inv_freq,
                                      smear_keys)

F32 = jnp.float32


class Cache(NamedTuple):
  k: tuple[jax.Array, ...]   # Y x (B, K, L, E)
  v: tuple[jax.Array, ...]   # Y x (B, K, L, E)
  valid: jax.Array           # (B, L) bool
  index: jax.Array           # () int32
  prev_k: tuple[jax.Array, ...] = ()  # Y x (B, K, E) f32, smear_keys only


def cache_dtype(cfg: TransformerConfig) -> jnp.dtype:
  """Storage dtype of the cache: the compute dtype, except f32 on CPU.

  XLA:CPU runs a 16-bit dynamic-update-slice as a conversion of the whole
  buffer to f32 and back, so a bf16 cache would be rewritten in full on
  every step. An f32 cache holding values rounded to the compute dtype is
  updated in place, and attention over it (inputs rounded to the compute
  dtype, f32 accumulation) forms the same products as 16-bit dots.
  """
  if jax.default_backend() == "cpu":
    return jnp.dtype(F32)
  return jnp.dtype(to_dtype(cfg.compute_dtype))


def init_cache(cfg: TransformerConfig, batch: int, length: int) -> Cache:
  cfg.check_length(length)
  shape = (batch, cfg.num_kv_heads, length, cfg.resolved_head_dim)
  dtype = cache_dtype(cfg)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  prev = tuple(jnp.zeros((batch, cfg.num_kv_heads, cfg.resolved_head_dim),
                         F32) for _ in range(cfg.num_layers)
               ) if cfg.smear_keys else ()
  return Cache(zeros, zeros, jnp.zeros((batch, length), bool),
               jnp.zeros((), jnp.int32), prev)


def decode_params(cfg: TransformerConfig, params: dict[str, Any]
                  ) -> dict[str, Any]:
  """`Transformer` params rearranged for decoding; call once, outside loops.

  Layers are unstacked into a list (the layer loop is unrolled, so no step
  slices the stacked weights), q/k/v and gate/up are concatenated into one
  wider matrix each, and matmul weights are cast to the compute dtype (the
  cast `matmul` would otherwise repeat on every step). Norm scales and the
  embedding table keep their dtype.
  """
  cd = to_dtype(cfg.compute_dtype)
  d = cfg.d_model
  stacked = params["layers"]
  layers = []
  for i in range(cfg.num_layers):
    lp = jax.tree.map(lambda x, i=i: x[i], stacked)
    a, m = lp["attn"], lp["mlp"]
    layers.append({
        **({"smear": a["smear"]} if cfg.smear_keys else {}),
        **({"b_qkv": jnp.concatenate([a[n].reshape(-1) for n in
                                      ("bq", "bk", "bv")]).astype(F32)}
           if cfg.qkv_bias else {}),
        **({"q_norm": a["q_norm"]["scale"], "k_norm": a["k_norm"]["scale"]}
           if cfg.qk_norm else {}),
        "attn_norm": lp["attn_norm"]["scale"],
        "mlp_norm": lp["mlp_norm"]["scale"],
        "w_qkv": jnp.concatenate(
            [a[w].reshape(d, -1) for w in ("wq", "wk", "wv")],
            axis=1).astype(cd),
        "wo": a["wo"].reshape(-1, d).astype(cd),
        **({"w_router": m["w_router"].astype(cd),
            "w_gate": m["w_gate"].astype(cd), "w_up": m["w_up"].astype(cd)}
           if cfg.num_experts else
           {"w_gate_up": jnp.concatenate([m["w_gate"], m["w_up"]],
                                         axis=1).astype(cd)}),
        "w_down": m["w_down"].astype(cd),
    })
  head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  return {"embed": params["embed"], "layers": layers,
          "final_norm": params["final_norm"]["scale"],
          "head": head.astype(cd)}


def _rms(x: jax.Array, scale: jax.Array, eps: float, dtype: jnp.dtype,
         offset: float = 0.0) -> jax.Array:
  x32 = x.astype(F32)
  ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  s = scale.astype(F32).reshape((1,) * (x.ndim - 1) + (-1,))
  if offset:
    s = offset + s
  return (x32 * jax.lax.rsqrt(ms + eps) * s).astype(dtype)


# attention(layer, q (B, S, K, G, E) pre-scaled, k, v (B, S, K, E), the
#   layer's smear logits (K,) or None), all f32 -> (B * S, H * E) f32. The
#   keys are rotated, not yet smeared.
Attention = Callable[[int, jax.Array, jax.Array, jax.Array, Any], jax.Array]


def _attend(q_BxSxKxGxE: jax.Array, k_BxKxLxE: jax.Array,
            v_BxKxLxE: jax.Array, allowed_BxSxL: jax.Array,
            round_to: jnp.dtype, dtype: jnp.dtype) -> jax.Array:
  """Masked softmax attention; dot inputs rounded to `round_to`, then cast
  to `dtype` (the keys/values already are), f32 accumulation."""
  b, s, k, g, e = q_BxSxKxGxE.shape
  length = k_BxKxLxE.shape[2]
  # Batch dims (b, k) lead in both dots; rows are (s, g).
  batch = ((0, 1), (0, 1))
  q_BxKxRxE = q_BxSxKxGxE.transpose(0, 2, 1, 3, 4).reshape(
      b, k, s * g, e).astype(round_to).astype(dtype)
  scores = jax.lax.dot_general(q_BxKxRxE, k_BxKxLxE, (((3,), (3,)), batch),
                               preferred_element_type=F32)
  scores = jnp.where(allowed_BxSxL[:, None, :, None, :],
                     scores.reshape(b, k, s, g, length), jnp.finfo(F32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(round_to).astype(dtype)
  out = jax.lax.dot_general(probs.reshape(b, k, s * g, length), v_BxKxLxE,
                            (((3,), (2,)), batch), preferred_element_type=F32)
  return out.reshape(b, k, s, g, e).transpose(0, 2, 1, 3, 4).reshape(
      b * s, k * g * e)


def _decoder(cfg: TransformerConfig, params: dict[str, Any],
             tokens_BxS: jax.Array, positions_BxS: jax.Array,
             attention: Attention, last_only: bool) -> jax.Array:
  """Logits (B, S or 1, V): the layer stack with `attention` plugged in."""
  cd = to_dtype(cfg.compute_dtype)
  b, s = tokens_BxS.shape
  h, k, e, d = (cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim,
                cfg.d_model)
  eps, offset = cfg.rms_eps, cfg.norm_offset
  act = ACTIVATIONS[cfg.mlp_activation]
  inv_freq = rope_inv_freq(cfg)
  x = jnp.take(params["embed"], tokens_BxS, axis=0)
  scale = embedding_scale(cfg)
  x = (x if scale is None else x * scale).astype(cd)
  for i, lp in enumerate(params["layers"]):
    hn = _rms(x, lp["attn_norm"], eps, cd, offset).reshape(b * s, d)
    qkv = matmul(hn, lp["w_qkv"], cd)
    if "b_qkv" in lp:
      qkv = qkv + lp["b_qkv"][None, :]
    q, kk, vv = jnp.split(qkv, [h * e, (h + k) * e], axis=1)
    q, kk = q.reshape(b, s, h, e), kk.reshape(b, s, k, e)
    if "q_norm" in lp:
      q = _rms(q, lp["q_norm"], eps, F32, offset)
      kk = _rms(kk, lp["k_norm"], eps, F32, offset)
    q = apply_rope(q, positions_BxS, inv_freq) * (e ** -0.5)
    kk = apply_rope(kk, positions_BxS, inv_freq)
    out = attention(i, q.reshape(b, s, k, h // k, e), kk,
                    vv.reshape(b, s, k, e), lp.get("smear"))
    x = x + matmul(out, lp["wo"], cd).reshape(b, s, d).astype(x.dtype)
    hn = _rms(x, lp["mlp_norm"], eps, cd, offset).reshape(b * s, d)
    if cfg.num_experts:  # dropless, whatever the capacity (moe.py)
      _, experts, gates = moe.route(matmul(hn, lp["w_router"], cd),
                                    cfg.experts_per_token)
      mlp = moe.grouped_experts(hn, experts, gates, lp["w_gate"], lp["w_up"],
                                lp["w_down"], act, cd)
    else:
      gate, up = jnp.split(matmul(hn, lp["w_gate_up"], cd), 2, axis=1)
      mlp = matmul((act(gate) * up).astype(cd), lp["w_down"], cd)
    x = x + mlp.reshape(b, s, d).astype(x.dtype)
  if last_only:
    x = x[:, -1:]
  x = _rms(x, params["final_norm"], eps, cd, offset)
  return matmul(x.reshape(-1, d), params["head"], cd).reshape(
      b, x.shape[1], cfg.vocab_size)


def _to_cache(x_BxSxKxE: jax.Array, cfg: TransformerConfig,
              dtype: jnp.dtype) -> jax.Array:
  """Keys/values as the cache holds them: (B, K, S, E), rounded to the
  compute dtype, stored in `dtype`."""
  return x_BxSxKxE.astype(to_dtype(cfg.compute_dtype)).astype(
      dtype).transpose(0, 2, 1, 3)


def prefill(cfg: TransformerConfig, params: dict[str, Any],
            tokens_BxP: jax.Array, positions_BxP: jax.Array,
            mask_BxP: jax.Array, length: int, *, last_only: bool = False
            ) -> tuple[jax.Array, Cache]:
  """Logits (B, P, V) of a prompt, and a new cache of `length` >= P slots
  holding it.

  `params` come from `decode_params`. The cache starts empty, so the prompt
  attends to itself only (P keys, not `length`), with dots in the compute
  dtype; query p of a row attends to prompt tokens j <= p with mask 1.
  `last_only` returns the logits of the last column only, (B, 1, V) (the
  next token after a left-padded prompt).
  """
  cd = to_dtype(cfg.compute_dtype)
  b, p = tokens_BxP.shape
  cfg.check_length(length)
  mask = mask_BxP.astype(bool)
  causal_PxP = jnp.tril(jnp.ones((p, p), bool))
  allowed_BxPxP = causal_PxP[None] & mask[:, None, :]
  dtype = cache_dtype(cfg)
  keys, values = [], []

  prev = []

  def attention(i, q, k, v, smear):
    del i
    if smear is not None:
      prev.append(k[:, -1])
      k = smear_keys(k, mask, smear)
    k, v = _to_cache(k, cfg, cd), _to_cache(v, cfg, cd)
    keys.append(k.astype(dtype))
    values.append(v.astype(dtype))
    return _attend(q, k, v, allowed_BxPxP, cd, cd)

  logits = _decoder(cfg, params, tokens_BxP, positions_BxP, attention,
                    last_only)
  pad = ((0, 0), (0, 0), (0, length - p), (0, 0))
  valid = jnp.pad(mask, ((0, 0), (0, length - p)))
  return logits, Cache(tuple(jnp.pad(x, pad) for x in keys),
                       tuple(jnp.pad(x, pad) for x in values), valid,
                       jnp.asarray(p, jnp.int32), tuple(prev))


def forward(cfg: TransformerConfig, params: dict[str, Any], cache: Cache,
            tokens_BxS: jax.Array, positions_BxS: jax.Array,
            mask_BxS: jax.Array) -> tuple[jax.Array, Cache]:
  """Logits (B, S, V) of S new tokens per row, and the updated cache.

  `params` come from `decode_params`. Query s of a row attends to cache
  slots j <= index + s that are valid (written and not padding), so padding
  never influences real tokens.
  """
  cd = to_dtype(cfg.compute_dtype)
  dtype = cache.k[0].dtype
  s = tokens_BxS.shape[1]
  length = cache.valid.shape[1]
  start = cache.index
  valid = jax.lax.dynamic_update_slice_in_dim(
      cache.valid, mask_BxS.astype(bool), start, axis=1)
  slot_L = jnp.arange(length, dtype=jnp.int32)
  query_S = start + jnp.arange(s, dtype=jnp.int32)
  allowed_BxSxL = (slot_L[None, None, :] <= query_S[None, :, None]) & (
      valid[:, None, :])
  keys, values, prev = list(cache.k), list(cache.v), list(cache.prev_k)
  # The previous token of the first new one is the last slot written.
  prev_valid_B = jnp.where(
      start > 0, jax.lax.dynamic_index_in_dim(cache.valid, start - 1, axis=1,
                                              keepdims=False), False)
  seg_BxS1 = jnp.concatenate([prev_valid_B[:, None], mask_BxS.astype(bool)],
                             axis=1)

  def attention(i, q, k, v, smear):
    if smear is not None:
      # Smear over [previous raw key, new keys]; a slot smears with its
      # predecessor when both are real tokens (the no-cache model puts
      # padding in segment 0 and real tokens in segment 1).
      seg = jnp.where(seg_BxS1, 1, -jnp.arange(s + 1)[None, :])
      k_ext = jnp.concatenate([prev[i][:, None], k], axis=1)
      prev[i] = k[:, -1]
      k = smear_keys(k_ext, seg, smear)[:, 1:]
    keys[i] = jax.lax.dynamic_update_slice(
        keys[i], _to_cache(k, cfg, dtype), (0, 0, start, 0))
    values[i] = jax.lax.dynamic_update_slice(
        values[i], _to_cache(v, cfg, dtype), (0, 0, start, 0))
    return _attend(q, keys[i], values[i], allowed_BxSxL, cd, dtype)

  logits = _decoder(cfg, params, tokens_BxS, positions_BxS, attention,
                    last_only=False)
  return logits, Cache(tuple(keys), tuple(values), valid, start + s,
                       tuple(prev))
