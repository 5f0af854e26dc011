"""Chat data for the post-training stages.

  sft_dataset           packed SFT batches (packing.LM_KEYS contract), loss on
                        assistant tokens only
  load_conversations    one JSONL file's conversations, validated as read
                        (validation.py's skip policy, `path:line` errors)
  screen_conversations  every record checked against the template up front
  pack_examples         packs (tokens, targets, loss_mask) examples into rows
  ChatRender            preference render: record -> (prompt ids, response ids)
  ChatPromptRender      rollout render: record -> prompt ids

A conversation is one packed segment: it is never split (a split would train
answers without their question) and never attends to another conversation;
its positions restart at 0. One longer than `seq_len + 1` tokens keeps its
first `seq_len + 1`. The loss mask is `chat_render.render_conversation`'s,
carried through packing unchanged (grain's packer pads it with 0).
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lifejax.data import chat, chat_render, jsonl
from lifejax.data import pipeline, prompts
from lifejax.data import sources as sources_lib
from lifejax.data import validation

SourceLike = sources_lib.Source | grain.MapDataset
_FEATURES = ("tokens", "targets", "loss_mask")


def _where(source_name: str, index: int, record: Any) -> str:
  rid = record.get("id") if isinstance(record, Mapping) else None
  return f"{source_name} record {index}" + (f" (id {rid!r})" if rid else "")


def load_conversations(
    path: str,
    template: chat.ChatTemplate | str,
    *,
    policy: str = validation.TRAIN_POLICY,
    tokenizer: chat_render.Tokenizer | None = None,
    seq_len: int | None = None,
    train_on: str = "all_assistant",
    messages_field: str = "messages",
) -> tuple[list[dict[str, Any]], validation.FileCounts]:
  """One JSONL file's training conversations (whole records) and counts.

  A record needs a `messages_field` list that `template` renders for
  training (`chat_render.validate_conversation`: known roles, non-empty
  turns, role order, an assistant turn last). Bad records are RecordErrors
  at `path:line`, raised or skipped by `policy` (validation.py). With
  `tokenizer` and `seq_len` each conversation is also rendered: one longer
  than seq_len + 1 tokens is counted as truncated (sft_dataset keeps its
  first seq_len + 1 tokens); one with no trained token among those is
  counted as skipped, "too_long", under either policy (a length bound is
  not a malformed record), but left in the list: sft_dataset(skip_bad=True)
  drops it where it meets it, so the order of the others does not depend
  on it.
  """
  template = chat.get_template(template)

  def structure(record: Mapping[str, Any]) -> None:
    messages = validation.field(record, messages_field, list)
    chat_render.validate_conversation(template, messages, mode="training")

  records, lines, counts = jsonl.read_checked(
      path, structure, policy=policy, what="conversations")
  if tokenizer is None or seq_len is None:
    return records, counts
  for line, record in zip(lines, records):
    try:
      ids, mask = chat_render.render_conversation(
          template, tokenizer, record[messages_field], train_on=train_on)
    except validation.RecordError as e:
      validation.reject(e.at(validation.line_at(path, line), path), policy,
                        counts)
      continue
    if not mask[1:seq_len + 1].any():
      counts.skipped["too_long"] += 1
    elif len(ids) > seq_len + 1:
      counts.truncated += 1
  return records, counts


def screen_conversations(
    records: Sequence[Any] | grain.MapDataset,
    template: chat.ChatTemplate,
    *,
    messages_field: str = "messages",
    skip_bad: bool = False,
    source_name: str = "source",
) -> tuple[list[tuple[int, Mapping[str, Any]]], dict[str, int]]:
  """Structurally valid training conversations and the others' counts.

  Returns ([(record index, record), ...], {reason: count}). Without
  `skip_bad` the first bad record raises ConversationError naming the
  source, the record index and id, and the problem. Records a source already
  dropped (None) are neither kept nor counted here.
  """
  good, skipped = [], collections.Counter()
  for i in range(len(records)):
    record = records[i]
    if record is None:
      continue
    try:
      if not isinstance(record, Mapping) or messages_field not in record:
        raise chat.ConversationError(
            "missing_messages", f"the record has no {messages_field!r} field")
      chat_render.validate_conversation(template, record[messages_field],
                                        mode="training")
    except chat.ConversationError as e:
      if not skip_bad:
        raise e.at(_where(source_name, i, record)) from None
      skipped[e.reason] += 1
      continue
    good.append((i, record))
  return good, dict(skipped)


class _ConversationToExample(grain.transforms.Map):
  """(index, record) -> {tokens, targets, loss_mask} of n <= T pairs."""

  def __init__(self, template: chat.ChatTemplate,
               tokenizer: chat_render.Tokenizer, seq_len: int, train_on: str,
               messages_field: str, source_name: str, skip_bad: bool):
    self.template = template
    self.tokenizer = tokenizer
    self.seq_len = seq_len
    self.train_on = train_on
    self.messages_field = messages_field
    self.source_name = source_name
    self.skip_bad = skip_bad

  def map(self, element: tuple[int, Mapping[str, Any]]
          ) -> dict[str, np.ndarray] | None:
    index, record = element
    try:
      ids, mask = chat_render.render_conversation(
          self.template, self.tokenizer, record[self.messages_field],
          train_on=self.train_on)
      ids, mask = ids[:self.seq_len + 1], mask[:self.seq_len + 1]
      if not mask[1:].any():
        raise chat.ConversationError(
            "too_long", f"no trained token within the first "
            f"seq_len + 1 = {self.seq_len + 1} tokens")
    except chat.ConversationError as e:
      e = e.at(_where(self.source_name, index, record))
      if not self.skip_bad:
        raise e from None
      # Only found while rendering, so counted in the log, not up front.
      logging.warning("skipping conversation: %s", e)
      return None
    return {"tokens": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:]}


def _is_example(x: Any) -> bool:
  return x is not None


class _PackedToRow(grain.transforms.Map):
  """grain's packed features -> the LM row contract."""

  def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "tokens": element["tokens"].astype(np.int32),
        "targets": element["targets"].astype(np.int32),
        "loss_mask": element["loss_mask"].astype(np.float32),
        "segment_ids": element["tokens_segment_ids"].astype(np.int32),
        "positions": element["tokens_positions"].astype(np.int32),
    }


