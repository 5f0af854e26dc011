"""Rendering records to token ids, and preference-pair rows.

A render callable turns a record into (prompt_ids, response_ids). The plain
renders below join raw text with BOS/EOS; chat templates (data/chat.py) plug
in as other callables with the same signature. For preference data the
pipeline calls the render twice per record, with the record's "response" set
to its chosen and then its rejected text.

`load_pairs` reads a JSONL file of preference records, each checked as it
is read (validation.py's skip policy, errors at `path:line`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lifejax.data import chat, chat_render, jsonl
from lifejax.data import tokenizer as tokenizer_lib
from lifejax.data import validation

Render = Callable[[Mapping[str, Any]], tuple[Sequence[int], Sequence[int]]]
PromptRender = Callable[[Mapping[str, Any]], Sequence[int]]


class PlainRender:
  """record -> ([BOS] + prompt ids, response ids + [EOS])."""

  def __init__(self, tokenizer: tokenizer_lib.SentencePieceTokenizer, *,
               prompt_field: str = "prompt", response_field: str = "response"):
    self.tokenizer = tokenizer
    self.prompt_field = prompt_field
    self.response_field = response_field

  def __call__(self, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    prompt = self.tokenizer.encode(record[self.prompt_field], add_bos=True)
    response = self.tokenizer.encode(record[self.response_field], add_eos=True)
    return prompt, response


class PlainPromptRender:
  """record -> [BOS] + prompt ids (rollout prompts)."""

  def __init__(self, tokenizer: tokenizer_lib.SentencePieceTokenizer, *,
               prompt_field: str = "prompt"):
    self.tokenizer = tokenizer
    self.prompt_field = prompt_field

  def __call__(self, record: Mapping[str, Any]) -> list[int]:
    return self.tokenizer.encode(record[self.prompt_field], add_bos=True)


def check_pair(record: Any, *, template: chat.ChatTemplate | None = None,
               prompt_field: str = "prompt", chosen_field: str = "chosen",
               rejected_field: str = "rejected") -> None:
  """Raises an (unlocated) validation.RecordError for a bad preference
  record: a missing or mistyped field; an empty prompt ("empty_prompt") or
  answer ("empty_response"); chosen equal to rejected
  ("chosen_equals_rejected": the pair teaches nothing); with a chat
  `template`, a prompt (a message list up to the last user turn) it cannot
  render ("unknown_role", "empty_turn", ...). Without a template the prompt
  is plain text."""
  if template is None:
    prompt = validation.field(record, prompt_field, str)
    if not prompt.strip():
      raise validation.RecordError("", "empty_prompt",
                                   f"field {prompt_field!r} is empty")
  else:
    prompt = validation.field(record, prompt_field, list)
    if not prompt:
      raise validation.RecordError("", "empty_prompt",
                                   f"field {prompt_field!r} has no messages")
    chat_render.validate_conversation(template, prompt, mode="prompt")
  answers = []
  for name in (chosen_field, rejected_field):
    answer = validation.field(record, name, str)
    if not answer.strip():
      raise validation.RecordError("", "empty_response",
                                   f"field {name!r} is empty")
    answers.append(answer)
  if answers[0] == answers[1]:
    raise validation.RecordError("", "chosen_equals_rejected",
                                 "chosen equals rejected")


def load_pairs(path: str, *, policy: str = validation.TRAIN_POLICY,
               template: chat.ChatTemplate | None = None,
               render: Render | None = None, seq_len: int | None = None
               ) -> tuple[list[dict[str, Any]], validation.FileCounts]:
  """One JSONL file's preference records (whole records) and counts.

  Each record is checked by `check_pair` (with `template`, prompts are chat
  message lists); with `render` and `seq_len` both answers are rendered
  too: a render error or an empty rendered answer is a bad record, and a
  pair longer than seq_len + 1 tokens (which `response_row` cuts) is kept
  and counted as truncated.
  """

  def check(record: dict[str, Any]) -> bool:
    check_pair(record, template=template)
    if render is None or seq_len is None:
      return False
    truncated = False
    for field in ("chosen", "rejected"):
      prompt_ids, response_ids = render({**record, "response": record[field]})
      if not response_ids:
        raise validation.RecordError("", "empty_response",
                                     f"{field} renders to no tokens")
      truncated |= len(prompt_ids) + len(response_ids) > seq_len + 1
    return truncated

  records, _, counts = jsonl.read_checked(path, check, policy=policy,
                                          what="preference pairs")
  return records, counts


def load_pair_sets(train_files: Sequence[str], eval_file: str, *,
                   template: chat.ChatTemplate, render: Render, seq_len: int,
                   train_policy: str, eval_policy: str,
                   log: validation.SkipLog
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(training pairs of every train file, the eval file's pairs), each file
  checked under its policy and counted in `log`."""
  def load(path: str, policy: str) -> list[dict[str, Any]]:
    records, counts = load_pairs(path, policy=policy, template=template,
                                 render=render, seq_len=seq_len)
    log.put(path, counts, kind="preference pairs", policy=policy)
    return records

  return ([r for p in train_files for r in load(p, train_policy)],
          load(eval_file, eval_policy))


