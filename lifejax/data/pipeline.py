"""grain input pipelines, one per batch kind.

  lm_dataset          (B, T) packed LM batches, endless or `num_epochs`
  lm_eval_dataset     one ordered pass for held-out perplexity, padded tail
  preference_dataset  {"chosen": LM batch, "rejected": LM batch}, a pair per row
  prompt_dataset      left-padded prompts for rollouts, with record indices

Every pipeline is deterministic from its seed and can be sharded: each
source's records are sliced `[shard_index::shard_count]` before shuffling.
The default is one shard, the whole stream, in every process too: the
engine's batches are global (identical in every process) and
`sharding.put` places each process's rows, so a run's batches do not depend
on its number of processes. Shuffling is
grain's global index shuffle, reshuffled every epoch. Iterators are grain
`DatasetIterator`s; their `get_state()` is a small dict of ints that
`iterator_state_to_json` checks and that survives JSON (orbax JsonSave), and
`set_state` on a fresh iterator resumes with exactly the same batches.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lifejax.data import mixture
from lifejax.data import packing
from lifejax.data import preference, prompts
from lifejax.data import sources as sources_lib
from lifejax.data import tokenizer as tokenizer_lib

SourceLike = sources_lib.Source | grain.MapDataset
Tokenizer = tokenizer_lib.SentencePieceTokenizer


def _source_list(sources: SourceLike | Sequence[SourceLike]
                 ) -> list[SourceLike]:
  if isinstance(sources, (sources_lib.Source, grain.MapDataset)):
    return [sources]
  out = list(sources)
  if not out:
    raise ValueError("no sources given")
  for s in out:
    if not isinstance(s, (sources_lib.Source, grain.MapDataset)):
      raise TypeError(f"expected a Source or grain.MapDataset, got {type(s)}")
  return out


def _name(source: SourceLike, i: int) -> str:
  return source.name if isinstance(source, sources_lib.Source) else f"source{i}"


def _check_field(source: SourceLike, field: str) -> None:
  if isinstance(source, sources_lib.Source) and field not in source.fields:
    raise ValueError(f"source {source.name!r} has fields "
                     f"{sorted(source.fields)}, not {field!r}")


def resolve_shard(shard_index: int | None, shard_count: int | None
                  ) -> tuple[int, int]:
  """(index, count), defaulting to one shard (0, 1); validated."""
  index = 0 if shard_index is None else shard_index
  count = 1 if shard_count is None else shard_count
  if not 0 <= index < count:
    raise ValueError(
        f"need 0 <= shard_index < shard_count, got {index}/{count}")
  return index, count


def _sub_seed(seed: int, i: int) -> int:
  """A distinct 32-bit seed per source (grain's shuffle takes < 2**32)."""
  return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def _attach_index(index: int, record: Any) -> tuple[int, Any]:
  return index, record


def _records(source: SourceLike, i: int, *, seed: int, shuffle: bool,
             num_epochs: int | None, shard: tuple[int, int],
             with_index: bool = False) -> grain.MapDataset:
  """One source's records: sharded, shuffled per epoch, repeated."""
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
  if isinstance(source, sources_lib.Source):
    ds = source.as_map_dataset()
  else:
    ds = source
  if with_index:
    ds = ds.map_with_index(_attach_index)
  index, count = shard
  ds = ds[index::count]
  if len(ds) == 0:
    raise ValueError(f"source {_name(source, i)!r} has no records for shard "
                     f"{index} of {count}")
  if shuffle:
    ds = ds.shuffle(_sub_seed(seed, i))
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  return ds


class _Tokenize(grain.transforms.Map):
  """record -> 1-D int32 document ids: [BOS] + encode(text) + [EOS].

  A field that already holds token ids (e.g. from a seqio tokenize
  preprocessor) is taken verbatim.
  """

  def __init__(self, tokenizer: Tokenizer, field: str, source_name: str):
    self.tokenizer = tokenizer
    self.field = field
    self.source_name = source_name

  def map(self, record: Mapping[str, Any]) -> np.ndarray:
    try:
      value = record[self.field]
    except (KeyError, TypeError):
      raise ValueError(f"source {self.source_name!r}: record has no field "
                       f"{self.field!r}: {str(record)[:200]}") from None
    if isinstance(value, str):
      return np.asarray(
          self.tokenizer.encode(value, add_bos=True, add_eos=True), np.int32)
    ids = np.asarray(value)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"source {self.source_name!r}: field {self.field!r} "
                       "must be text or a 1-D list of token ids, got "
                       f"{type(value).__name__} {ids.dtype} {ids.shape}")
    return ids.astype(np.int32)


