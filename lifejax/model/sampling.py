"""Batched autoregressive sampling: greedy, temperature, top-k, top-p.

Prompts arrive left-padded, (B, P) ids with a (B, P) mask, so every row's
next token is written at the same column. Positions count only real tokens,
and padding sits in its own segment, so a left-padded prompt produces the
same continuation as the unpadded one.

`generate` prefills a KV cache with the prompt and then decodes one token
per step against it (`kv_cache.py`); `generate_no_cache` recomputes the
whole prefix at every step and is the reference the cached path is tested
against. Both also return each drawn token's log-prob under the
distribution it was drawn from (`*_with_logprobs`). `generate_exact`
samples with the learner's own forward at the learner's row shape, so its
log-probs equal the learner's recomputation bit for bit (truly on-policy
RL; N full forwards).

`Distribution` names what a sampler draws from (vocab limit, temperature,
top-k, top-p); `sampled_logprobs` (and `losses.common.target_logprobs`)
score targets under it, so an RL learner
can take its importance ratio against the truncated distribution that was
actually sampled instead of the model's full softmax.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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


# The log-prob given to an id outside a truncated distribution (e^-50 is
# about 2e-22): finite, so exp(x - LOGP_FLOOR) stays below f32's max for
# any log-prob x <= 0.
LOGP_FLOOR = -50.0


@dataclasses.dataclass(frozen=True)
class Distribution:
  """The next-token distribution a sampler draws from: the model's logits
  with ids >= vocab_limit removed (0: none), divided by `temperature`, then
  top-k and top-p (nucleus) truncation, renormalized. temperature = 1,
  top_k = 0, top_p = 1 and vocab_limit = 0 is the model's own softmax."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  vocab_limit: int = 0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError("a Distribution needs temperature > 0 (greedy "
                       f"decoding has no log-probs), got {self.temperature}")

  def is_softmax(self, vocab_size: int) -> bool:
    """Whether this is the model's own softmax over `vocab_size` ids."""
    return (self.temperature == 1.0 and not self.top_k and self.top_p >= 1.0
            and (not self.vocab_limit or self.vocab_limit >= vocab_size))


def untruncated(dist: Distribution | None) -> Distribution | None:
  """`dist` without top-k / top-p: how a reference model is scored. A
  truncated reference gives a policy's draws outside the reference's own
  nucleus probability 0 and the KL to it is infinite."""
  if dist is None:
    return None
  return dataclasses.replace(dist, top_k=0, top_p=1.0)


def distribution(cfg: SamplingConfig) -> Distribution:
  """The distribution `choose` samples from under `cfg` (temperature > 0)."""
  return Distribution(temperature=cfg.temperature, top_k=cfg.top_k,
                      top_p=cfg.top_p, vocab_limit=cfg.vocab_limit)


def limit_vocab(logits_xV: jax.Array, vocab_limit: int) -> jax.Array:
  """Logits with ids >= vocab_limit set to the dtype's lowest value (their
  probability underflows to exactly 0); unchanged when vocab_limit is 0 or
  covers the vocabulary."""
  if not vocab_limit or vocab_limit >= logits_xV.shape[-1]:
    return logits_xV
  ids = jnp.arange(logits_xV.shape[-1])
  return jnp.where(ids < vocab_limit, logits_xV,
                   jnp.finfo(logits_xV.dtype).min)


def filter_logits(logits_xV: jax.Array, cfg: SamplingConfig | Distribution
                  ) -> jax.Array:
  """Applies temperature, top-k and top-p (nucleus) to f32 logits of any
  leading shape (..., V)."""
  x = logits_xV.astype(jnp.float32) / max(cfg.temperature, 1e-6)
  neg = jnp.finfo(jnp.float32).min
  if cfg.top_k:
    kth = jax.lax.top_k(x, cfg.top_k)[0][..., -1:]
    x = jnp.where(x < kth, neg, x)
  if cfg.top_p < 1.0:
    lead, v = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, v)
    order = jnp.argsort(-x2, axis=-1)
    sorted_x = jnp.take_along_axis(x2, order, axis=-1)
    probs = jax.nn.softmax(sorted_x, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token is
    # always kept): drop a token if the mass before it already reaches top_p.
    before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = before >= cfg.top_p
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(x2.shape[0])[:, None], order].set(drop_sorted)
    x = jnp.where(drop, neg, x2).reshape(*lead, v)
  return x


