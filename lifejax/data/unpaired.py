"""Unpaired preference data (KTO): single completions labelled desirable or
undesirable, and the LM rows KTO trains on.

A record is one JSON object per line:

  {"prompt": [messages up to the last user turn] (or "messages": the
   same list), "completion": "answer text", "label": true | false}

(without a chat template the prompt is plain text under "prompt"). Other
fields (id, task, reference, ...) are kept. `load_unpaired` checks every
record as it reads it (validation.py's skip policy, errors at
`path:line`); `unpaired_from_pairs` turns preference pairs into unpaired
records, each pair giving a desirable (chosen) and an undesirable
(rejected) one with the same prompt.

KTO's KL estimate reads mismatched rows: `kl_partners` gives each record
the completion of another record with a different prompt (a seeded
cycle through the records, skipping records of the same prompt), and
`unpaired_rows` renders both, so the reference log-probs of either can be
precomputed once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lifejax.data import chat, chat_render, jsonl, validation
from lifejax.data.preference import Render, response_row


def prompt_of(record: Any, *, template: chat.ChatTemplate | None = None
              ) -> Any:
  """The record's prompt: "prompt" (or "messages"), a non-empty message
  list a template can render for generation; plain non-empty text without
  a template. An (unlocated) RecordError otherwise."""
  if template is None:
    prompt = validation.field(record, "prompt", str)
    if not prompt.strip():
      raise validation.RecordError("", "empty_prompt",
                                   "field 'prompt' is empty")
    return prompt
  name = "prompt" if isinstance(record, dict) and "prompt" in record \
      else "messages"
  prompt = validation.field(record, name, list)
  if not prompt:
    raise validation.RecordError("", "empty_prompt",
                                 f"field {name!r} has no messages")
  chat_render.validate_conversation(template, prompt, mode="prompt")
  return prompt


def check_unpaired(record: Any, *,
                   template: chat.ChatTemplate | None = None) -> None:
  """Raises an (unlocated) RecordError for a bad unpaired record: a
  missing or mistyped field (label must be true or false), an empty
  prompt ("empty_prompt") or completion ("empty_response"), a prompt the
  template cannot render."""
  prompt_of(record, template=template)
  if not validation.field(record, "completion", str).strip():
    raise validation.RecordError("", "empty_response",
                                 "field 'completion' is empty")
  validation.field(record, "label", bool)


def load_unpaired(path: str, *, policy: str = validation.TRAIN_POLICY,
                  template: chat.ChatTemplate | None = None,
                  render: Render | None = None, seq_len: int | None = None
                  ) -> tuple[list[dict[str, Any]], validation.FileCounts]:
  """One JSONL file's unpaired records and counts. Kept records have their
  prompt under "prompt". With `render` and `seq_len` each completion is
  rendered too: a render error or an empty rendered completion is a bad
  record, one longer than seq_len + 1 tokens is kept and counted as
  truncated."""

  def check(record: dict[str, Any]) -> bool:
    check_unpaired(record, template=template)
    record["prompt"] = prompt_of(record, template=template)
    if render is None or seq_len is None:
      return False
    prompt_ids, response_ids = render(
        {**record, "response": record["completion"]})
    if not response_ids:
      raise validation.RecordError("", "empty_response",
                                   "the completion renders to no tokens")
    return len(prompt_ids) + len(response_ids) > seq_len + 1

  records, _, counts = jsonl.read_checked(path, check, policy=policy,
                                          what="unpaired completions")
  return records, counts


def unpaired_from_pairs(pairs: Sequence[Mapping[str, Any]]
                        ) -> list[dict[str, Any]]:
  """Each preference pair as two unpaired records, desirable (its chosen
  answer) then undesirable (its rejected one), sharing its prompt and
  other fields; ids get a "/chosen" or "/rejected" suffix."""
  out = []
  for i, pair in enumerate(pairs):
    rest = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
    pid = pair.get("id", i)
    for side, label in (("chosen", True), ("rejected", False)):
      out.append({**rest, "id": f"{pid}/{side}", "completion": pair[side],
                  "label": label})
  return out


def kl_partners(records: Sequence[Mapping[str, Any]], seed: int
                ) -> np.ndarray:
  """(N,) int: for record i, a record j whose prompt differs from i's.

  The records are visited in a seeded random cycle; i's partner is the
  first record after it on the cycle with another prompt. ValueError if
  all records share one prompt (there is nothing to mismatch)."""
  keys = [json.dumps(r["prompt"], sort_keys=True) for r in records]
  n = len(keys)
  if len(set(keys)) < 2:
    raise ValueError(f"KTO's KL estimate needs completions of other prompts,"
                     f" but all {n} records share one prompt")
  cycle = np.random.default_rng([seed, 0x6b6c]).permutation(n)
  out = np.empty(n, np.int64)
  for pos, i in enumerate(cycle):
    step = 1
    while keys[cycle[(pos + step) % n]] == keys[i]:
      step += 1
    out[i] = cycle[(pos + step) % n]
  return out


def unpaired_rows(records: Sequence[Mapping[str, Any]], render: Render,
                  seq_len: int, seed: int
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(completion rows, mismatched rows), (N, seq_len) LM rows each
  (`preference.response_row`): row i of the first is record i's prompt
  and completion with "desirable" (N,) f32 = its label; row i of the
  second is record i's prompt with its `kl_partners` completion."""
  partner = kl_partners(records, seed)
  main, mismatched = [], []
  for i, rec in enumerate(records):
    main.append(response_row(*render({**rec, "response": rec["completion"]}),
                             seq_len))
    other = records[int(partner[i])]["completion"]
    mismatched.append(response_row(*render({**rec, "response": other}),
                                   seq_len))
  stack = lambda rows: {k: np.stack([r[k] for r in rows])  # noqa: E731
                        for k in rows[0]}
  completion = stack(main)
  completion["desirable"] = np.asarray([bool(r["label"]) for r in records],
                                       np.float32)
  return completion, stack(mismatched)
