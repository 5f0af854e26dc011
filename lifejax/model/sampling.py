"""Batched autoregressive sampling: greedy, temperature, top-k, top-p.

Prompts arrive left-padded, (B, P) ids with a (B, P) mask, so every row's
next token is written at the same column. Positions count only real tokens,
and padding sits in its own segment, so a left-padded prompt produces the
same continuation as the unpadded one.

`generate` prefills a KV cache with the prompt and then decodes one token
per step against it (`kv_cache.py`); `generate_no_cache` recomputes the
whole prefix at every step and is the reference the cached path is tested
against.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lifejax.model import kv_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 0.0     # 0 = greedy
  top_k: int = 0               # 0 = off
  top_p: float = 1.0           # 1 = off
  stop_ids: tuple[int, ...] = ()
  pad_id: int = 0
  # Ids >= vocab_limit are never sampled (0 = no limit): a model's vocab may
  # be larger than its tokenizer's (e.g. a SentencePiece model that learned
  # fewer pieces than asked), and those rows are untrained.
  vocab_limit: int = 0


def filter_logits(logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Applies temperature, top-k and top-p (nucleus) to f32 logits."""
  x = logits_BxV.astype(jnp.float32) / max(cfg.temperature, 1e-6)
  neg = jnp.finfo(jnp.float32).min
  if cfg.top_k:
    kth = jax.lax.top_k(x, cfg.top_k)[0][:, -1:]
    x = jnp.where(x < kth, neg, x)
  if cfg.top_p < 1.0:
    order = jnp.argsort(-x, axis=-1)
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    probs = jax.nn.softmax(sorted_x, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token is
    # always kept): drop a token if the mass before it already reaches top_p.
    before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = before >= cfg.top_p
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(x.shape[0])[:, None], order].set(drop_sorted)
    x = jnp.where(drop, neg, x)
  return x


def choose(logits_BxV: jax.Array, rng: jax.Array, cfg: SamplingConfig
           ) -> jax.Array:
  if cfg.vocab_limit and cfg.vocab_limit < logits_BxV.shape[-1]:
    ids = jnp.arange(logits_BxV.shape[-1])[None, :]
    logits_BxV = jnp.where(ids < cfg.vocab_limit, logits_BxV,
                           jnp.finfo(logits_BxV.dtype).min)
  if cfg.temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits_BxV, cfg),
                                axis=-1).astype(jnp.int32)


def _positions(mask_BxL: jax.Array) -> jax.Array:
  return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=1) - 1, 0)


def _finish(tokens_BxN, done_steps_B, cfg: SamplingConfig):
  n = tokens_BxN.shape[1]
  idx = jnp.arange(n, dtype=jnp.int32)[None, :]
  valid = idx < done_steps_B[:, None]
  return jnp.where(valid, tokens_BxN, cfg.pad_id), done_steps_B