def sampled_logprobs(logits_xV: jax.Array, ids_x: jax.Array,
                     dist: Distribution) -> jax.Array:
  """log q(id) under the distribution `dist` describes (f32, the shape of
  `ids_x`): what a sampler with those settings drew each id with.

  An id the truncation removed has probability 0; it gets LOGP_FLOOR
  instead of about -3e38, so that exp(ref - logp) in a k3 KL estimate or
  an importance ratio stays finite (such ids sit on masked prompt columns,
  or are draws that fell out of the current params' nucleus after an
  update)."""
  x = filter_logits(limit_vocab(logits_xV, dist.vocab_limit), dist)
  logp = jax.nn.log_softmax(x, axis=-1)
  out = jnp.take_along_axis(logp, ids_x[..., None].astype(jnp.int32),
                            axis=-1)[..., 0]
  return jnp.maximum(out, LOGP_FLOOR)


def choose_with_logprob(logits_BxV: jax.Array, rng: jax.Array,
                        cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """(ids (B,) int32, their log-probs (B,) f32 under the distribution they
  were drawn from). Greedy (temperature 0) is a point mass: log-prob 0."""
  x = limit_vocab(logits_BxV, cfg.vocab_limit)
  if cfg.temperature == 0.0:
    tok = jnp.argmax(x, axis=-1).astype(jnp.int32)
    return tok, jnp.zeros(tok.shape, jnp.float32)
  filtered = filter_logits(x, cfg)
  tok = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
  logp = jnp.take_along_axis(jax.nn.log_softmax(filtered, axis=-1),
                             tok[:, None], axis=-1)[:, 0]
  return tok, logp


def choose(logits_BxV: jax.Array, rng: jax.Array, cfg: SamplingConfig
           ) -> jax.Array:
  return choose_with_logprob(logits_BxV, rng, cfg)[0]


def _positions(mask_BxL: jax.Array) -> jax.Array:
  return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=1) - 1, 0)


def _finish(tokens_BxN, done_steps_B, cfg: SamplingConfig, logp_BxN=None):
  n = tokens_BxN.shape[1]
  idx = jnp.arange(n, dtype=jnp.int32)[None, :]
  valid = idx < done_steps_B[:, None]
  out = (jnp.where(valid, tokens_BxN, cfg.pad_id), done_steps_B)
  if logp_BxN is None:
    return out
  return (*out, jnp.where(valid, logp_BxN, 0.0))


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
  init = (buf, mask, jnp.full((b,), n + 1, jnp.int32), rng,
          jnp.zeros((b, n), jnp.float32))

  def body(i, carry):
    buf, mask, length, rng, logp = carry
    pos = _positions(mask)
    logits = model(buf, pos, mask)
    last = jax.lax.dynamic_slice_in_dim(logits, p + i - 1, 1, axis=1)[:, 0]
    rng, sub = jax.random.split(rng)
    tok, tok_logp = choose_with_logprob(last, sub, cfg)
    buf = jax.lax.dynamic_update_slice_in_dim(buf, tok[:, None], p + i, axis=1)
    mask = jax.lax.dynamic_update_slice_in_dim(
        mask, jnp.ones((b, 1), jnp.int32), p + i, axis=1)
    logp = jax.lax.dynamic_update_slice_in_dim(logp, tok_logp[:, None], i,
                                               axis=1)
    stopped_now = (length > n) & _is_stop(tok, cfg.stop_ids)
    length = jnp.where(stopped_now, i + 1, length)
    return buf, mask, length, rng, logp

  buf, _, length, _, logp = jax.lax.fori_loop(0, n, body, init)
  length = jnp.minimum(length, n)
  return _finish(buf[:, p:], length, cfg, logp)


def generate_no_cache(model_or_graphdef: Any, params: Any,
                      prompt_BxP: jax.Array, mask_BxP: jax.Array,
                      cfg: SamplingConfig, rng: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array]:
  """(tokens (B, N) padded with pad_id after the stop token, lengths (B,)).

  Recomputes the full prefix each step: O(N * (P + N)) work. The reference
  for `generate`.
  """
  return generate_no_cache_with_logprobs(model_or_graphdef, params,
                                         prompt_BxP, mask_BxP, cfg, rng)[:2]