def _documents(sources: Sequence[SourceLike], tokenizer: Tokenizer, *,
               text_field: str, **kwargs: Any) -> list[grain.MapDataset]:
  docs = []
  for i, s in enumerate(sources):
    _check_field(s, text_field)
    docs.append(_records(s, i, **kwargs).map(
        _Tokenize(tokenizer, text_field, _name(s, i))))
  return docs


def _read_options(num_threads: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=256)


def lm_dataset(
    sources: SourceLike | Sequence[SourceLike],
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    weights: Sequence[float] | None = None,
    text_field: str = "text",
    num_packing_bins: int | None = None,
    num_threads: int = 2,
) -> grain.IterDataset:
  """Packed LM batches: dicts of (B, T) arrays (packing.LM_KEYS contract).

  Args:
    sources: one source or several; several are mixed per document by
      `weights` (uniform if None), see mixture.py.
    tokenizer: turns `record[text_field]` into [BOS] + ids + [EOS].
    seq_len: T.
    batch_size: B, rows per batch.
    seed: seeds shuffling and packed-row order.
    shuffle: shuffle records (per epoch) and packed rows.
    num_epochs: passes over every source; None repeats forever. With mixing,
      the run ends when the first source runs out. A last partial batch is
      dropped.
    shard_index, shard_count: the shard to read (default: all records).
    weights: per-source document weights.
    text_field: record field holding the text (or token ids).
    num_packing_bins: rows packed at once (default max(4 * B, 16)).
    num_threads: grain reader threads (tokenization runs there).

  Returns:
    An IterDataset; `iter()` of it has get_state/set_state.
  """
  srcs = _source_list(sources)
  docs = _documents(srcs, tokenizer, text_field=text_field, seed=seed,
                    shuffle=shuffle, num_epochs=num_epochs,
                    shard=resolve_shard(shard_index, shard_count))
  stream = mixture.mix(docs, weights).to_iter_dataset(
      _read_options(num_threads))
  rows = packing.pack_documents(
      stream, seq_len=seq_len,
      num_packing_bins=num_packing_bins or max(4 * batch_size, 16),
      seed=seed, shuffle_bins=shuffle)
  return rows.batch(batch_size, drop_remainder=True)


def lm_eval_dataset(
    sources: SourceLike | Sequence[SourceLike],
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    text_field: str = "text",
    num_packing_bins: int | None = None,
    num_threads: int = 2,
) -> grain.IterDataset:
  """One ordered pass over all sources (concatenated), as packed LM batches.

  Every document's every pair appears exactly once; the last batch is padded
  with all-zero rows (loss_mask 0), so summing loss * loss_mask over all
  batches gives the exact held-out loss.
  """
  srcs = _source_list(sources)
  docs = _documents(srcs, tokenizer, text_field=text_field, seed=0,
                    shuffle=False, num_epochs=1,
                    shard=resolve_shard(shard_index, shard_count))
  ds = docs[0] if len(docs) == 1 else grain.MapDataset.concatenate(docs)
  rows = packing.pack_documents(
      ds.to_iter_dataset(_read_options(num_threads)), seq_len=seq_len,
      num_packing_bins=num_packing_bins or max(4 * batch_size, 16),
      shuffle_bins=False)
  return rows.batch(batch_size, batch_fn=functools.partial(
      grain.experimental.batch_and_pad, batch_size=batch_size, pad_value=0))


def preference_dataset(
    source: SourceLike,
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    render: preference.Render | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    num_threads: int = 2,
) -> grain.IterDataset:
  """Batches {"chosen": {...}, "rejected": {...}} of (B, T) LM arrays.

  Records need "prompt", "chosen" and "rejected"; row b of both halves is the
  same record. loss_mask covers only response targets. `render(record) ->
  (prompt_ids, response_ids)` sees the record with "response" set to each
  answer (default: preference.PlainRender). If not `drop_remainder`, the last
  batch is padded with all-zero rows.
  """
  needed = ["chosen", "rejected"] + ([] if render else ["prompt"])
  for field in needed:
    _check_field(source, field)
  render = render or preference.PlainRender(tokenizer)
  ds = _records(source, 0, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                shard=resolve_shard(shard_index, shard_count))
  ds = ds.map(preference.PreferencePairToRows(render, seq_len))
  it = ds.to_iter_dataset(_read_options(num_threads))
  if drop_remainder:
    return it.batch(batch_size, drop_remainder=True)
  return it.batch(batch_size, batch_fn=functools.partial(
      grain.experimental.batch_and_pad, batch_size=batch_size, pad_value=0))