def pack_examples(examples: grain.IterDataset, *, seq_len: int,
                  num_packing_bins: int, seed: int = 0,
                  shuffle_bins: bool = True) -> grain.IterDataset:
  """Packs {tokens, targets, loss_mask} examples (1-D, n <= T) into LM rows.

  Each example becomes one whole segment of a (T,) row: segment ids 1..k,
  positions 0..n-1, its loss_mask weights unchanged; padding has segment 0
  and weight 0. Best-fit over `num_packing_bins` open rows.
  """
  if num_packing_bins < 1:
    raise ValueError(f"num_packing_bins must be >= 1, got {num_packing_bins}")
  packed = grain.experimental.BestFitPackIterDataset(
      examples, length_struct={k: seq_len for k in _FEATURES},
      num_packing_bins=num_packing_bins, seed=seed, shuffle_bins=shuffle_bins)
  return packed.map(_PackedToRow())


def sft_dataset(
    source: SourceLike,
    tokenizer: chat_render.Tokenizer,
    template: chat.ChatTemplate | str,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    skip_bad: bool = False,
    train_on: str = "all_assistant",
    messages_field: str = "messages",
    num_packing_bins: int | None = None,
    num_threads: int = 2,
    drop_remainder: bool = True,
) -> grain.IterDataset:
  """Packed SFT batches: dicts of (B, T) arrays, packing.LM_KEYS contract.

  loss_mask is 1.0 exactly on targets that are assistant content or an
  assistant end-of-turn marker (`train_on`: every assistant turn or only the
  last). Records are screened first (`screen_conversations`); with
  `skip_bad` bad ones are skipped and their counts per reason logged.
  Sharding, per-epoch shuffling and `num_epochs` work as in
  `pipeline.lm_dataset`; a last partial batch is dropped, unless
  `drop_remainder` is False (evaluation: it is padded with all-zero rows,
  loss_mask 0, so every conversation is scored, as in
  `pipeline.lm_eval_dataset`). `iter()` of the result has
  get_state/set_state (JSON-compatible state).
  """
  template = chat.get_template(template)
  chat_render.check_tokenizer(template, tokenizer)
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  if train_on not in chat_render.TRAIN_ON:
    raise ValueError(f"train_on must be one of {chat_render.TRAIN_ON}, got "
                     f"{train_on!r}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
  if isinstance(source, sources_lib.Source):
    name, records = source.name, source.as_map_dataset()
  else:
    name, records = "source", source
  good, skipped = screen_conversations(
      records, template, messages_field=messages_field, skip_bad=skip_bad,
      source_name=name)
  if skipped:
    logging.warning("%s: skipped %d bad conversations: %s", name,
                    sum(skipped.values()), skipped)
  if not good:
    raise ValueError(f"{name}: no valid conversations (skipped {skipped})")
  index, count = pipeline.resolve_shard(shard_index, shard_count)
  ds = grain.MapDataset.source(good)[index::count]
  if len(ds) == 0:
    raise ValueError(f"{name}: no conversations for shard {index} of {count}")
  if shuffle:
    ds = ds.shuffle(int(np.random.SeedSequence([seed]).generate_state(1)[0]))
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.map(_ConversationToExample(template, tokenizer, seq_len, train_on,
                                     messages_field, name, skip_bad))
  if skip_bad:
    ds = ds.filter(_is_example)
  examples = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=256))
  rows = pack_examples(
      examples, seq_len=seq_len,
      num_packing_bins=num_packing_bins or max(4 * batch_size, 16),
      seed=seed, shuffle_bins=shuffle)
  if drop_remainder:
    return rows.batch(batch_size, drop_remainder=True)
  return rows.batch(batch_size, batch_fn=functools.partial(
      grain.experimental.batch_and_pad, batch_size=batch_size, pad_value=0))