def _is_stop(tok_B: jax.Array, stop_ids: Sequence[int]) -> jax.Array:
  if not stop_ids:
    return jnp.zeros(tok_B.shape, bool)
  return jnp.any(tok_B[:, None] == jnp.asarray(stop_ids, jnp.int32)[None, :],
                 axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _generate_no_cache(graphdef, params, prompt_BxP, mask_BxP, rng,
                       cfg: SamplingConfig):
  model = nnx.merge(graphdef, params)
  b, p = prompt_BxP.shape
  n = cfg.max_new_tokens
  buf = jnp.concatenate([prompt_BxP.astype(jnp.int32),
                         jnp.full((b, n), cfg.pad_id, jnp.int32)], axis=1)
  mask = jnp.concatenate([mask_BxP.astype(jnp.int32),
                          jnp.zeros((b, n), jnp.int32)], axis=1)

  # `length` = n + 1 means "not stopped yet"; when a stop id is produced it
  # becomes the number of generated tokens including the stop token.
  init = (buf, mask, jnp.full((b,), n + 1, jnp.int32), rng)

  def body(i, carry):
    buf, mask, length, rng = carry
    pos = _positions(mask)
    logits = model(buf, pos, mask)
    last = jax.lax.dynamic_slice_in_dim(logits, p + i - 1, 1, axis=1)[:, 0]
    rng, sub = jax.random.split(rng)
    tok = choose(last, sub, cfg)
    buf = jax.lax.dynamic_update_slice_in_dim(buf, tok[:, None], p + i, axis=1)
    mask = jax.lax.dynamic_update_slice_in_dim(
        mask, jnp.ones((b, 1), jnp.int32), p + i, axis=1)
    stopped_now = (length > n) & _is_stop(tok, cfg.stop_ids)
    length = jnp.where(stopped_now, i + 1, length)
    return buf, mask, length, rng

  buf, _, length, _ = jax.lax.fori_loop(0, n, body, init)
  length = jnp.minimum(length, n)
  return _finish(buf[:, p:], length, cfg)


def generate_no_cache(model_or_graphdef: Any, params: Any,
                      prompt_BxP: jax.Array, mask_BxP: jax.Array,
                      cfg: SamplingConfig, rng: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array]:
  """(tokens (B, N) padded with pad_id after the stop token, lengths (B,)).

  Recomputes the full prefix each step: O(N * (P + N)) work. The reference
  for `generate`.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _generate_no_cache(model_or_graphdef, params, jnp.asarray(prompt_BxP),
                            jnp.asarray(mask_BxP), rng, cfg)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _generate(graphdef, params, prompt_BxP, mask_BxP, rng, cfg: SamplingConfig):
  mcfg = nnx.merge(graphdef, params).cfg
  b, p = prompt_BxP.shape
  n = cfg.max_new_tokens
  dparams = kv_cache.decode_params(mcfg, params)
  mask = mask_BxP.astype(jnp.int32)
  pos_BxP = _positions(mask)
  # Left padding: the last column holds every row's last prompt token, and
  # only its logits are needed. The last new token is never fed back: N - 1
  # decode steps follow, so the cache needs P + N - 1 slots.
  logits, cache = kv_cache.prefill(mcfg, dparams,
                                   prompt_BxP.astype(jnp.int32), pos_BxP,
                                   mask, p + max(n - 1, 0), last_only=True)
  last = logits[:, 0]
  next_pos = pos_BxP[:, -1] + 1

  def emit(i, out, last, length, rng):
    rng, sub = jax.random.split(rng)
    tok = choose(last, sub, cfg)
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
    stopped_now = (length > n) & _is_stop(tok, cfg.stop_ids)
    length = jnp.where(stopped_now, i + 1, length)
    return tok, out, length, rng

  def body(i, carry):
    out, last, next_pos, length, cache, rng = carry
    tok, out, length, rng = emit(i, out, last, length, rng)
    logits, cache = kv_cache.forward(mcfg, dparams, cache, tok[:, None],
                                     next_pos[:, None],
                                     jnp.ones((b, 1), jnp.int32))
    return out, logits[:, 0], next_pos + 1, length, cache, rng

  out = jnp.full((b, n), cfg.pad_id, jnp.int32)
  length = jnp.full((b,), n + 1, jnp.int32)
  if n > 1:
    init = (out, last, next_pos, length, cache, rng)
    out, last, _, length, _, rng = jax.lax.fori_loop(0, n - 1, body, init)
  if n:
    _, out, length, _ = emit(n - 1, out, last, length, rng)
  return _finish(out, jnp.minimum(length, n), cfg)


def generate(graphdef: Any, params: Any, prompt_BxP: jax.Array,
             mask_BxP: jax.Array, cfg: SamplingConfig,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(tokens (B, N) padded with pad_id after the stop token, lengths (B,)).

  Prompts are left-padded (B, P) with a (B, P) mask. One prefill over the
  prompt, then N - 1 single-token steps against the KV cache (the last
  token is never fed back); compiled once per (B, P, N) shape.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _generate(graphdef, params, jnp.asarray(prompt_BxP),
                   jnp.asarray(mask_BxP), rng, cfg)
