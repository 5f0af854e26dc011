"""Rendering records to token ids, and preference-pair rows.

A render callable turns a record into (prompt_ids, response_ids). The plain
renders below join raw text with BOS/EOS; chat templates (data/chat.py) plug
in as other callables with the same signature. For preference data the
pipeline calls the render twice per record, with the record's "response" set
to its chosen and then its rejected text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from lifejax.data import tokenizer as tokenizer_lib

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
  resumed run continues with exactly the next batch.
  """

  def __init__(self, chosen: dict, rejected: dict, batch_size: int, seed: int):
    self.chosen, self.rejected = chosen, rejected
    self.n = next(iter(chosen.values())).shape[0]
    if self.n < batch_size:
      raise ValueError(f"{self.n} preference pairs < batch_size {batch_size}")
    self.batch_size, self.seed = batch_size, seed
    self.epoch, self.pos = 0, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.pos + self.batch_size > self.n:
      self.epoch, self.pos = self.epoch + 1, 0
    order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
    idx = order[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    return {"chosen": {k: v[idx] for k, v in self.chosen.items()},
            "rejected": {k: v[idx] for k, v in self.rejected.items()}}

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, s: dict) -> None:
    self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