def generate_no_cache_with_logprobs(
    graphdef: Any, params: Any, prompt_BxP: jax.Array, mask_BxP: jax.Array,
    cfg: SamplingConfig, rng: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`generate_no_cache` plus each generated token's log-prob (B, N) f32
  under the distribution it was drawn from (0 after the stop token)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _generate_no_cache(graphdef, params, jnp.asarray(prompt_BxP),
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

  def emit(i, out, logp, last, length, rng):
    rng, sub = jax.random.split(rng)
    tok, tok_logp = choose_with_logprob(last, sub, cfg)
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
    logp = jax.lax.dynamic_update_slice_in_dim(logp, tok_logp[:, None], i,
                                               axis=1)
    stopped_now = (length > n) & _is_stop(tok, cfg.stop_ids)
    length = jnp.where(stopped_now, i + 1, length)
    return tok, out, logp, length, rng

  def body(i, carry):
    out, logp, last, next_pos, length, cache, rng = carry
    tok, out, logp, length, rng = emit(i, out, logp, last, length, rng)
    logits, cache = kv_cache.forward(mcfg, dparams, cache, tok[:, None],
                                     next_pos[:, None],
                                     jnp.ones((b, 1), jnp.int32))
    return out, logp, logits[:, 0], next_pos + 1, length, cache, rng

  out = jnp.full((b, n), cfg.pad_id, jnp.int32)
  logp = jnp.zeros((b, n), jnp.float32)
  length = jnp.full((b,), n + 1, jnp.int32)
  if n > 1:
    init = (out, logp, last, next_pos, length, cache, rng)
    out, logp, last, _, length, _, rng = jax.lax.fori_loop(0, n - 1, body,
                                                           init)
  if n:
    _, out, logp, length, _ = emit(n - 1, out, logp, last, length, rng)
  return _finish(out, jnp.minimum(length, n), cfg, logp)


def generate(graphdef: Any, params: Any, prompt_BxP: jax.Array,
             mask_BxP: jax.Array, cfg: SamplingConfig,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(tokens (B, N) padded with pad_id after the stop token, lengths (B,)).

  Prompts are left-padded (B, P) with a (B, P) mask. One prefill over the
  prompt, then N - 1 single-token steps against the KV cache (the last
  token is never fed back); compiled once per (B, P, N) shape.
  """
  return generate_with_logprobs(graphdef, params, prompt_BxP, mask_BxP, cfg,
                                rng)[:2]


def generate_with_logprobs(
    graphdef: Any, params: Any, prompt_BxP: jax.Array, mask_BxP: jax.Array,
    cfg: SamplingConfig, rng: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`generate` plus each generated token's log-prob (B, N) f32 under the
  distribution it was drawn from (0 after the stop token; 0 when greedy).
  These are the sampler's own numbers (KV-cache kernels): an RL run
  compares them with the learner's recomputation (`rollout_metrics`)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return _generate(graphdef, params, jnp.asarray(prompt_BxP),
                   jnp.asarray(mask_BxP), rng, cfg)


@functools.partial(jax.jit, static_argnums=(3,), donate_argnums=(4,))
def _exact_step(logits_BxTxV: jax.Array, col_B: jax.Array, rng: jax.Array,
                cfg: SamplingConfig, columns_BxTxV: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """(the tokens drawn from each row's column col_B[b], `columns` with
  those columns of the logits copied in)."""
  rows = jnp.arange(logits_BxTxV.shape[0])
  last = logits_BxTxV[rows, col_B]
  tok, _ = choose_with_logprob(last, rng, cfg)
  return tok, columns_BxTxV.at[rows, col_B].set(last)


def generate_exact(
    logits_fn: Callable[[dict[str, np.ndarray]], jax.Array],
    logprob_fn: Callable[[jax.Array, np.ndarray], jax.Array],
    prompt_BxP: Any, mask_BxP: Any, cfg: SamplingConfig,
    rng: jax.Array | None = None, *,
    prefix: tuple[Any, Any] | None = None, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens (B, N), lengths (B,), log-probs (B, N)) sampled with the
  learner's own forward at the learner's row shape: batch-invariant
  sampling, for truly on-policy RL.

  logits_fn(rows) -> (B, T, V) logits for LM rows {"tokens", "positions",
  "segment_ids"} laid out as the learner lays out the finished sample: the
  left-padded prompt, then the response contiguously, then padding
  (`rollout.build_rows`); T = `width` (default P + N - 1). `prefix`
  ((B, L) ids, (B,) lengths): response ids already held (earlier turns and
  observations of a multi-turn exchange), placed right after the prompt;
  the new tokens follow them. Step i runs the rows with the first i new
  tokens filled in (later columns padding, segment 0) and draws each row's
  token from the column before its slot. Causal attention and per-row
  kernels make that column the learner's logits for the finished row, bit
  for bit. The drawn columns are collected into one (B, T, V) array and
  logprob_fn(columns, targets) -> (B, T) scores the drawn tokens at the
  learner's shape too (a reduction over V can round differently at another
  shape), so the log-probs equal the learner's recomputation bit for bit
  (tests/rl/test_on_policy.py, tests/rl/test_multiturn.py). The cost: N
  full forwards instead of one prefill and N - 1 cached steps, and a
  (B, T, V) buffer. Same stopping, padding and random stream as
  `generate`.
  """
  rng = jax.random.PRNGKey(0) if rng is None else rng
  prompt = np.asarray(prompt_BxP, np.int32)
  pmask = np.asarray(mask_BxP) > 0
  b, p = prompt.shape
  n = cfg.max_new_tokens
  t = p + n - 1 if width is None else width
  seq = np.full((b, t + 1), cfg.pad_id, np.int32)
  seq[:, :p] = prompt
  real = np.zeros((b, t + 1), bool)
  real[:, :p] = pmask
  start = np.full((b,), p, np.int64)
  if prefix is not None:
    ids_BxL, len_B = np.asarray(prefix[0], np.int32), np.asarray(prefix[1])
    for i in range(b):
      k = int(len_B[i])
      seq[i, p:p + k] = ids_BxL[i, :k]
      real[i, p:p + k] = True
      start[i] = p + k
  if int(start.max()) + n > t + 1:
    raise ValueError(f"rows of width {t} cannot hold the prompt, a prefix "
                     f"of up to {int(start.max()) - p} ids and {n} new ones")
  out = np.full((b, n), cfg.pad_id, np.int32)
  length = np.full((b,), n + 1, np.int32)
  stop_ids = np.asarray(cfg.stop_ids, np.int32)
  columns = None
  rows_b = np.arange(b)
  for i in range(n):
    positions = np.maximum(np.cumsum(real, axis=1) - 1, 0).astype(np.int32)
    rows = {"tokens": seq[:, :t].copy(), "positions": positions[:, :t],
            "segment_ids": real[:, :t].astype(np.int32)}
    logits = logits_fn(rows)
    if columns is None:
      columns = jnp.zeros_like(logits)
    rng, sub = jax.random.split(rng)
    tok, columns = _exact_step(logits, jnp.asarray(start - 1 + i, jnp.int32),
                               sub, cfg, columns)
    tok = np.asarray(tok)
    out[:, i] = tok
    running = length > n
    # A sample's tokens after its stop are padding in the finished rows.
    seq[rows_b, start + i] = np.where(running, tok, cfg.pad_id)
    real[rows_b, start + i] = running
    stopped_now = running & np.isin(tok, stop_ids)
    length = np.where(stopped_now, i + 1, length)
  length = np.minimum(length, n)
  valid = np.arange(n)[None, :] < length[:, None]
  targets = seq[:, 1:t + 1].copy()
  targets[rows_b[:, None], start[:, None] - 1 + np.arange(n)[None, :]] = out
  logp_BxT = np.asarray(logprob_fn(columns, targets), np.float32)
  logp = logp_BxT[rows_b[:, None], start[:, None] - 1 + np.arange(n)[None, :]]
  return (np.where(valid, out, cfg.pad_id), length,
          np.where(valid, logp, 0.0).astype(np.float32))