def response_row(prompt_ids: Sequence[int], response_ids: Sequence[int],
                 seq_len: int) -> dict[str, np.ndarray]:
  """One LM row (see packing.LM_KEYS) whose loss covers only the response.

  tokens/targets are (prompt + response)[:-1] / [1:], right-padded to
  `seq_len`; loss_mask is 1.0 exactly where the target is a response token.
  If prompt + response exceed seq_len + 1 tokens, the prompt loses tokens on
  the left (keeping at least one), then the response on the right.
  """
  if not response_ids:
    raise ValueError("render returned an empty response")
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}")
  prompt, response = list(prompt_ids), list(response_ids)
  budget = seq_len + 1
  if len(prompt) + len(response) > budget:
    keep = max(min(len(prompt), 1), budget - len(response))
    prompt = prompt[len(prompt) - keep:]
    response = response[:budget - len(prompt)]
  doc = np.asarray(prompt + response, dtype=np.int32)
  n = len(doc) - 1
  row = {
      "tokens": np.zeros(seq_len, np.int32),
      "targets": np.zeros(seq_len, np.int32),
      "loss_mask": np.zeros(seq_len, np.float32),
      "segment_ids": np.zeros(seq_len, np.int32),
      "positions": np.zeros(seq_len, np.int32),
  }
  row["tokens"][:n] = doc[:-1]
  row["targets"][:n] = doc[1:]
  # Target j is doc[j + 1], a response token iff j + 1 >= len(prompt).
  row["loss_mask"][max(len(prompt) - 1, 0):n] = 1.0
  row["segment_ids"][:n] = 1
  row["positions"][:n] = np.arange(n, dtype=np.int32)
  return row


class PreferencePairToRows(grain.transforms.Map):
  """{prompt, chosen, rejected} record -> {"chosen": row, "rejected": row}."""

  def __init__(self, render: Render, seq_len: int, *,
               chosen_field: str = "chosen", rejected_field: str = "rejected"):
    self.render = render
    self.seq_len = seq_len
    self.chosen_field = chosen_field
    self.rejected_field = rejected_field

  def map(self, record: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for key, field in (("chosen", self.chosen_field),
                       ("rejected", self.rejected_field)):
      if field not in record:
        raise ValueError(f"preference record has no {field!r} field; it has "
                         f"{sorted(record)}")
      prompt_ids, response_ids = self.render({**record,
                                              "response": record[field]})
      out[key] = response_row(prompt_ids, response_ids, self.seq_len)
    return out


class PairBatches:
  """Shuffled fixed-size batches over precomputed pair rows (+ ref logps).

  Deterministic from (seed, epoch); the state is (epoch, position), so a
  resumed run continues with exactly the next batch. `names`: the batch's
  keys for the two halves (KTO's are ("completion", "kl")).
  """

  def __init__(self, chosen: dict, rejected: dict, batch_size: int, seed: int,
               names: tuple[str, str] = ("chosen", "rejected")):
    self.chosen, self.rejected = chosen, rejected
    self.n = next(iter(chosen.values())).shape[0]
    if self.n < batch_size:
      raise ValueError(f"{self.n} preference pairs < batch_size {batch_size}")
    self.batch_size, self.seed = batch_size, seed
    self.names = names
    self.epoch, self.pos = 0, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.pos + self.batch_size > self.n:
      self.epoch, self.pos = self.epoch + 1, 0
    order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
    idx = order[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    first, second = self.names
    return {first: {k: v[idx] for k, v in self.chosen.items()},
            second: {k: v[idx] for k, v in self.rejected.items()}}

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, s: dict) -> None:
    self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
