"""Generation from a run's LM: a graphdef and params, the run's tokenizer and
chat template, and a SamplingConfig bound into one function.

  greedy_config / chat_config   the SamplingConfig evaluations use (greedy)
  make_generate                 generate(ids (B, P), mask (B, P)) -> tokens
  make_sampler                  sample(ids, mask, rng), in fixed-size chunks
  generate_ids                  token prompts -> (tokens, lengths), batched
  generate_responses            records -> answer texts (chat template)

Prompts are left-padded and fed in fixed-size batches
(`batching.map_padded`); evaluation batches are padded to a few bucketed
widths (`generate_ids`), so each sampler compiles once per width.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lifejax.data import batching, chat, chat_render, prompts
from lifejax.eval import instruct
from lifejax.model import sampling

# sample_fn(graphdef, params, prompt_BxP, mask_BxP, cfg, rng) ->
#   (tokens_BxN padded after the stop token, lengths_B): the model's sampler.
SampleFn = Callable[..., tuple[jax.Array, jax.Array]]
# generate(ids_BxP int32, mask_BxP int32) -> (tokens_BxN, lengths_B).
Generate = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]
# sample(ids_BxP, mask_BxP, rng) -> host (tokens_BxN, lengths_B).
Sample = Callable[[np.ndarray, np.ndarray, jax.Array],
                  tuple[np.ndarray, np.ndarray]]


def default_sample_fn(with_logprobs: bool = False) -> SampleFn:
  """The KV-cache sampler (with_logprobs: also each drawn token's log-prob,
  see `sampling.generate_with_logprobs`)."""
  return (sampling.generate_with_logprobs if with_logprobs
          else sampling.generate)


def greedy_config(tokenizer: chat_render.Tokenizer, stop_ids: Sequence[int],
                  max_new_tokens: int) -> sampling.SamplingConfig:
  """Greedy decoding of at most `max_new_tokens`, stopping at `stop_ids`,
  never emitting ids past the tokenizer's vocabulary."""
  return sampling.SamplingConfig(
      max_new_tokens=max_new_tokens, stop_ids=tuple(stop_ids),
      pad_id=tokenizer.pad_id, vocab_limit=tokenizer.vocab_size)


def chat_config(template: chat.ChatTemplate, tokenizer: chat_render.Tokenizer,
                max_new_tokens: int) -> sampling.SamplingConfig:
  """Greedy decoding of one assistant turn: stops at the template's
  end-of-turn marker (or EOS)."""
  return greedy_config(tokenizer, chat_render.stop_ids(template, tokenizer),
                       max_new_tokens)


def make_generate(graphdef: Any, params: Any, cfg: sampling.SamplingConfig,
                  sample_fn: SampleFn | None = None) -> Generate:
  """generate(ids, mask) with the model `graphdef` + `params` (host or
  device) and `cfg`; the sampler's default rng (greedy needs none)."""
  fn = sample_fn or sampling.generate

  def generate(ids_BxP, mask_BxP):
    return fn(graphdef, params, ids_BxP, mask_BxP, cfg)

  return generate


def make_sampler(sample_fn: SampleFn, graphdef: Any, params: Any,
                 cfg: sampling.SamplingConfig, chunk_size: int = 0) -> Sample:
  """sample(prompt_BxP, mask_BxP, rng) with `sample_fn` on chunks of
  `chunk_size` rows (0: all at once); chunk i uses fold_in(rng, i)."""

  def sample(prompt_BxP, mask_BxP, rng):
    def one(chunk, i):
      return sample_fn(graphdef, params, chunk["prompt"], chunk["mask"], cfg,
                       jax.random.fold_in(rng, i))
    return batching.map_padded(one, {"prompt": prompt_BxP, "mask": mask_BxP},
                               chunk_size)

  return sample


# Prompt widths are rounded up to a multiple of this (at most prompt_len).
PROMPT_BUCKET = 64


def generate_ids(generate: Generate, prompt_rows: Sequence[Sequence[int]],
                 prompt_len: int, batch_size: int, pad_id: int,
                 bucket: int = PROMPT_BUCKET
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Host (tokens (N, max_new), lengths (N,)) for N token prompts, in
  batches of `batch_size` (the last one padded with copies of its first
  prompt, their outputs dropped), returned in the prompts' order.

  Prompts longer than `prompt_len` keep their last tokens. With `bucket`,
  the prompts are batched shortest first and each batch is left-padded
  only to its longest prompt rounded up to a multiple of `bucket` (at most
  prompt_len): short prompts skip most of the padded prefill and the cache
  is shorter, at one compilation per width used. The positions come from
  the mask, so a prompt's answer does not depend on its padding (up to
  float rounding). bucket 0: every batch padded to prompt_len."""
  n = len(prompt_rows)
  if not n:
    raise ValueError("generate_ids needs at least one prompt")
  size = batch_size or n
  lens = [min(len(r), prompt_len) for r in prompt_rows]
  order = (np.argsort(lens, kind="stable") if bucket
           else np.arange(n))
  toks, lengths = [None] * n, [None] * n
  for start in range(0, n, size):
    idx = order[start:start + size]
    width = prompt_len
    if bucket:
      longest = max(max(lens[i] for i in idx), 1)
      width = min(prompt_len, -(-longest // bucket) * bucket)
    ids, mask = prompts.left_pad([prompt_rows[i] for i in idx], width,
                                 pad_id)
    t, ln = batching.map_padded(lambda c, _: generate(*c), (ids, mask), size)
    for j, i in enumerate(idx):
      toks[i], lengths[i] = t[j], ln[j]
  return np.stack(toks), np.stack(lengths)


def generate_responses(generate: Generate, tokenizer: chat_render.Tokenizer,
                       template: chat.ChatTemplate,
                       records: Sequence[Mapping[str, Any]],
                       spec: instruct.GenerationSpec) -> list[str]:
  """The answer text to each record's prompt (chat template rendering, stop
  tokens removed), generated in batches of spec.batch_size."""
  if not records:
    return []
  stops = set(chat_render.stop_ids(template, tokenizer))
  rows = [prompts.prompt_ids(template, tokenizer, r) for r in records]
  toks, lengths = generate_ids(generate, rows, spec.prompt_len,
                               spec.batch_size, tokenizer.pad_id)
  return [tokenizer.decode([int(t) for t in toks[i, :lengths[i]]
                            if int(t) not in stops])
          for i in range(len(records))]