class _PromptRow(grain.transforms.Map):
  """(index, record) -> left-padded prompt row of length P."""

  def __init__(self, render: preference.PromptRender, prompt_len: int,
               pad_id: int):
    self.render = render
    self.prompt_len = prompt_len
    self.pad_id = pad_id

  def map(self, element: tuple[int, Mapping[str, Any]]) -> dict[str, Any]:
    index, record = element
    ids = list(self.render(record))
    if not ids:
      raise ValueError(f"record {index}: render gave an empty prompt")
    # left_pad keeps the end: it is what the policy continues from.
    tokens, mask = prompts.left_pad([ids], self.prompt_len, self.pad_id)
    return {"prompt_tokens": tokens[0], "prompt_mask": mask[0].astype(np.bool_),
            "prompt_lengths": np.int32(min(len(ids), self.prompt_len)),
            "record_index": np.int32(index)}


def _stack_prompts(rows: Sequence[dict[str, Any]], *, batch_size: int
                   ) -> dict[str, np.ndarray]:
  """Stacks prompt rows, padding to batch_size (record_index -1 on pads)."""
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  pad = batch_size - len(rows)
  if pad:
    fill = {"record_index": -1}
    batch = {k: np.concatenate([v, np.full((pad,) + v.shape[1:], fill.get(k, 0),
                                           v.dtype)])
             for k, v in batch.items()}
  return batch


def prompt_dataset(
    source: SourceLike,
    tokenizer: Tokenizer,
    *,
    prompt_len: int,
    batch_size: int,
    seed: int = 0,
    render_prompt: preference.PromptRender | None = None,
    shuffle: bool = False,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 2,
) -> grain.IterDataset:
  """Rollout prompt batches.

  Keys: prompt_tokens (B, P) int32 left-padded with pad_id, prompt_mask (B, P)
  bool, prompt_lengths (B,) int32, record_index (B,) int32 = the record's
  position in the source (before sharding/shuffling), -1 on padding rows of a
  last partial batch. Prompts over P tokens keep their last P tokens.
  """
  if render_prompt is None:
    _check_field(source, "prompt")
    render_prompt = preference.PlainPromptRender(tokenizer)
  ds = _records(source, 0, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                shard=resolve_shard(shard_index, shard_count), with_index=True)
  ds = ds.map(_PromptRow(render_prompt, prompt_len, tokenizer.pad_id))
  return ds.to_iter_dataset(_read_options(num_threads)).batch(
      batch_size,
      batch_fn=functools.partial(_stack_prompts, batch_size=batch_size))


def _check_json(value: Any, path: str) -> Any:
  if isinstance(value, Mapping):
    out = {}
    for k, v in value.items():
      if not isinstance(k, str):
        raise TypeError(f"iterator state key {path}/{k!r} is not a str")
      out[k] = _check_json(v, f"{path}/{k}")
    return out
  if isinstance(value, (list, tuple)):
    return [_check_json(v, f"{path}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value)
  if value is None or isinstance(value, str):
    return value
  raise TypeError(f"iterator state {path} holds a {type(value).__name__}, "
                  "which JSON cannot store")


def iterator_state_to_json(state: Mapping[str, Any]) -> dict[str, Any]:
  """A grain iterator state as plain JSON types (numpy scalars converted)."""
  return _check_json(state, "state")


def iterator_state_from_json(d: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of iterator_state_to_json, ready for `iterator.set_state`."""
  return _check_json(d, "state")


class JsonStateIterator:
  """Wraps a grain iterator so its state is JSON (for orbax JsonSave)."""

  def __init__(self, it: Any):
    self._it = it

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def get_state(self) -> dict:
    return iterator_state_to_json(self._it.get_state())

  def set_state(self, state: dict) -> None:
    self._it.set_state(iterator_state_from_json(state))
