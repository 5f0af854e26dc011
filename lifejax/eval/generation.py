"""Generation from a run's LM: a graphdef and params, the run's tokenizer and
chat template, and a SamplingConfig bound into one function.

  greedy_config / chat_config   the SamplingConfig evaluations use (greedy)
  make_generate                 generate(ids (B, P), mask (B, P)) -> tokens
  make_sampler                  sample(ids, mask, rng), in fixed-size chunks
  Placement                     which local devices a sampler runs on
  generate_ids                  token prompts -> (tokens, lengths), batched
  generate_responses            records -> answer texts (chat template)

Prompts are left-padded and fed in fixed-size batches
(`batching.map_padded`); evaluation batches are padded to a few bucketed
widths (`generate_ids`), so each sampler compiles once per width.

`devices` (GenerationSpec.devices, RolloutConfig.sampling_devices) runs a
sampler data parallel: the params replicated on each local device, each
batch's rows split over them. On a CPU given one XLA host device per core
(`make demo` does), the small per-token matrix products of a decode step
then run on every core instead of one (experiments/bench_sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

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


# Replicated params may take at most this share of the memory they share
# (a device's own; on a CPU, host RAM for all host devices together).
_REPLICA_MEMORY_SHARE = 0.5


def _memory_bytes(devices: Sequence[Any]) -> tuple[int, bool] | None:
  """(bytes, shared): one device's memory limit (shared False), or on a
  CPU the host's physical RAM that all host devices share (True); None
  when unknown."""
  if devices[0].platform == "cpu":
    try:
      return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), True
    except (ValueError, OSError, AttributeError):
      return None
  try:
    stats = devices[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # backend-specific
    stats = {}
  limit = stats.get("bytes_limit")
  return (int(limit), False) if limit else None


class Placement:
  """Where a sampler runs: on one device (the default device, where host
  arrays land), or data parallel over several local devices with the
  params replicated on each and every batch's rows split over them (rows
  padded to a multiple of the device count, the padding's outputs
  dropped). Each row's tokens do not depend on the split: the sampler
  treats rows independently (tests/eval/test_generation_devices.py)."""

  def __init__(self, devices: Sequence[Any]):
    self.devices = list(devices)
    if not self.devices:
      raise ValueError("Placement needs at least one device")
    mesh = jax.sharding.Mesh(np.array(self.devices), ("rows",))
    self._whole = NamedSharding(mesh, PartitionSpec())
    self._rows = NamedSharding(mesh, PartitionSpec("rows"))

  @classmethod
  def for_params(cls, params: Any, count: int, what: str = "devices"
                 ) -> Placement | None:
    """The placement for `count` local devices (1: None, the default
    device; -1: all of them; n: the first n). A replica per device that
    would take more than half the memory falls back to one device with a
    warning."""
    if count == 1:
      return None
    local = jax.local_devices()
    if count == -1:
      count = len(local)
    if count < 1 or count > len(local):
      raise ValueError(f"{what}={count}: this process has {len(local)} "
                       "local device(s) (use -1 for all of them)")
    if count == 1:
      return None
    devices = local[:count]
    mem = _memory_bytes(devices)
    size = sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(params) if hasattr(x, "dtype"))
    if mem is not None:
      limit, shared = mem
      need = size * (count if shared else 1)
      if need > _REPLICA_MEMORY_SHARE * limit:
        logging.warning(
            "%s=%d: %d replicas of %.1f GB of params would not fit in "
            "%.1f GB; sampling on one device", what, count,
            count if shared else 1, size / 1e9, limit / 1e9)
        return None
    return cls(devices)

  def params(self, tree: Any) -> Any:
    """`tree` replicated on every device."""
    return jax.device_put(tree, self._whole)

  def run(self, fn: Callable[..., Any], *rows: Any) -> Any:
    """fn(*rows) with every (B, ...) array in `rows` split over the
    devices; outputs cut back to B rows."""
    arrays = [np.asarray(r) for r in rows]
    b, n = arrays[0].shape[0], len(self.devices)
    pad = -b % n
    if pad:
      arrays = [np.concatenate([a, np.repeat(a[:1], pad, 0)]) for a in arrays]
    out = fn(*jax.device_put(arrays, self._rows))
    return out if not pad else jax.tree.map(lambda x: x[:b], out)


def make_generate(graphdef: Any, params: Any, cfg: sampling.SamplingConfig,
                  sample_fn: SampleFn | None = None,
                  devices: int = 1) -> Generate:
  """generate(ids, mask) with the model `graphdef` + `params` (host or
  device) and `cfg`; the sampler's default rng (greedy needs none).
  devices: local devices to run on, data parallel (1: the default device;
  -1: all; `Placement.for_params`)."""
  fn = sample_fn or sampling.generate
  place = Placement.for_params(params, devices)
  if place is None:
    def generate(ids_BxP, mask_BxP):
      return fn(graphdef, params, ids_BxP, mask_BxP, cfg)
    return generate
  replicated = place.params(params)

  def generate_dp(ids_BxP, mask_BxP):
    return place.run(lambda i, m: fn(graphdef, replicated, i, m, cfg),
                     ids_BxP, mask_BxP)

  return generate_dp


def make_sampler(sample_fn: SampleFn, graphdef: Any, params: Any,
                 cfg: sampling.SamplingConfig, chunk_size: int = 0,
                 devices: int = 1) -> Sample:
  """sample(prompt_BxP, mask_BxP, rng) with `sample_fn` on chunks of
  `chunk_size` rows (0: all at once); chunk i uses fold_in(rng, i).
  devices: as make_generate's (the sampled tokens are the same: the
  sampler draws each row's noise from the whole batch's key)."""
  place = Placement.for_params(params, devices, "sampling_devices")
  if place is not None:
    params = place.params(params)

  def sample(prompt_BxP, mask_BxP, rng):
    def one(chunk, i):
      key = jax.random.fold_in(rng, i)
      if place is None:
        return sample_fn(graphdef, params, chunk["prompt"], chunk["mask"],
                         cfg, key)
      return place.run(
          lambda p, m: sample_fn(graphdef, params, p, m, cfg, key),
          chunk["prompt"], chunk["mask"])
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