class ChatRender:
  """Preference render: record -> (prompt ids, response ids).

  `record[prompt_field]` is the message list up to the last user turn; the
  response is `record[response_field]` plus the end-of-turn marker, so
  `preference.response_row` trains exactly what SFT trains on that turn.
  Plugs into `pipeline.preference_dataset(render=...)`.
  """

  def __init__(self, template: chat.ChatTemplate,
               tokenizer: chat_render.Tokenizer, *,
               prompt_field: str = "prompt",
               response_field: str = "response"):
    self.template = template
    self.tokenizer = tokenizer
    self.prompt_field = prompt_field
    self.response_field = response_field

  def __call__(self, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    where = str(record.get("id", "record"))
    try:
      prompt = chat_render.render_prompt(self.template, self.tokenizer,
                                         record[self.prompt_field])
      response = chat_render.render_response(self.template, self.tokenizer,
                                             record[self.response_field])
    except chat.ConversationError as e:
      raise e.at(where) from None
    return prompt, response


class ChatPromptRender:
  """Rollout render: record -> prompt ids (`pipeline.prompt_dataset`).

  With `drop_last_assistant`, trailing assistant turns (an SFT record's
  reference answer) are dropped (`prompts.drop_answer`), so instruction
  records serve as prompts.
  """

  def __init__(self, template: chat.ChatTemplate,
               tokenizer: chat_render.Tokenizer, *, field: str = "messages",
               drop_last_assistant: bool = True):
    self.template = template
    self.tokenizer = tokenizer
    self.field = field
    self.drop_last_assistant = drop_last_assistant

  def __call__(self, record: Mapping[str, Any]) -> list[int]:
    messages = list(record[self.field])
    if self.drop_last_assistant:
      messages = prompts.drop_answer(messages)
    try:
      return chat_render.render_prompt(self.template, self.tokenizer, messages)
    except chat.ConversationError as e:
      raise e.at(str(record.get("id", "record"))) from None
